"""Mapping: source columns become the record type's (nested, typed) fields.

Planned once per file (:func:`plan_mapping`), applied per batch (:func:`map_batch`). Dotted
column names become nested objects (``link.email`` → ``{"link": {"email": ...}}``) as in Lexer's
converter; Parquet struct columns are flattened to the same dotted names first, so both kinds of
source share one path. Each value is coerced to the type the schema asks for, whole arrays at a
time; a row whose value cannot be coerced is marked bad with the field and the rule, and never
raises. Empty cells are omitted, never written as ``null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bulkd import coerce
from bulkd.errors import InputError
from bulkd.model import Reject, SourceBatch
from bulkd.profile import Constant, Profile
from bulkd.schemas import RecordType
from bulkd.shape import Kind, Shape, shape_for_type, shape_of

__all__ = ["MappedBatch", "MappingPlan", "flatten_columns", "map_batch", "plan_mapping"]

Path = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MappingPlan:
    """What to do with each source column of one file, decided before any row is read."""

    input: str
    columns: tuple[tuple[str, Path], ...]
    """(source column, target path) for every column kept."""
    constants: tuple[tuple[Path, Constant], ...]
    shape: Shape
    warnings: tuple[str, ...]
    list_separator: str | None
    style: coerce.DateTimeStyle


@dataclass(frozen=True, slots=True)
class MappedBatch:
    """A batch's rows as typed, nested records; rows that could not be coerced are flagged."""

    records: pa.StructArray
    lines: pa.Int64Array
    bad: pa.BooleanArray
    rejects: tuple[Reject, ...]
    """One reject per bad row, in row order (the first failing field of the row)."""


def flatten_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Flatten struct columns into dotted leaf columns (``store.location.name``); lists stay whole."""
    names: list[str] = []
    arrays: list[pa.Array] = []

    def visit(name: str, arr: pa.Array) -> None:
        if pa.types.is_struct(arr.type):
            for child, sub in zip(arr.type, arr.flatten(), strict=True):
                visit(f"{name}.{child.name}", sub)
        else:
            names.append(name)
            arrays.append(arr)

    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        visit(name, col)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def plan_mapping(
    input_name: str, columns: Sequence[str], record_type: RecordType, profile: Profile
) -> MappingPlan:
    """Resolve every column to a schema path; refuse layouts that cannot nest.

    Raises:
        InputError: a column maps to an empty path segment, two columns map to one path, a
            path is both a value and an object (``link`` beside ``link.email``), or no column
            and no profile constant reaches a field: every row would be an empty record, which
            says the file, its delimiter or encoding, or the record type is wrong.
    """
    shape = _with_profile_types(shape_of(record_type.schema), profile)
    kept: list[tuple[str, Path]] = []
    warnings: list[str] = []
    for column in columns:
        target = profile.target(column)
        if target is None:
            continue
        path = tuple(target.split("."))
        if any(part.strip() == "" for part in path):
            raise InputError(
                input_name, f"column {column!r} maps to {target!r}, which has an empty path part"
            )
        if not _known(shape, path):
            warnings.append(f"column {_shown(column)} is not a field of {record_type.name}; it is ignored")
            continue
        kept.append((column, path))
    constants = tuple((tuple(p.split(".")), v) for p, v in profile.constants.items())
    if columns and not kept and not constants:
        header = ", ".join(_shown(c) for c in columns[:5]) + (", ..." if len(columns) > 5 else "")
        raise InputError(
            input_name,
            f"no column is a field of {record_type.name} (header: {header}); "
            "is it the right record type, delimiter and encoding?",
            line=1,
        )
    _check_nesting(input_name, [p for _, p in kept] + [p for p, _ in constants])
    return MappingPlan(
        input=input_name,
        columns=tuple(kept),
        constants=constants,
        shape=shape,
        warnings=tuple(warnings),
        list_separator=profile.list_separator,
        style=coerce.DateTimeStyle(naive_offset=profile.naive_offset),
    )


def _shown(column: str, limit: int = 40) -> str:
    """A column name for a message: quoted, and cut short when a garbage header made it huge."""
    return repr(column if len(column) <= limit else column[:limit] + "...")


def _with_profile_types(shape: Shape, profile: Profile) -> Shape:
    """Give open fields (``custom_fields.points``) the types the profile names."""
    for target, kind in profile.types.items():
        shape = _set_path(shape, tuple(target.split(".")), shape_for_type(kind))
    return shape


def _set_path(shape: Shape, path: Path, leaf: Shape) -> Shape:
    head, rest = path[0], path[1:]
    child = shape.children.get(head, Shape(Kind.OBJECT))
    new_child = leaf if not rest else _set_path(child, rest, leaf)
    return Shape(shape.kind, {**shape.children, head: new_child}, shape.extra, shape.closed, shape.items)


def _known(shape: Shape, path: Path) -> bool:
    """Whether the schema has a place for ``path`` (closed objects keep unknowns for the validator)."""
    node = shape
    for part in path:
        while node.kind is Kind.ARRAY and node.items is not None:
            node = node.items
        if node.kind is not Kind.OBJECT:
            return False
        if part in node.children:
            node = node.children[part]
        elif node.extra is not None:
            node = node.extra
        else:
            return node.is_open or node.closed
    return True


def _check_nesting(input_name: str, paths: list[Path]) -> None:
    seen: set[Path] = set()
    for path in sorted(paths, key=len):
        if path in seen:
            raise InputError(input_name, f"two columns map to the same field {'.'.join(path)!r}")
        for cut in range(1, len(path)):
            if path[:cut] in seen:
                raise InputError(
                    input_name,
                    f"field {'.'.join(path[:cut])!r} is both a value and an object (see {'.'.join(path)!r})",
                )
        seen.add(path)


class _Failures:
    """Row-level coercion failures of one batch, as top-level row indices with their reason."""

    def __init__(self) -> None:
        self.items: list[tuple[pa.Int64Array, str, str, str]] = []

    def add(
        self, bad: pa.BooleanArray, to_top: pa.Int64Array | None, path: Path, rule: str, why: str
    ) -> None:
        if not bad.true_count:  # (a kernel call costs ~60 times more)
            return
        rows = pc.indices_nonzero(bad)
        if to_top is not None:
            rows = pc.take(to_top, rows)
        self.items.append((rows, ".".join(path), rule, why))


def map_batch(plan: MappingPlan, batch: SourceBatch) -> MappedBatch:
    """Coerce one batch; bad rows stay in ``records`` (flagged) so grouping can see their keys."""
    data = batch.data
    n = data.num_rows
    tree: dict[str, object] = {}
    for column, path in plan.columns:
        _insert(tree, path, coerce.empty_to_null(data.column(column)))
    for path, value in plan.constants:
        _insert(tree, path, pa.repeat(pa.scalar(value), n))
    walk = _Normalizer(plan)
    records = walk.object(plan.shape, tree, (), n, None)
    bad, rejects = _collect(plan.input, batch.lines, n, walk.failures)
    return MappedBatch(records=records, lines=batch.lines, bad=bad, rejects=rejects)


def _insert(tree: dict[str, object], path: Path, arr: pa.Array) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        assert isinstance(nxt, dict)
        node = nxt
    node[path[-1]] = arr


def _child_shape(shape: Shape, key: str) -> Shape:
    if key in shape.children:
        return shape.children[key]
    if shape.extra is not None:
        return shape.extra
    return Shape(Kind.STRING) if shape.closed else Shape(Kind.ANY)


def _one_item_lists(items: pa.StructArray) -> pa.ListArray:
    """One row describes one array item: wrap each present item in a one-element list."""
    lengths = pc.if_else(items.is_valid(), 1, 0).cast(pa.int32())
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(lengths)])
    present = items.filter(items.is_valid())
    return pa.ListArray.from_arrays(offsets, present, mask=pc.invert(items.is_valid()))


_MESSAGES = {
    Kind.INTEGER: ("type", "must be an integer"),
    Kind.NUMBER: ("type", "must be a finite number"),
    Kind.BOOLEAN: ("type", "must be a boolean (true/false, 1/0, yes/no)"),
    Kind.DATE: ("format", "must be a real calendar date YYYY-MM-DD"),
    Kind.DATETIME: ("format", "must be an ISO 8601 date-time with a real date and time"),
    Kind.STRING: ("type", "must be a string"),
    Kind.EMAIL: ("type", "must be a string"),
}

_CONVERTERS = {
    Kind.STRING: coerce.to_string,
    Kind.EMAIL: coerce.to_email,
    Kind.INTEGER: coerce.to_integer,
    Kind.NUMBER: coerce.to_number,
    Kind.BOOLEAN: coerce.to_boolean,
    Kind.DATE: coerce.to_date,
}


class _Normalizer:
    """Walks the column tree against the shape tree, coercing leaves and noting failures.

    ``to_top`` maps the rows of the array at hand to the batch's rows (None at the top level;
    list items of a Parquet list column map to the row holding the list).
    """

    def __init__(self, plan: MappingPlan) -> None:
        self.plan = plan
        self.failures = _Failures()

    def object(
        self, shape: Shape, tree: dict[str, object], path: Path, n: int, to_top: pa.Int64Array | None
    ) -> pa.StructArray:
        names: list[str] = []
        arrays: list[pa.Array] = []
        for key, sub in tree.items():
            child_shape = _child_shape(shape, key)
            child_path = (*path, key)
            if isinstance(sub, dict):
                if child_shape.kind is Kind.ARRAY and child_shape.items is not None:
                    value: pa.Array = _one_item_lists(
                        self.object(child_shape.items, sub, child_path, n, to_top)
                    )
                else:
                    value = self.object(child_shape, sub, child_path, n, to_top)
            else:
                assert isinstance(sub, pa.Array)
                value = self.value(child_shape, sub, child_path, to_top)
            names.append(key)
            arrays.append(value)
        if not arrays:
            return pa.array([{}] * n, pa.struct([]))
        if not path:  # a record is there even when every field is empty
            return pa.StructArray.from_arrays(arrays, names=names)
        present = arrays[0].is_valid()
        for arr in arrays[1:]:
            present = pc.or_(present, arr.is_valid())
        return pa.StructArray.from_arrays(arrays, names=names, mask=pc.invert(present))

    def value(self, shape: Shape, arr: pa.Array, path: Path, to_top: pa.Int64Array | None) -> pa.Array:
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            return self.list(shape, arr, path, to_top)
        if shape.kind is Kind.ARRAY:
            if shape.items is not None and shape.items.kind is Kind.OBJECT:
                why = f"must be an array of objects (use columns like {'.'.join(path)}.<field>)"
                self.failures.add(arr.is_valid(), to_top, path, "type", why)
                return pa.nulls(len(arr), pa.list_(pa.string()))
            got = coerce.to_string_list(arr, self.plan.list_separator)
            why = "must be an array of strings (a JSON array or separated values)"
            self.failures.add(got.bad, to_top, path, "type", why)
            return got.values
        return self.scalar(shape.kind, arr, path, to_top)

    def list(self, shape: Shape, arr: pa.Array, path: Path, to_top: pa.Int64Array | None) -> pa.Array:
        """A typed list column (Parquet): coerce its items, keeping the row structure."""
        if shape.kind is not Kind.ARRAY or shape.items is None:
            if shape.kind is Kind.ANY:
                return arr
            self.failures.add(
                arr.is_valid(), to_top, path, "type", f"must be {shape.kind.value}, not an array"
            )
            return pa.nulls(len(arr), pa.string())
        if pa.types.is_large_list(arr.type):
            arr = arr.cast(pa.list_(arr.type.value_type))
        values = pc.list_flatten(arr)
        parents = pc.list_parent_indices(arr)
        item_top = parents if to_top is None else pc.take(to_top, parents)
        item_path = (*path[:-1], f"{path[-1]}[]")
        if pa.types.is_struct(values.type) and shape.items.kind is Kind.OBJECT:
            flat = flatten_columns(pa.RecordBatch.from_struct_array(values))
            tree: dict[str, object] = {}
            for name, col in zip(flat.schema.names, flat.columns, strict=True):
                _insert(tree, tuple(name.split(".")), coerce.empty_to_null(col))
            nested = self.object(shape.items, tree, item_path, len(values), item_top)
            # items of a list are present even when all their fields are empty
            items: pa.Array = pa.StructArray.from_arrays(
                nested.flatten(), names=[f.name for f in nested.type]
            )
        else:
            items = self.value(shape.items, values, item_path, item_top)
        lengths = pc.fill_null(pc.list_value_length(arr), 0)
        offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(lengths).cast(pa.int32())])
        return pa.ListArray.from_arrays(offsets, items, mask=arr.is_null())

    def scalar(self, kind: Kind, arr: pa.Array, path: Path, to_top: pa.Int64Array | None) -> pa.Array:
        if kind is Kind.ANY:
            return arr
        if kind is Kind.OBJECT:
            why = f"must be an object (use columns like {'.'.join(path)}.<field>)"
            self.failures.add(arr.is_valid(), to_top, path, "type", why)
            return pa.nulls(len(arr), pa.string())
        got = coerce.to_datetime(arr, self.plan.style) if kind is Kind.DATETIME else _CONVERTERS[kind](arr)
        rule, why = _MESSAGES[kind]
        self.failures.add(got.bad, to_top, path, rule, why)
        return got.values


def _collect(
    input_name: str, lines: pa.Int64Array, n: int, failures: _Failures
) -> tuple[pa.BooleanArray, tuple[Reject, ...]]:
    """Merge failures into one bad-row mask and the first reason per bad row."""
    first: dict[int, tuple[str, str, str]] = {}
    for rows, field, rule, why in failures.items:
        for row in rows.to_pylist():
            first.setdefault(row, (field, rule, why))
    if not first:
        return coerce.all_false(n), ()
    flags = np.zeros(n, dtype=np.bool_)
    rows = sorted(first)
    flags[rows] = True
    line_of = lines.to_numpy(zero_copy_only=False)[rows].tolist()  # not the whole unit's lines as Python ints
    rejects = tuple(
        Reject(input=input_name, line=line, field=f, rule=r, message=f"{f} {w}")
        for line, (f, r, w) in zip(line_of, (first[row] for row in rows), strict=True)
    )
    return pa.array(flags), rejects
