"""Zero-copy numpy views of an Arrow array's buffers.

Several stages answer questions about a whole string column at once (is every byte ASCII, how
long is each cell, where do a list's items start) faster with one numpy pass over its buffers
than with a kernel call per question. These two views are how they all read the buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["value_bytes", "value_offsets"]


def value_offsets(arr: pa.Array) -> np.ndarray[Any, Any]:
    """The ``len(arr) + 1`` offsets of a string, binary or list array: value ``i`` spans
    ``offsets[i]`` to ``offsets[i + 1]`` (int64 for the large types, int32 otherwise)."""
    kind = arr.type
    wide = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) or pa.types.is_large_list(kind)
    dtype, width = (np.int64, 8) if wide else (np.int32, 4)
    buffer = arr.buffers()[1]
    if buffer is None:  # an empty array may have no offsets at all
        return np.zeros(1, dtype=dtype)
    return np.frombuffer(buffer, dtype=dtype, count=len(arr) + 1, offset=arr.offset * width)


def value_bytes(arr: pa.Array) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The bytes of a string or binary array from its first value's start to its last value's
    end (a null's slot included when it holds bytes)."""
    offsets = value_offsets(arr)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = arr.buffers()[2]
    if data is None or hi == lo:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8, count=hi - lo, offset=lo)
