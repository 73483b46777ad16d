"""Encoding: typed Arrow records become NDJSON text, a whole array at a time.

NDJSON is written in one pass by a small C extension (``bulkd._jsonl``) when it was built, which
is the usual case. Without a C compiler at install time, the same bytes come from Arrow string
kernels, the path described next, at about four times the cost (0.8 against 0.2 CPU s for a
million customer records). Types the extension does not know (floats, dates, lists, exotic
types) reach it already as JSON text from that path.

JSON is assembled with Arrow string kernels: each field becomes a ``,"key":value`` fragment
(null when the value is absent, so absent fields are omitted, never written as ``null``), the
fragments of an object are concatenated in one kernel call, and arrays are joined per list.
Python touches single values only where a string needs JSON escaping (quotes, backslashes,
control characters), which real data rarely has, and for exotic Arrow types.

The bytes are deterministic: keys follow the column order, numbers use Arrow's shortest
round-trip formatting. A dictionary-encoded column writes the bytes of its decoded values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bulkd.buffers import value_bytes, value_offsets
from bulkd.coerce import DateTimeStyle, to_date, to_datetime, without_dictionaries

try:
    from bulkd import _jsonl

    NATIVE = True
    """Whether the C writer was built; without it (no C compiler at install) Arrow writes the same bytes."""
except ImportError:
    NATIVE = False

__all__ = [
    "NATIVE",
    "EncodedRows",
    "arrow_ndjson",
    "encode_ndjson",
    "native_ndjson",
    "to_ndjson",
]

_NEEDS_ESCAPE_RE = r'[\x00-\x1f"\\]'
_QUOTE = ord('"')
_BACKSLASH = ord("\\")
_NULL_STR = pa.scalar(None, pa.string())


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """NDJSON for ``count`` records: ``data[offsets[i]:offsets[i+1]]`` is record ``i`` with its newline."""

    data: pa.Buffer
    offsets: np.ndarray
    count: int

    def slice_bytes(self, start: int, stop: int) -> memoryview:
        """The NDJSON bytes of records ``start`` to ``stop`` (exclusive), without copying."""
        lo = int(self.offsets[start])
        hi = int(self.offsets[stop])
        return memoryview(self.data)[lo:hi]

    @property
    def nbytes(self) -> int:
        """Uncompressed size of all records."""
        return int(self.offsets[self.count] - self.offsets[0])


def encode_ndjson(records: pa.StructArray, keep: np.ndarray | None = None) -> EncodedRows:
    """NDJSON of ``records`` (which must not be null), or of the rows where ``keep`` is true.

    ``keep`` saves copying the valid records out of a unit before writing them.
    """
    if NATIVE:
        return native_ndjson(records, keep)
    return arrow_ndjson(records if keep is None else records.filter(keep))


def native_ndjson(records: pa.StructArray, keep: np.ndarray | None = None) -> EncodedRows:
    """:func:`encode_ndjson` by the C extension (which must be built); the GIL is released while it writes."""
    assert NATIVE, "bulkd._jsonl was not built"
    flags = None if keep is None else np.ascontiguousarray(keep, dtype=np.bool_)
    owner, address, size, offsets, count = _jsonl.encode(_node(_plain(records)), len(records), flags)
    data = pa.foreign_buffer(address, size, base=owner)
    return EncodedRows(data=data, offsets=np.frombuffer(offsets, dtype=np.int64), count=count)


def arrow_ndjson(records: pa.StructArray) -> EncodedRows:
    """:func:`encode_ndjson` by Arrow kernels: the newline rides in the objects' own join."""
    return _lines(_encode_struct(_plain(records), close="}\n"))


def _plain(records: pa.StructArray) -> pa.StructArray:
    """Dictionary-encoded members decoded: both encoders write plain values (and a dictionary's
    null values are nulls of its rows only once decoded)."""
    plain = without_dictionaries(records.type)
    return records if plain == records.type else records.cast(plain)


_STRUCT, _STRING, _RAW, _BOOL, _INT64, _LIST = range(6)
_NO_ROWS = np.zeros(1, dtype=np.int32).tobytes()
"""The offsets of a list with no rows."""
Node = tuple[object, ...]
"""An array as ``bulkd._jsonl`` reads it: kind, validity buffer, offset, then the kind's buffers."""


def _node(arr: pa.Array) -> Node:
    """The tree of buffers the extension writes from; other types go as JSON text from :func:`_encode`."""
    kind = arr.type
    validity = arr.buffers()[0] if arr.null_count else None
    if pa.types.is_struct(kind):
        members = tuple((orjson.dumps(f.name) + b":", _node(arr.field(i))) for i, f in enumerate(kind))
        return (_STRUCT, validity, arr.offset, members)
    if pa.types.is_string(kind):
        _, offsets, data = arr.buffers()
        return (_STRING, validity, arr.offset, offsets, data)
    if pa.types.is_large_string(kind):
        return _node(arr.cast(pa.string()))
    if pa.types.is_list(kind):
        values, base = _list_items(arr)
        if len(arr) == 0:  # an empty array may have no offsets buffer at all
            return (_LIST, None, 0, _NO_ROWS, _node(values), 0, 0)
        return (_LIST, validity, arr.offset, arr.buffers()[1], _node(values), len(values), base)
    if pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _node(arr.cast(pa.list_(kind.value_type)))
    if pa.types.is_boolean(kind):
        return (_BOOL, validity, arr.offset, arr.buffers()[1])
    if pa.types.is_int64(kind):
        return (_INT64, validity, arr.offset, arr.buffers()[1])
    if pa.types.is_integer(kind) and not pa.types.is_uint64(kind):
        return _node(arr.cast(pa.int64()))
    text = _encode(arr)
    if pa.types.is_large_string(text.type):
        text = text.cast(pa.string())
    text_validity, offsets, data = text.buffers()
    return (_RAW, text_validity if text.null_count else None, text.offset, offsets, data)


def to_ndjson(rows: pa.StringArray) -> EncodedRows:
    """Append newlines and expose the contiguous NDJSON bytes of ``rows``."""
    return _lines(pc.binary_join_element_wise(rows, "\n", ""))


def _lines(lines: pa.Array) -> EncodedRows:
    """The contiguous bytes of ``lines`` (each ending in a newline) with rebased offsets."""
    data_buf = lines.buffers()[2]
    offsets = value_offsets(lines)
    base = int(offsets[0])
    rebased = offsets.astype(np.int64) - base
    end = int(rebased[-1])
    data = data_buf.slice(base, end) if data_buf is not None else pa.py_buffer(b"")
    return EncodedRows(data=data, offsets=rebased, count=len(lines))


def _encode(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_struct(t):
        return _encode_struct(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _encode_list(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.binary_join_element_wise('"', _escaped(arr), '"', "")
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_floating(t):
        text = pc.cast(arr, pa.string())
        return pc.if_else(pc.is_finite(arr), text, pa.scalar("null"))
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_timestamp(t):
        return _encode(to_datetime(arr, DateTimeStyle()).values)
    if pa.types.is_date(t):
        return _encode(to_date(arr).values)
    return _encode_python(arr)


Parts = list[pa.Array | str]
"""Arguments of one ``binary_join_element_wise`` call: arrays and constant text."""


def _member(key: str, value: pa.Array) -> Parts:
    """Join arguments that write ``,"key":value``, all null where the value is absent.

    A value with no nulls needs no fragment of its own: its key goes into the object's join as
    a constant, and so do the braces and keys of a nested object (inlined), which saves a pass
    over the bytes each.
    """
    prefix = "," + orjson.dumps(key).decode() + ":"
    inner = _object_parts(value) if pa.types.is_struct(value.type) else None
    if pa.types.is_string(value.type) or pa.types.is_large_string(value.type):
        parts: Parts = [prefix + '"', _escaped(value), '"']
    elif inner is not None:
        parts = [prefix, *inner, "}"]
    else:
        parts = [prefix, _encode(value)]
    if value.null_count == 0:
        return parts
    return [pc.binary_join_element_wise(*_merged(parts), "")]


def _object_parts(arr: pa.StructArray) -> Parts | None:
    """Join arguments writing each row's ``{...`` (without the closing brace), or None.

    None when a row is null or the first member can be absent: its leading comma would then
    have to become the brace row by row, which :func:`_encode_struct` does instead.
    """
    if arr.null_count or arr.type.num_fields == 0 or arr.field(0).null_count:
        return None
    parts: Parts = []
    for i, field in enumerate(arr.type):
        parts.extend(_member(field.name, arr.field(i)))
    first = parts[0]
    assert isinstance(first, str)  # a member without nulls starts with its constant key
    parts[0] = "{" + first[1:]
    return parts


def _merged(parts: Parts) -> Parts:
    """Adjacent constants as one (fewer arguments make the join faster)."""
    out: Parts = []
    for part in parts:
        if isinstance(part, str) and out and isinstance(out[-1], str):
            out[-1] += part
        else:
            out.append(part)
    return out


def _join_present(parts: Parts) -> pa.Array:
    """Concatenate the parts row by row; absent members (null fragments) write nothing."""
    return pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")


def _encode_struct(arr: pa.StructArray, close: str = "}") -> pa.Array:
    """Each row as ``{...}`` followed by ``close`` (a newline can ride along); null for null rows.

    One join writes ``,"k1":v1,"k2":v2}`` (absent members are empty strings), then the leading
    comma becomes the opening brace (written directly when the first member is never absent).
    """
    inline = _object_parts(arr)
    if inline is not None:
        return _join_present(_merged([*inline, close]))
    n = len(arr)
    children = [arr.field(i) for i in range(arr.type.num_fields)]
    empty = "{" + close
    if not children:
        text = pa.repeat(pa.scalar(empty), n)
    else:
        parts: Parts = []
        for field, child in zip(arr.type, children, strict=True):
            parts.extend(_member(field.name, child))
        parts = _merged([*parts, close])
        body = _join_present(parts)
        text = pc.binary_replace_slice(body, 0, 1, "{")
        if all(c.null_count for c in children):  # rows with no member at all read "{" + close
            none = children[0].is_null()
            for child in children[1:]:
                none = pc.and_(none, child.is_null())
            if pc.any(none).as_py():
                text = pc.if_else(none, pa.scalar(empty), text)
    if arr.null_count == 0:
        return text
    return pc.if_else(arr.is_valid(), text, _NULL_STR)


def _list_items(arr: pa.ListArray) -> tuple[pa.Array, int]:
    """The child rows a list array (often a slice of a larger one) refers to, and the offset
    value of the first: both encoders prepare those items only, not the whole child."""
    if len(arr) == 0:
        return arr.values.slice(0, 0), 0
    ends = value_offsets(arr)
    base = int(ends[0])
    return arr.values.slice(base, int(ends[-1]) - base), base


def _encode_list(arr: pa.Array) -> pa.Array:
    if pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    values, start = _list_items(arr)
    items = pc.fill_null(_encode(values), "null")
    rebased = pc.subtract(arr.offsets, pa.scalar(start, pa.int32()))
    joined = pc.binary_join(pa.ListArray.from_arrays(rebased, items, mask=arr.is_null()), ",")
    return pc.binary_join_element_wise("[", joined, "]", "")


def _escaped(arr: pa.Array) -> pa.Array:
    """String values with JSON escapes applied (without quotes); a scan of the bytes finds the rare ones."""
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    raw = value_bytes(arr)
    if not raw.size:
        return arr
    if not ((raw < 0x20).any() or (raw == _QUOTE).any() or (raw == _BACKSLASH).any()):
        return arr  # three compare passes: ten times faster than a byte-table lookup
    needs = pc.fill_null(pc.match_substring_regex(arr, _NEEDS_ESCAPE_RE), False)
    picked = arr.filter(needs).to_pylist()
    escaped = pa.array([orjson.dumps(v).decode()[1:-1] for v in picked], pa.string())
    return pc.replace_with_mask(arr, needs, escaped)


def _encode_python(arr: pa.Array) -> pa.Array:
    """Rare Arrow types (binary, maps, durations...): encode value by value."""
    out: list[str | None] = []
    for value in arr.to_pylist():
        if value is None:
            out.append(None)
        else:
            out.append(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode())
    return pa.array(out, pa.string())
