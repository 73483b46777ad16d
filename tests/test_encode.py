"""Array-at-a-time JSON encoding must equal what a JSON library would write."""

from __future__ import annotations

import concurrent.futures
import datetime
import math
import shutil
import sysconfig
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkd import encode
from bulkd.encode import (
    EncodedRows,
    arrow_ndjson,
    encode_ndjson,
    native_ndjson,
    to_ndjson,
)


def _texts(encoded: EncodedRows) -> list[str]:
    """One JSON text per record (JSON escapes every newline inside a value, so lines are records)."""
    return bytes(encoded.slice_bytes(0, encoded.count)).decode().split("\n")[:-1]


ENCODERS = [
    pytest.param(arrow_ndjson, id="arrow"),
    pytest.param(
        native_ndjson,
        id="native",
        marks=pytest.mark.skipif(not encode.NATIVE, reason="bulkd._jsonl was not built (no C compiler)"),
    ),
]
Encoder = Callable[[pa.StructArray], EncodedRows]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_records_encode_as_json_without_nulls(encoder: Encoder) -> None:
    records = pa.array(
        [
            {"a": 'q"uo\\te\n\x01', "n": 1.5, "i": 3, "b": True, "l": ["x", "y"], "o": {"k": "v"}},
            {"a": None, "n": None, "i": None, "b": False, "l": [], "o": None},
            {"a": "é😀", "n": 1e20, "i": -(2**62), "b": None, "l": None, "o": {"k": None}},
        ]
    )
    texts = _texts(encoder(records))
    assert [orjson.loads(t) for t in texts] == [
        {"a": 'q"uo\\te\n\x01', "n": 1.5, "i": 3, "b": True, "l": ["x", "y"], "o": {"k": "v"}},
        {"b": False, "l": []},
        {"a": "é😀", "n": 1e20, "i": -(2**62), "o": {}},
    ]
    assert all("null" not in t for t in texts)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_lists_of_structs_and_sliced_input(encoder: Encoder) -> None:
    records = pa.array(
        [{"p": [{"q": 1}, {"q": 2}]}, {"p": [{"q": None}]}, {"p": [{"q": 3}]}],
    ).slice(1)
    assert _texts(encoder(records)) == ['{"p":[{}]}', '{"p":[{"q":3}]}']


@pytest.mark.parametrize("encoder", ENCODERS)
def test_non_finite_floats_are_null_not_invalid_json(encoder: Encoder) -> None:
    texts = _texts(encoder(pa.array([{"x": float("nan")}, {"x": float("inf")}])))
    assert [orjson.loads(t) for t in texts] == [{"x": None}, {"x": None}]


def test_to_ndjson_offsets_slice_records() -> None:
    rows = pa.array(['{"a":1}', '{"a":22}', '{"a":333}']).slice(1)
    encoded = to_ndjson(rows)
    assert encoded.count == 2
    assert bytes(encoded.slice_bytes(0, 2)) == b'{"a":22}\n{"a":333}\n'
    assert bytes(encoded.slice_bytes(1, 2)) == b'{"a":333}\n'
    assert encoded.nbytes == len(b'{"a":22}\n{"a":333}\n')


@pytest.mark.parametrize(
    "rows",
    [
        [{"a": 1}, {"a": 22}, {"a": 333}],
        [{"a": None, "b": "x"}, {"a": 2, "b": None}, {"a": None, "b": None}],
        [{"o": {"p": None}, "q": [1, 2]}, {"o": {"p": "y\n"}, "q": None}],
        [{}, {}],
    ],
)
def test_encode_ndjson_is_the_records_with_newlines(rows: list[dict[str, object]]) -> None:
    records = pa.array(rows).slice(1) if len(rows) > 2 else pa.array(rows)
    direct = encode_ndjson(records)
    joined = to_ndjson(pa.array(_texts(arrow_ndjson(records)), pa.string()))
    assert bytes(direct.slice_bytes(0, direct.count)) == bytes(joined.slice_bytes(0, joined.count))
    assert list(direct.offsets) == list(joined.offsets)


# The C writer (bulkd._jsonl) against the Arrow-kernel path: the same bytes, always.

needs_native = pytest.mark.skipif(
    not encode.NATIVE,
    reason="bulkd._jsonl was not built (no C compiler at install): the Arrow path is the only encoder",
)


def test_native_writer_is_built_where_a_compiler_is() -> None:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine, so none was built at install")
    assert encode.NATIVE, "a C compiler is here, yet the install did not build bulkd._jsonl"


def _same_bytes(records: pa.StructArray, keep: np.ndarray | None = None) -> EncodedRows:
    native = native_ndjson(records, keep)
    arrow = arrow_ndjson(records if keep is None else records.filter(pa.array(keep)))
    assert bytes(native.slice_bytes(0, native.count)) == bytes(arrow.slice_bytes(0, arrow.count))
    assert native.count == arrow.count
    assert list(native.offsets) == list(arrow.offsets)
    return native


_TEXT = st.text(
    alphabet=st.one_of(st.characters(max_codepoint=0x7F), st.sampled_from("é😀\u2028\x7f")), max_size=40
)
_ROW = st.fixed_dictionaries(
    {
        "s": st.none() | _TEXT,
        "i8": st.none() | st.integers(-128, 127),
        "i64": st.none() | st.integers(-(2**63), 2**63 - 1),
        "u64": st.none() | st.integers(0, 2**64 - 1),
        "b": st.none() | st.booleans(),
        "f": st.none() | st.floats(allow_nan=True, allow_infinity=True),
        "o": st.none() | st.fixed_dictionaries({"k": st.none() | _TEXT, "n": st.none() | st.integers(0, 9)}),
        "l": st.none() | st.lists(st.none() | _TEXT, max_size=3),
        "d": st.none() | st.dates(),
        # purchase lines: a list of objects with numbers, nested objects and absent members
        "ls": st.none()
        | st.lists(
            st.none()
            | st.fixed_dictionaries(
                {
                    "p": st.none() | st.floats(allow_nan=True, allow_infinity=True),
                    "q": st.none() | st.integers(-5, 5),
                    "r": st.none() | st.fixed_dictionaries({"id": st.none() | _TEXT}),
                    "t": st.none() | st.lists(st.none() | st.booleans(), max_size=2),
                }
            ),
            max_size=3,
        ),
    }
)
_TYPE = pa.struct(
    [
        ("s", pa.string()),
        ("i8", pa.int8()),
        ("i64", pa.int64()),
        ("u64", pa.uint64()),
        ("b", pa.bool_()),
        ("f", pa.float64()),
        ("o", pa.struct([("k", pa.string()), ("n", pa.int32())])),
        ("l", pa.list_(pa.string())),
        ("d", pa.date32()),
        (
            "ls",
            pa.list_(
                pa.struct(
                    [
                        ("p", pa.float64()),
                        ("q", pa.int64()),
                        ("r", pa.struct([("id", pa.string())])),
                        ("t", pa.large_list(pa.bool_())),
                    ]
                )
            ),
        ),
    ]
)


def _with_members(arr: pa.Array, member: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``arr`` with ``member`` applied to every member that is not a struct, at any depth."""
    if pa.types.is_struct(arr.type):
        children = [_with_members(arr.field(i), member) for i in range(arr.type.num_fields)]
        mask = arr.is_null() if arr.null_count else None
        return pa.StructArray.from_arrays(children, names=[f.name for f in arr.type], mask=mask)
    return member(arr)


def _dictionary_encoded(arr: pa.Array) -> pa.Array:
    """``arr`` with its string columns (at any depth in structs) dictionary-encoded."""
    # int32 indices, nulls in the indices only
    return _with_members(arr, lambda a: pc.dictionary_encode(a) if pa.types.is_string(a.type) else a)


@needs_native
@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_ROW, min_size=1, max_size=30), data=st.data())
def test_native_writer_matches_the_arrow_path(rows: list[dict[str, object]], data: st.DataObject) -> None:
    records = pa.array(rows, _TYPE)
    if data.draw(st.booleans()):
        records = _dictionary_encoded(records)
    start = data.draw(st.integers(0, len(rows) - 1))
    records = records.slice(start, data.draw(st.integers(0, len(rows) - start)))
    keep = data.draw(st.none() | st.lists(st.booleans(), min_size=len(records), max_size=len(records)))
    mask = None if keep is None else np.array(keep, dtype=np.bool_)
    encoded = _same_bytes(records, mask)
    written = [r for r, k in zip(records.to_pylist(), keep or [True] * len(records), strict=True) if k]
    lines = bytes(encoded.slice_bytes(0, encoded.count)).splitlines()
    assert [orjson.loads(line) for line in lines] == [_as_json(row) for row in written]


def _as_json(value: object) -> object:
    """What a record reads as: absent members dropped, non-finite floats null, dates in ISO form."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


@needs_native
def test_native_writer_escapes_as_orjson_does() -> None:
    every = "".join(chr(c) for c in range(0x80)) + "é😀\u2028"
    values = [every, "", "plain", '"', "\\", "x" * 100 + "\n", "\x1f" * 9]
    records = pa.StructArray.from_arrays([pa.array(values)], names=["v"])
    encoded = _same_bytes(records)
    expected = b"".join(b'{"v":' + orjson.dumps(v) + b"}\n" for v in values)
    assert bytes(encoded.slice_bytes(0, encoded.count)) == expected


@needs_native
def test_native_writer_reads_values_that_end_their_buffer() -> None:
    # Short values are copied as fixed-size moves when the buffer has room after them; a value at
    # the very end of a buffer with no spare bytes must be copied exactly.
    data = pa.py_buffer(b"abcdefghij")
    offsets = pa.py_buffer(np.array([0, 3, 10], dtype=np.int32).tobytes())
    values = pa.StringArray.from_buffers(2, offsets, data)
    records = pa.StructArray.from_arrays([values, pa.array([1, 2])], names=["v", "n"])
    encoded = _same_bytes(records)
    assert bytes(encoded.slice_bytes(0, 2)) == b'{"v":"abc","n":1}\n{"v":"defghij","n":2}\n'


@needs_native
def test_native_outputs_stay_intact_while_buffers_are_recycled() -> None:
    # Freed output buffers are reused; text still referenced must never be written over.
    first = pa.array([{"a": "one", "b": i} for i in range(1000)])
    second = pa.array([{"a": "two", "b": i} for i in range(1000)])
    kept = native_ndjson(first)
    before = bytes(kept.slice_bytes(0, kept.count))
    for _ in range(10):
        native_ndjson(second)  # each result is dropped at once, so its buffer goes back to the pool
    assert bytes(kept.slice_bytes(0, kept.count)) == before
    assert native_ndjson(first).slice_bytes(0, 1000).tobytes() == before


@needs_native
def test_native_writer_runs_on_many_threads_at_once() -> None:
    records = pa.array([{"a": f"row {i}", "o": {"x": i % 3 == 0}} for i in range(20_000)])
    expected = bytes(arrow_ndjson(records).slice_bytes(0, len(records)))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: native_ndjson(records), range(16)))
    assert all(bytes(r.slice_bytes(0, r.count)) == expected for r in results)


@needs_native
def test_native_writer_skips_rows_the_mask_drops() -> None:
    records = pa.array([{"a": i} for i in range(5)])
    none = native_ndjson(records, np.zeros(5, dtype=np.bool_))
    assert none.count == 0
    assert none.nbytes == 0
    some = native_ndjson(records, np.array([True, False, True, False, False]))
    assert bytes(some.slice_bytes(0, some.count)) == b'{"a":0}\n{"a":2}\n'


@needs_native
def test_native_writer_refuses_a_top_level_with_nulls() -> None:
    with pytest.raises(ValueError, match="top level"):
        native_ndjson(pa.array([{"a": 1}, None]))


def test_without_the_extension_the_mask_filters_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    records = pa.array([{"a": i, "s": "x"} for i in range(6)])
    keep = np.array([True, False, True, True, False, True])
    monkeypatch.setattr(encode, "NATIVE", False)
    fallback = encode.encode_ndjson(records, keep)
    assert bytes(fallback.slice_bytes(0, fallback.count)) == b"".join(
        b'{"a":%d,"s":"x"}\n' % i for i in (0, 2, 3, 5)
    )


# Dictionary-encoded columns (pandas categoricals, Arrow dictionaries): the bytes of the decoded
# values, whichever encoder writes them.

_NEEDS_ESCAPES = ["", 'q"uo\\te', "\x01\n\t\x1f", "é😀\u2028", "plain", "x" * 40]


def _decoded(arr: pa.Array) -> pa.Array:
    """``arr`` with every dictionary (at any depth in structs) replaced by its values."""
    return _with_members(arr, lambda a: a.dictionary.take(a.indices) if pa.types.is_dictionary(a.type) else a)


def _encoded_bytes(encoder: Encoder, records: pa.StructArray, keep: np.ndarray | None = None) -> bytes:
    if keep is None:
        encoded = encoder(records)
    elif encoder is native_ndjson:
        encoded = native_ndjson(records, keep)
    else:
        encoded = encoder(records.filter(pa.array(keep)))
    return bytes(encoded.slice_bytes(0, encoded.count))


_INT32 = pa.int32()


def _dictionary(indices: list[int | None], values: pa.Array, index_type: pa.DataType = _INT32) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(indices, index_type), values)


def _dictionary_records() -> pa.StructArray:
    """Dictionary members at the top and inside a struct, with index nulls, sliced at both levels."""
    # The dictionary itself is sliced too: its first value is never one of the column's.
    values = pa.array(["unused", *_NEEDS_ESCAPES]).slice(1)
    n = 12
    top = _dictionary([None if i % 5 == 3 else i % len(_NEEDS_ESCAPES) for i in range(n)], values)
    inner = _dictionary([None if i % 4 == 1 else (i * 7) % len(_NEEDS_ESCAPES) for i in range(n)], values)
    o = pa.StructArray.from_arrays(
        [inner, pa.array(range(n))], names=["k", "n"], mask=pa.array([i % 6 == 5 for i in range(n)])
    )
    records = pa.StructArray.from_arrays([pa.array(range(n)), top, o], names=["i", "d", "o"])
    return records.slice(2, 9)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_dictionary_columns_encode_as_their_decoded_strings(encoder: Encoder) -> None:
    records = _dictionary_records()
    assert records.offset == 2
    assert records.field(1).offset == 2
    written = _encoded_bytes(encoder, records)
    assert written == _encoded_bytes(encoder, _decoded(records))
    expected = [_as_json(row) for row in records.to_pylist()]
    assert [orjson.loads(line) for line in written.splitlines()] == expected
    assert written == b"".join(orjson.dumps(row) + b"\n" for row in expected)  # orjson's escapes


@pytest.mark.parametrize("encoder", ENCODERS)
def test_dictionary_columns_respect_the_keep_mask(encoder: Encoder) -> None:
    records = _dictionary_records()
    keep = np.array([i % 3 != 1 for i in range(len(records))])
    written = _encoded_bytes(encoder, records, keep)
    assert written == _encoded_bytes(encoder, _decoded(records), keep)
    assert written.count(b"\n") == int(keep.sum())


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize(
    "column",
    [
        pytest.param(_dictionary([0, None, 2, 1, 2], pa.array(["a", 'b"', "\n"]), pa.int8()), id="int8"),
        pytest.param(_dictionary([2, 1, None, 0, 0], pa.array(["a", "", "é\\"]), pa.int64()), id="int64"),
        pytest.param(_dictionary([0, 1, None, 2, 1], pa.array(["a", None, "c"])), id="null-value"),
        # Nulls in the values only: the column's own validity says every row is present.
        pytest.param(_dictionary([2, 1, 0, 1, 2], pa.array(["a", None, "c"])), id="null-value-only"),
        pytest.param(_dictionary([1, 0, 1, None, 0], pa.array(["x", "yy"], pa.large_string())), id="large"),
        pytest.param(_dictionary([1, 0, None, 1, 0], pa.array([7, None])), id="int-values"),
    ],
)
def test_other_dictionaries_encode_as_their_decoded_values(encoder: Encoder, column: pa.Array) -> None:
    o = pa.StructArray.from_arrays([column], names=["v"])
    records = pa.StructArray.from_arrays([column, o, pa.array(range(5))], names=["v", "o", "n"]).slice(1)
    written = _encoded_bytes(encoder, records)
    assert written == _encoded_bytes(encoder, _decoded(records))
    expected = [_as_json(row) for row in records.to_pylist()]
    assert [orjson.loads(line) for line in written.splitlines()] == expected


@needs_native
def test_a_sliced_list_column_hands_the_writer_only_the_items_it_refers_to() -> None:
    """A unit is a slice of a larger array; its list items alone are prepared (as JSON text for
    numbers), so encoding a unit does not cost in proportion to the array it was cut from."""
    records = pa.array([{"l": [float(i), float(i) / 2]} for i in range(1000)])
    unit = records.slice(400, 3)
    _kind, _validity, _offset, (members,) = encode._node(unit)
    key, (kind, _v, offset, _offsets, child, child_length, base) = members
    assert (key, kind, offset) == (b'"l":', 5, 400)
    assert (child_length, base) == (6, 800)
    assert child[0] == 2  # the numbers as JSON text, made for these six items only
    assert child[4].size == len("400200401200.5402201")
    written = native_ndjson(unit)
    assert bytes(written.slice_bytes(0, 3)) == b'{"l":[400,200]}\n{"l":[401,200.5]}\n{"l":[402,201]}\n'


@needs_native
def test_native_writer_refuses_list_offsets_past_the_child() -> None:
    from bulkd import _jsonl

    offsets = np.array([0, 2, 9], dtype=np.int32).tobytes()
    child = (4, None, 0, np.arange(3, dtype=np.int64).tobytes())
    spec = (0, None, 0, ((b'"l":', (5, None, 0, offsets, child, 3, 0)),))
    with pytest.raises(ValueError, match="past the child"):
        _jsonl.encode(spec, 2, None)


def test_lines_of_large_strings_are_the_lines_of_strings() -> None:
    from bulkd.encode import _lines

    lines = pa.array(["a\n", "bc\n", "\n", 'd"\n']).slice(1)
    plain, large = _lines(lines), _lines(lines.cast(pa.large_string()))
    assert bytes(large.data) == bytes(plain.data) == b'bc\n\nd"\n'
    assert large.offsets.tolist() == plain.offsets.tolist() == [0, 3, 4, 7]
