"""Validation: every record is checked against its record type's JSON Schema (draft 7).

Two paths that must agree exactly:

* the *compiled* validator (fastjsonschema, with bulkd's calendar-aware formats) is the
  authority; it names the failing field and rule for each rejected record;
* the *fast path* (added beside it) checks whole Arrow arrays with compute kernels, so
  per-row Python runs only for rows that fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import fastjsonschema
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bulkd.coerce import all_false, calendar_ok, iso_dates_ok, iso_datetimes_ok
from bulkd.encode import encode_ndjson
from bulkd.errors import SchemaError
from bulkd.formats import DATE_RE, DATETIME_RE, FORMAT_CHECKERS, URI_RE
from bulkd.model import Reject
from bulkd.patterns import search_cells
from bulkd.schemas import RecordType, resolve_ref

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
_HANDLED = frozenset(
    {
        "$ref", "$schema", "$comment", "$id", "title", "description", "examples", "default",
        "type", "properties", "required", "additionalProperties", "definitions", "items",
        "enum", "anyOf", "allOf", "pattern", "minLength", "maxLength", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
    }
)  # fmt: skip


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
        return pc.fill_null(self._node(self.root, records), False)

    def _node(self, node: dict[str, Any], arr: pa.Array) -> pa.BooleanArray:
        node = resolve_ref(self.root, node)
        if not set(node) <= _HANDLED:
            return _none_ok(arr)
        ok = _type_ok(node.get("type"), arr)
        if "enum" in node:
            ok = pc.and_kleene(ok, _enum_ok(node["enum"], arr))
        for variant_key, combine in (("allOf", pc.and_kleene), ("anyOf", pc.or_kleene)):
            if variant_key in node:
                parts = [self._node(v, arr) for v in node[variant_key]]
                merged = parts[0]
                for part in parts[1:]:
                    merged = combine(merged, part)
                ok = pc.and_kleene(ok, merged)
        if pa.types.is_struct(arr.type):
            ok = pc.and_kleene(ok, self._object(node, arr))
        elif pa.types.is_list(arr.type):
            ok = pc.and_kleene(ok, self._array(node, arr))
        elif pa.types.is_string(arr.type):
            ok = pc.and_kleene(ok, _string_ok(node, arr))
        elif pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
            ok = pc.and_kleene(ok, _number_ok(node, arr))
        # absent values satisfy everything but ``required``, which the parent checks
        return pc.or_kleene(arr.is_null(), pc.fill_null(ok, False))

    def _object(self, node: dict[str, Any], arr: pa.StructArray) -> pa.BooleanArray:
        ok = _all_true(len(arr))
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        children = dict(zip([f.name for f in arr.type], arr.flatten(), strict=True))
        for name, child in children.items():
            if name in props:
                ok = pc.and_kleene(ok, self._node(props[name], child))
            elif extra is False:
                ok = pc.and_kleene(ok, child.is_null())
            elif isinstance(extra, dict):
                ok = pc.and_kleene(ok, self._node(extra, child))
        for name in node.get("required", ()):
            child = children.get(name)
            ok = pc.and_kleene(ok, child.is_valid() if child is not None else pc.invert(_all_true(len(arr))))
        return ok

    def _array(self, node: dict[str, Any], arr: pa.ListArray) -> pa.BooleanArray:
        lengths = pc.fill_null(pc.list_value_length(arr), 0)
        ok = _all_true(len(arr))
        if "minItems" in node:
            ok = pc.and_kleene(ok, pc.greater_equal(lengths, node["minItems"]))
        if "maxItems" in node:
            ok = pc.and_kleene(ok, pc.less_equal(lengths, node["maxItems"]))
        items = node.get("items")
        if isinstance(items, dict):
            values = pc.list_flatten(arr)
            item_ok = self._node(items, values)
            # a JSON array cannot hold an absent item: a null element must satisfy the item schema
            item_ok = pc.and_kleene(item_ok, _nulls_allowed(resolve_ref(self.root, items), values))
            failed = pc.take(pc.list_parent_indices(arr), pc.indices_nonzero(pc.invert(item_ok)))
            ok = pc.and_kleene(ok, pc.invert(pc.is_in(pa.array(np.arange(len(arr))), failed)))
        elif items is not None:
            ok = _none_ok(arr)
        return ok


@lru_cache(maxsize=8)
def _all_true(n: int) -> pa.BooleanArray:
    """A mask with every row set; cached, as units have few sizes and Arrow arrays are immutable."""
    return pa.array(np.ones(n, dtype=np.bool_))


def _none_ok(arr: pa.Array) -> pa.BooleanArray:
    return all_false(len(arr))


def _nulls_allowed(node: dict[str, Any], values: pa.Array) -> pa.BooleanArray:
    kinds = node.get("type")
    allows_null = kinds == "null" or (isinstance(kinds, list) and "null" in kinds)
    return _all_true(len(values)) if allows_null else values.is_valid()


_ARROW_TYPE_OK = {
    "string": pa.types.is_string,
    "integer": pa.types.is_integer,
    "number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    "boolean": pa.types.is_boolean,
    "object": pa.types.is_struct,
    "array": pa.types.is_list,
    "null": pa.types.is_null,
}


def _type_ok(kinds: object, arr: pa.Array) -> pa.BooleanArray:
    if kinds is None:
        return _all_true(len(arr))
    names = kinds if isinstance(kinds, list) else [kinds]
    if pa.types.is_floating(arr.type) and "null" not in names:
        # NaN and infinities are encoded as ``null``, which no numeric type accepts
        finite = pc.is_finite(arr)
        if "integer" in names and "number" not in names:
            return pc.and_(finite, pc.equal(pc.floor(arr), arr))
        if "number" in names:
            return finite
    if any(_ARROW_TYPE_OK.get(str(name), lambda _t: False)(arr.type) for name in names):
        return _all_true(len(arr))
    return _none_ok(arr)


def _enum_ok(options: list[Any], arr: pa.Array) -> pa.BooleanArray:
    if pa.types.is_string(arr.type):
        return pc.is_in(arr, pa.array([o for o in options if isinstance(o, str)], pa.string()))
    return _none_ok(arr)  # enums over non-strings: let the compiled validator decide


def _string_ok(node: dict[str, Any], arr: pa.Array) -> pa.BooleanArray:
    ok = _all_true(len(arr))
    if "minLength" in node or "maxLength" in node:
        length = pc.utf8_length(arr)
        if "minLength" in node:
            ok = pc.and_kleene(ok, pc.greater_equal(length, node["minLength"]))
        if "maxLength" in node:
            ok = pc.and_kleene(ok, pc.less_equal(length, node["maxLength"]))
    if "pattern" in node:
        ok = pc.and_kleene(ok, _pattern_ok(node["pattern"], arr))
    fmt = node.get("format")
    if fmt in _FORMAT_RES:
        ok = pc.and_kleene(ok, _format_ok(fmt, arr))
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


def _number_ok(node: dict[str, Any], arr: pa.Array) -> pa.BooleanArray:
    ok = _all_true(len(arr))
    checks = (
        ("minimum", pc.greater_equal),
        ("maximum", pc.less_equal),
        ("exclusiveMinimum", pc.greater),
        ("exclusiveMaximum", pc.less),
    )
    for keyword, compare in checks:
        if keyword in node:
            ok = pc.and_kleene(ok, compare(arr, node[keyword]))
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
        if not pc.any(doubtful).as_py():
            return Verdict(ok, (), 0)
        suspects = pc.indices_nonzero(doubtful)
        texts = encode_ndjson(records.take(suspects))  # not a mask: Arrow-encoded types cost per row
        line_of = lines.take(suspects).to_pylist()
        flags = ok.to_numpy(zero_copy_only=False).copy()
        rejects: list[Reject] = []
        cleared = 0
        for i, (row, line) in enumerate(zip(suspects.to_pylist(), line_of, strict=True)):
            reason = self.explain(orjson.loads(texts.slice_bytes(i, i + 1)))
            if reason is None:
                flags[row] = True
                cleared += 1
            else:
                field, rule, message = reason
                rejects.append(Reject(input=input_name, line=line, field=field, rule=rule, message=message))
        return Verdict(pa.array(flags), tuple(rejects), cleared)

    def explain(self, record: Any) -> tuple[str | None, str, str] | None:
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


def violation_reason(exc: fastjsonschema.JsonSchemaValueException) -> tuple[str | None, str, str]:
    """(field path, rule, message) from a fastjsonschema error, with ``data.`` dropped.

    fastjsonschema's messages name the rule's expectation, never the offending value.
    """
    parts = [str(p) for p in (exc.path or [])[1:]]
    field = ".".join(parts) if parts else None
    message = exc.message[5:] if exc.message.startswith("data.") else exc.message
    if message.startswith("data "):
        message = "record " + message[5:]
    return field, str(exc.rule or "schema"), message
