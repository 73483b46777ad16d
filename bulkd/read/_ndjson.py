"""NDJSON/JSONL: lines split in large blocks; the JSON itself is parsed by the mapping stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bulkd.model import NDJSON_COLUMN, Reject, RejectRule, SourceBatch
from bulkd.read._base import ReadOptions, Source, SourceFormat
from bulkd.read._cells import CellChecks
from bulkd.read._stream import Stream


class NdjsonSource(Source):
    """NDJSON/JSONL split into lines in large blocks; JSON itself is parsed by the mapping stage."""

    def __init__(self, path: Path, stream: Stream, options: ReadOptions) -> None:
        self.path, self.format, self.columns = path, SourceFormat.NDJSON, (NDJSON_COLUMN,)
        self._stream, self._options, self._input = stream, options, str(path)

    def batches(self) -> Iterator[SourceBatch]:
        limit, line, carry, skipping = self._options.max_line_bytes, 1, b"", False
        while True:
            chunk = self._stream.read(max(self._options.block_size, 1 << 16))
            eof = not chunk
            if skipping:  # inside an over-long line already rejected: drop bytes up to its end
                cut = chunk.find(b"\n")
                if cut < 0 and not eof:
                    continue
                chunk, skipping, line = chunk[cut + 1 :] if cut >= 0 else b"", False, line + 1
            buf = carry + chunk
            cut = len(buf) if eof else buf.rfind(b"\n") + 1
            carry = buf[cut:]
            if cut:
                yield from self._block(buf[:cut], line)
                line += buf.count(b"\n", 0, cut) + (0 if buf[cut - 1 : cut] == b"\n" else 1)
            if len(carry) > limit:
                msg = f"line is over the {limit}-byte limit"
                rej = Reject(self._input, line, None, RejectRule.LINE_TOO_LARGE, msg)
                yield SourceBatch(self._empty(), pa.array([], pa.int64()), (rej,), self._stream.bytes_read)
                carry, skipping = b"", True
            if eof:
                return

    def _empty(self) -> Any:
        return pa.RecordBatch.from_arrays([pa.array([], pa.string())], names=[NDJSON_COLUMN])

    def _block(self, data: bytes, first_line: int) -> Iterator[SourceBatch]:
        """Turn a block of whole lines into batches without a Python object per line."""
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
        if not ends.size or ends[-1] != len(data):
            ends = np.append(ends, len(data))
        offsets = np.concatenate(([0], ends)).astype(np.int32)
        raw = pa.Array.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        lines = first_line + np.arange(len(ends), dtype=np.int64)
        batch = pa.RecordBatch.from_arrays([raw], names=[NDJSON_COLUMN])
        checks = CellChecks(batch, self.columns, self._options, lines_mode=True)
        rejects = checks.rejects(self._input, lines)
        keep = checks.keep
        text = pc.utf8_trim(pa.array(raw.filter(pa.array(keep)).cast(pa.string())), " \t\r\n")
        not_blank = pc.greater(pc.binary_length(text), 0)
        text, lines = (
            text.filter(not_blank),
            lines[keep][np.asarray(not_blank.to_numpy(zero_copy_only=False))],
        )
        step = self._options.batch_rows
        for start in range(0, max(len(text), 1), step):
            part = rejects if start == 0 else []
            data_part = pa.RecordBatch.from_arrays([text[start : start + step]], names=[NDJSON_COLUMN])
            if data_part.num_rows or part:
                yield SourceBatch(
                    data_part, pa.array(lines[start : start + step]), tuple(part), self._stream.bytes_read
                )

    def close(self) -> None:
        self._stream.close()
