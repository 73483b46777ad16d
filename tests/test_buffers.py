"""The zero-copy views must read exactly what Arrow's own accessors report, slices included."""

from __future__ import annotations

import pyarrow as pa
import pytest

from bulkd.buffers import value_bytes, value_offsets

_WORDS = ["ab", None, "", "cdef", "g"]


@pytest.mark.parametrize(
    "arr",
    [
        pa.array(_WORDS, pa.string()),
        pa.array(_WORDS, pa.large_string()),
        pa.array([w.encode() if w is not None else None for w in _WORDS], pa.binary()),
        pa.array([[1, 2], None, [], [3], [4, 5, 6]], pa.list_(pa.int64())),
        pa.array([[1, 2], None, [], [3], [4, 5, 6]], pa.large_list(pa.int64())),
    ],
    ids=["string", "large_string", "binary", "list", "large_list"],
)
@pytest.mark.parametrize("start", [0, 1, 3])
def test_offsets_are_arrows_own(arr: pa.Array, start: int) -> None:
    part = arr.slice(start)
    offsets = value_offsets(part).tolist()
    assert len(offsets) == len(part) + 1
    if isinstance(part, (pa.ListArray, pa.LargeListArray)):
        assert offsets == part.offsets.to_pylist()
        return
    data = part.buffers()[2].to_pybytes()
    for i, value in enumerate(part.to_pylist()):
        spelled = value if isinstance(value, bytes) else (value or "").encode()
        assert data[offsets[i] : offsets[i + 1]] == spelled


def test_bytes_run_from_the_first_value_to_the_last_null_slots_included() -> None:
    words = pa.array(["ab", "xyz", "c", "de"])
    parent = pa.StructArray.from_arrays([words], names=["w"], mask=pa.array([False, True, False, False]))
    pushed = parent.flatten()[0]  # slot 1 is null but keeps "xyz"
    assert bytes(value_bytes(pushed.slice(1, 2))) == b"xyzc"
    assert bytes(value_bytes(pushed.slice(2))) == b"cde"


def test_empty_arrays_have_one_offset_and_no_bytes() -> None:
    empty = pa.array([], pa.string())
    assert value_offsets(empty).tolist() == [0]
    assert value_bytes(empty).size == 0
    assert value_bytes(pa.array(["", ""])).size == 0
