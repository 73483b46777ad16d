"""Validation: every record is checked against its record type's JSON Schema (draft 7).

Two paths that must agree exactly:

* the *compiled* validator (fastjsonschema, with bulkd's calendar-aware formats) is the
  authority; it names the failing field and rule for each rejected record;
* the *fast path* (added beside it) checks whole Arrow arrays with compute kernels, so
  per-row Python runs only for rows that fail.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, TypeAlias

import fastjsonschema
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bulkd.coerce import all_false, calendar_ok, iso_dates_ok, iso_datetimes_ok
from bulkd.encode import encode_ndjson
from bulkd.errors import SchemaError
from bulkd.facts import plan_for, record_facts
from bulkd.formats import DATE_RE, DATETIME_RE, FORMAT_CHECKERS, URI_RE
from bulkd.model import Reject
from bulkd.patterns import search_cells
from bulkd.schemas import ANNOTATIONS, RecordType, resolve_ref

__all__ = [
    "FastChecker",
    "RecordChecker",
    "RecordValidator",
    "SchemaViolation",
    "Verdict",
    "compile_validator",
    "python_pattern_to_re2",
    "violation_reason",
]

SchemaViolation = fastjsonschema.JsonSchemaValueException
"""Raised by a compiled validator: ``.message``, ``.path``, ``.rule`` (``.value`` is never logged)."""

RecordValidator = Callable[[Any], Any]

Reason: TypeAlias = "tuple[str | None, str, str]"
"""Why a record is refused: (field path, rule, message)."""


def compile_validator(record_type: RecordType) -> RecordValidator:
    """Compile the record type's schema once; the result raises :data:`SchemaViolation` on bad records."""
    return _compile(record_type.source, record_type)


@cache
def _compile(_source: str, record_type: RecordType) -> RecordValidator:
    try:
        validator: RecordValidator = fastjsonschema.compile(
            record_type.schema, formats=FORMAT_CHECKERS, use_default=False
        )
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise SchemaError(f"schema {record_type.source} cannot be compiled: {exc}") from exc
    return validator


# --------------------------------------------------------------------------- fast path

_FORMAT_RES = {"date": DATE_RE, "date-time": DATETIME_RE, "uri": URI_RE}
_HANDLED = ANNOTATIONS | frozenset(
    {
        "$ref", "type", "properties", "required", "additionalProperties", "items",
        "enum", "anyOf", "allOf", "pattern", "minLength", "maxLength", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
    }
)  # fmt: skip


Mask: TypeAlias = "pa.BooleanArray | bool"
"""Which rows pass a check: an array, or a constant for every row. Many checks are decided by an
array's type or null count alone (a link form whose required key is not a column at all), and a
constant skips their kernel calls and everything they would have been combined with."""


def _fold(a: Mask, b: Mask, settled: bool) -> Mask:
    """``a and b`` (``settled`` False) or ``a or b`` (``settled`` True), row by row.

    The ``settled`` constant decides the answer whatever the other mask holds; the other
    constant leaves the other mask as it is. Only two arrays need a kernel.
    """
    if a is settled or b is settled:
        return settled
    if isinstance(a, bool):
        return b
    if isinstance(b, bool):
        return a
    return pc.or_kleene(a, b) if settled else pc.and_kleene(a, b)


def _and(a: Mask, b: Mask) -> Mask:
    return _fold(a, b, settled=False)


def _or(a: Mask, b: Mask) -> Mask:
    return _fold(a, b, settled=True)


def _as_array(mask: Mask, n: int) -> pa.BooleanArray:
    if mask is True:
        return _all_true(n)
    if mask is False:
        return all_false(n)
    return mask


def _valid(arr: pa.Array) -> Mask:
    if arr.null_count == 0:
        return True
    return False if arr.null_count == len(arr) else arr.is_valid()


def _null(arr: pa.Array) -> Mask:
    if arr.null_count == len(arr):
        return True
    return False if arr.null_count == 0 else arr.is_null()


class FastChecker:
    """Checks whole Arrow arrays against a schema with compute kernels.

    It answers "certainly valid" per row. A ``False`` only means "look closer": the row is then
    checked by the compiled validator, which names the reason (and has the last word). Schema
    keywords this class does not understand make it answer ``False`` for every row they touch,
    so an unknown keyword can slow a custom schema down but never let a bad record through.
    """

    def __init__(self, record_type: RecordType) -> None:
        self.root = record_type.schema

    def check(self, records: pa.Array) -> pa.BooleanArray:
        """True for rows that satisfy the whole schema."""
        return pc.fill_null(_as_array(self._node(self.root, records), len(records)), False)

    def _node(self, node: dict[str, Any], arr: pa.Array) -> Mask:
        node = resolve_ref(self.root, node)
        if not set(node) <= _HANDLED:
            return False
        ok = _type_ok(node.get("type"), arr)
        if "enum" in node:
            ok = _and(ok, _enum_ok(node["enum"], arr))
        for keyword in ("allOf", "anyOf"):
            if keyword in node and ok is not False:
                ok = _and(ok, self._variants(keyword, node[keyword], arr))
        if ok is not False:
            if pa.types.is_struct(arr.type):
                ok = _and(ok, self._object(node, arr))
            elif pa.types.is_list(arr.type):
                ok = _and(ok, self._array(node, arr))
            elif pa.types.is_string(arr.type):
                ok = _and(ok, _string_ok(node, arr))
            elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
                ok = _and(ok, _number_ok(node, arr))
        # absent values satisfy everything but ``required``, which the parent checks
        if ok is True:
            return True
        absent = _null(arr)
        return absent if ok is False else _or(absent, pc.fill_null(ok, False))

    def _variants(self, keyword: str, variants: list[dict[str, Any]], arr: pa.Array) -> Mask:
        """``allOf`` (every variant) or ``anyOf`` (one at least), stopping once the answer is settled."""
        settled = keyword == "anyOf"
        merged = self._node(variants[0], arr)
        for variant in variants[1:]:
            if merged is settled:
                break
            merged = _fold(merged, self._node(variant, arr), settled)
        return merged

    def _object(self, node: dict[str, Any], arr: pa.StructArray) -> Mask:
        children = dict(zip([f.name for f in arr.type], arr.flatten(), strict=True))
        ok: Mask = True
        for name in node.get("required", ()):
            child = children.get(name)
            ok = _and(ok, _valid(child) if child is not None else False)
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for name, child in children.items():
            if ok is False:
                break
            if name in props:
                ok = _and(ok, self._node(props[name], child))
            elif extra is False:
                ok = _and(ok, _null(child))
            elif isinstance(extra, dict):
                ok = _and(ok, self._node(extra, child))
        return ok

    def _array(self, node: dict[str, Any], arr: pa.ListArray) -> Mask:
        lengths = pc.fill_null(pc.list_value_length(arr), 0)
        ok: Mask = True
        if "minItems" in node:
            ok = _and(ok, pc.greater_equal(lengths, node["minItems"]))
        if "maxItems" in node:
            ok = _and(ok, pc.less_equal(lengths, node["maxItems"]))
        items = node.get("items")
        if isinstance(items, dict):
            values = pc.list_flatten(arr)
            item_ok = self._node(items, values)
            # a JSON array cannot hold an absent item: a null element must satisfy the item schema
            if not _nulls_allowed(resolve_ref(self.root, items)):
                item_ok = _and(item_ok, _valid(values))
            if item_ok is not True:
                failed_items = pc.indices_nonzero(pc.invert(_as_array(item_ok, len(values))))
                failed = pc.take(pc.list_parent_indices(arr), failed_items)
                ok = _and(ok, pc.invert(pc.is_in(pa.array(np.arange(len(arr))), failed)))
        elif items is not None:
            return False
        return ok


@lru_cache(maxsize=8)
def _all_true(n: int) -> pa.BooleanArray:
    """A mask with every row set; cached, as units have few sizes and Arrow arrays are immutable."""
    return pa.array(np.ones(n, dtype=np.bool_))


def _nulls_allowed(node: dict[str, Any]) -> bool:
    kinds = node.get("type")
    return kinds == "null" or (isinstance(kinds, list) and "null" in kinds)


_ARROW_TYPE_OK = {
    "string": pa.types.is_string,
    "integer": pa.types.is_integer,
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    "boolean": pa.types.is_boolean,
    "object": pa.types.is_struct,
    "array": pa.types.is_list,
    "null": pa.types.is_null,
}


def _type_ok(kinds: object, arr: pa.Array) -> Mask:
    if kinds is None:
        return True
    names = kinds if isinstance(kinds, list) else [kinds]
    if pa.types.is_floating(arr.type) and "null" not in names:
        # NaN and infinities are encoded as ``null``, which no numeric type accepts
        finite = pc.is_finite(arr)
        if "integer" in names and "number" not in names:
            return pc.and_(finite, pc.equal(pc.floor(arr), arr))
        if "number" in names:
            return finite
    return any(_ARROW_TYPE_OK.get(str(name), lambda _t: False)(arr.type) for name in names)


def _enum_ok(options: list[Any], arr: pa.Array) -> Mask:
    if pa.types.is_string(arr.type):
        return pc.is_in(arr, pa.array([o for o in options if isinstance(o, str)], pa.string()))
    return False  # enums over non-strings: let the compiled validator decide


def _string_ok(node: dict[str, Any], arr: pa.Array) -> Mask:
    ok: Mask = True
    if "minLength" in node or "maxLength" in node:
        length = pc.utf8_length(arr)
        if "minLength" in node:
            ok = _and(ok, pc.greater_equal(length, node["minLength"]))
        if "maxLength" in node:
            ok = _and(ok, pc.less_equal(length, node["maxLength"]))
    if "pattern" in node:
        ok = _and(ok, _pattern_ok(node["pattern"], arr))
    fmt = node.get("format")
    if fmt in _FORMAT_RES:
        ok = _and(ok, _format_ok(fmt, arr))
    return ok


def _pattern_ok(pattern: str, arr: pa.Array) -> pa.BooleanArray:
    found = search_cells(arr, pattern)
    if found is not None:
        return pa.array(found)
    return pc.match_substring_regex(arr, python_pattern_to_re2(pattern))


def _format_ok(fmt: str, arr: pa.Array) -> pa.BooleanArray:
    fast = iso_dates_ok(arr) if fmt == "date" else iso_datetimes_ok(arr) if fmt == "date-time" else None
    if fast is not None:
        return pa.array(fast)
    parts = pc.extract_regex(arr, _FORMAT_RES[fmt])
    shaped = parts.is_valid()
    if fmt == "uri":
        return shaped
    real = calendar_ok(parts.field(0), parts.field(1), parts.field(2))
    if fmt == "date-time":
        clock = [_cast_int(parts.field(i)) for i in (3, 4, 5, 8, 9)]
        for value, top in zip(clock, (23, 59, 59, 23, 59), strict=True):
            real = pc.and_kleene(real, pc.fill_null(pc.less_equal(value, top), True))
    return pc.and_kleene(shaped, pc.fill_null(real, False))


def _cast_int(text: pa.Array) -> pa.Array:
    return pc.cast(pc.if_else(pc.equal(text, ""), _NULL_TEXT, text), pa.int32())


_NULL_TEXT = pa.scalar(None, pa.string())


def _number_ok(node: dict[str, Any], arr: pa.Array) -> Mask:
    ok: Mask = True
    checks = (
        ("minimum", pc.greater_equal),
        ("maximum", pc.less_equal),
        ("exclusiveMinimum", pc.greater),
        ("exclusiveMaximum", pc.less),
    )
    for keyword, compare in checks:
        if keyword in node:
            ok = _and(ok, compare(arr, node[keyword]))
    return ok


def python_pattern_to_re2(pattern: str) -> str:
    """Make RE2 match as the compiled validator does: fastjsonschema turns every ``$`` into ``\\Z``.

    So ``$`` is the very end of the string (no match before a final newline, unlike plain
    ``re.search``); RE2 spells that ``\\z``.
    """
    out = []
    escaped = in_class = False
    for ch in pattern:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif ch == "[":
            in_class = True
            out.append(ch)
        elif ch == "]":
            in_class = False
            out.append(ch)
        elif ch == "$" and not in_class:
            out.append(r"\z")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Which rows of a batch are valid, and why the others are not."""

    valid: pa.BooleanArray
    rejects: tuple[Reject, ...]
    """One per invalid row, in row order."""
    second_opinions: int
    """Rows the fast path doubted but the compiled validator accepted (should stay 0)."""


class RecordChecker:
    """The validate stage: fast path for every row, compiled validator for the doubtful ones."""

    def __init__(self, record_type: RecordType) -> None:
        self.fast = FastChecker(record_type)
        self.compiled = compile_validator(record_type)
        self._forms: dict[bytes, tuple[tuple[_Form, ...], str]] = {}
        self._place = plan_for(record_type.schema)
        """Where the facts come from (None when the schema uses keywords they cannot follow)."""
        self._kinds: dict[Hashable, Reason | None] = {}

    def verdict(
        self, input_name: str, records: pa.Array, lines: pa.Int64Array, skip: pa.BooleanArray | None = None
    ) -> Verdict:
        """Validate ``records``; ``lines[i]`` is the source line reported for row ``i``.

        Rows set in ``skip`` (already rejected upstream) are neither valid nor explained again,
        which saves filtering the batch before validation.
        """
        ok = self.fast.check(records)
        doubtful = pc.invert(ok)
        if skip is not None:
            ok = pc.and_not(ok, skip)
            doubtful = pc.and_not(doubtful, skip)
        if not doubtful.true_count:
            return Verdict(ok, (), 0)
        suspects = pc.indices_nonzero(doubtful)
        texts = encode_ndjson(records.take(suspects))  # not a mask: Arrow-encoded types cost per row
        line_of = lines.take(suspects).to_pylist()
        flags = ok.to_numpy(zero_copy_only=False).copy()
        rejects: list[Reject] = []
        cleared = 0
        for i, (row, line) in enumerate(zip(suspects.to_pylist(), line_of, strict=True)):
            reason = self.explain_kind(orjson.loads(texts.slice_bytes(i, i + 1)))
            if reason is None:
                flags[row] = True
                cleared += 1
            else:
                field, rule, message = reason
                rejects.append(Reject(input=input_name, line=line, field=field, rule=rule, message=message))
        return Verdict(pa.array(flags), tuple(rejects), cleared)

    def explain_kind(self, record: Any) -> Reason | None:
        """:meth:`explain`, worked out once per kind of record (:mod:`bulkd.facts`)."""
        if self._place is None:
            return self.explain(record)
        kind = record_facts(record, self._place)
        if kind in self._kinds:
            return self._kinds[kind]
        reason = self.explain(record)
        if len(self._kinds) >= _KINDS_KEPT:
            self._kinds.clear()
        self._kinds[kind] = reason
        return reason

    def explain(self, record: Any) -> Reason | None:
        """The compiled validator's reason for refusing ``record`` (None when it is valid)."""
        try:
            self.compiled(record)
        except SchemaViolation as exc:
            field, rule, message = violation_reason(exc)
            if rule == "anyOf" and isinstance(exc.definition, dict):
                message = self._explain_any_of(field, exc.definition, exc.value) or message
            return field, rule, message
        return None

    def _explain_any_of(self, field: str | None, definition: dict[str, Any], value: Any) -> str | None:
        """Say which form the value looks like and why it fails it, or list the accepted forms.

        fastjsonschema only says "cannot be validated by any definition", which tells a user
        nothing about Lexer's seven ``link`` forms.
        """
        name = field or "record"
        forms, listing = self._forms_of(definition)
        if isinstance(value, dict):
            for form in forms:
                if form.required and all(k in value for k in form.required):
                    try:
                        form.check(value)
                    except SchemaViolation as inner:
                        _, _, why = violation_reason(inner)
                        if why.startswith("record "):  # the variant's own root is this field
                            why = f"{name} {why.removeprefix('record ')}"
                        return f"{name} looks like {{{', '.join(form.required)}}} but {why}"
        return f"{name} matches none of the accepted forms: {listing}"

    def _forms_of(self, definition: dict[str, Any]) -> tuple[tuple[_Form, ...], str]:
        """The ``anyOf``'s forms, worked out once per checker and ``anyOf``.

        Keyed by content: ``exc.definition`` is a fresh copy on every raise, so an ``id()`` key
        would miss every time (and could hit a recycled id). The ``anyOf`` list alone is a small
        key; a file full of bad links asks for it on every row.
        """
        variants = definition.get("anyOf", [])
        key = orjson.dumps(variants, option=orjson.OPT_SORT_KEYS)
        known = self._forms.get(key)
        if known is None:
            root = self.fast.root
            resolved = [resolve_ref(root, v) for v in variants]
            forms = tuple(_Form(tuple(v.get("required", [])), _variant_validator(root, v)) for v in resolved)
            listing = " | ".join(" + ".join(f.required) or "{}" for f in forms)
            known = self._forms[key] = (forms, listing)
        return known


_KINDS_KEPT = 1024
"""Kinds of record whose explanation is kept (a customer record's facts take ~3 KB); a file has a
handful, usually."""


@dataclass(frozen=True, slots=True)
class _Form:
    """One ``anyOf`` variant: the keys that identify it, and its own compiled validator."""

    required: tuple[str, ...]
    check: RecordValidator


_VARIANTS: dict[bytes, RecordValidator] = {}


def _variant_validator(root: dict[str, Any], variant: dict[str, Any]) -> RecordValidator:
    """Compiled once per process for each distinct variant (compiling costs milliseconds)."""
    key = orjson.dumps([variant, root.get("definitions", {})], option=orjson.OPT_SORT_KEYS)
    if key not in _VARIANTS:
        schema = {**variant, "definitions": root.get("definitions", {})}
        _VARIANTS[key] = fastjsonschema.compile(schema, formats=FORMAT_CHECKERS, use_default=False)
    return _VARIANTS[key]


def violation_reason(exc: fastjsonschema.JsonSchemaValueException) -> Reason:
    """(field path, rule, message) from a fastjsonschema error, with ``data.`` dropped.

    fastjsonschema's messages name the rule's expectation, never the offending value.
    """
    parts = [str(p) for p in (exc.path or [])[1:]]
    field = ".".join(parts) if parts else None
    message = exc.message[5:] if exc.message.startswith("data.") else exc.message
    if message.startswith("data "):
        message = "record " + message[5:]
    return field, str(exc.rule or "schema"), message
