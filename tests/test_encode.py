"""Array-at-a-time JSON encoding must equal what a JSON library would write."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from bulkd.encode import encode_ndjson, encode_records, to_ndjson


def test_records_encode_as_json_without_nulls() -> None:
    records = pa.array(
        [
            {"a": 'q"uo\\te\n\x01', "n": 1.5, "i": 3, "b": True, "l": ["x", "y"], "o": {"k": "v"}},
            {"a": None, "n": None, "i": None, "b": False, "l": [], "o": None},
            {"a": "é😀", "n": 1e20, "i": -(2**62), "b": None, "l": None, "o": {"k": None}},
        ]
    )
    texts = encode_records(records).to_pylist()
    assert [orjson.loads(t) for t in texts] == [
        {"a": 'q"uo\\te\n\x01', "n": 1.5, "i": 3, "b": True, "l": ["x", "y"], "o": {"k": "v"}},
        {"b": False, "l": []},
        {"a": "é😀", "n": 1e20, "i": -(2**62), "o": {}},
    ]
    assert all("null" not in t for t in texts)


def test_lists_of_structs_and_sliced_input() -> None:
    records = pa.array(
        [{"p": [{"q": 1}, {"q": 2}]}, {"p": [{"q": None}]}, {"p": [{"q": 3}]}],
    ).slice(1)
    assert encode_records(records).to_pylist() == ['{"p":[{}]}', '{"p":[{"q":3}]}']


def test_non_finite_floats_are_null_not_invalid_json() -> None:
    texts = encode_records(pa.array([{"x": float("nan")}, {"x": float("inf")}])).to_pylist()
    assert [orjson.loads(t) for t in texts] == [{"x": None}, {"x": None}]


def test_to_ndjson_offsets_slice_records() -> None:
    rows = encode_records(pa.array([{"a": 1}, {"a": 22}, {"a": 333}]).slice(1))
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
    joined = to_ndjson(encode_records(records))
    assert bytes(direct.slice_bytes(0, direct.count)) == bytes(joined.slice_bytes(0, joined.count))
    assert list(direct.offsets) == list(joined.offsets)
