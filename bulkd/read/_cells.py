"""Vectorised per-cell checks shared by the CSV and NDJSON readers."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from bulkd.model import Reject, RejectRule
from bulkd.read._base import ReadOptions

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class CellChecks:
    """Vectorised checks over one parsed batch of binary columns.

    Each column costs a few numpy passes over its offsets and one over its bytes (to spot control
    bytes); only when such a byte or an over-long cell shows up are rows looked at individually.
    ``lines_mode`` is the NDJSON flavour: a cell is a whole line, so its cap is the line cap and
    line breaks need no counting.
    """

    def __init__(
        self, raw: Any, names: tuple[str, ...], options: ReadOptions, lines_mode: bool = False
    ) -> None:
        n = raw.num_rows
        self._names, self._raw, self._lines_mode = names, raw, lines_mode
        self._limit = options.max_line_bytes if lines_mode else options.max_field_bytes
        self.breaks = np.zeros(n, dtype=np.int64)
        self._bad: dict[int, tuple[str | None, RejectRule, str]] = {}
        self._strings: list[Any] = []
        row_bytes = np.zeros(n, dtype=np.int64)
        for name, column in zip(names, raw.columns, strict=True):
            row_bytes += self._check_column(name, column)
        if not lines_mode:
            for row in np.flatnonzero(row_bytes > options.max_line_bytes).tolist():
                msg = f"row is {int(row_bytes[row])} bytes, over the {options.max_line_bytes}-byte limit"
                self._bad.setdefault(row, (None, RejectRule.LINE_TOO_LARGE, msg))
        self.keep: Bools = row_bytes > 0  # a row of empty cells is a blank line: not a row at all
        if self._bad:
            self.keep[list(self._bad)] = False

    def _check_column(self, name: str, column: Any) -> Ints:
        n = len(column)
        offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=n + 1, offset=column.offset * 4)
        lengths = np.diff(offsets).astype(np.int64)
        values_buffer = column.buffers()[2]
        if values_buffer is not None and offsets[-1] > offsets[0]:
            values = np.frombuffer(values_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
            if values.min() <= (0 if self._lines_mode else 13):
                self._check_controls(name, values, offsets)
        if lengths.size and lengths.max() > self._limit:
            what, rule = (
                ("line", RejectRule.LINE_TOO_LARGE)
                if self._lines_mode
                else ("cell", RejectRule.FIELD_TOO_LARGE)
            )
            for row in np.flatnonzero(lengths > self._limit).tolist():
                msg = f"{what} is {int(lengths[row])} bytes, over the {self._limit}-byte limit"
                self._bad.setdefault(row, (None if self._lines_mode else name, rule, msg))
        try:
            self._strings.append(column.cast(pa.string()))
        except pa.ArrowInvalid:
            self._strings.append(None)
            for row, cell in enumerate(column.to_pylist()):
                try:
                    cell.decode("utf-8")
                except UnicodeDecodeError:
                    self._bad.setdefault(
                        row, self._field(name, RejectRule.INVALID_UTF8, "is not valid UTF-8")
                    )
        return lengths

    def _field(self, name: str, rule: RejectRule, what: str) -> tuple[str | None, RejectRule, str]:
        """NDJSON rejects name no field (the line is the unit); CSV rejects name the column."""
        if self._lines_mode:
            return None, rule, f"line {what}"
        return name, rule, f"cell {what}"

    def _check_controls(self, name: str, values: npt.NDArray[np.uint8], offsets: Any) -> None:
        """Count line breaks per row (for line numbers) and find NUL bytes."""

        def rows_of(positions: Ints) -> Ints:
            found: Ints = np.searchsorted(offsets, positions + offsets[0], side="right") - 1
            return found

        n = len(offsets) - 1
        if not self._lines_mode:
            lf, cr = np.flatnonzero(values == 10), np.flatnonzero(values == 13)
            crlf = cr[cr + 1 < values.size]
            crlf = crlf[values[crlf + 1] == 10]
            crlf = crlf[rows_of(crlf) == rows_of(crlf + 1)]
            for positions, sign in ((lf, 1), (cr, 1), (crlf, -1)):
                if positions.size:
                    self.breaks += sign * np.bincount(rows_of(positions), minlength=n)
        for row in np.unique(rows_of(np.flatnonzero(values == 0))).tolist():
            self._bad.setdefault(row, self._field(name, RejectRule.NUL_BYTE, "contains a NUL byte"))

    def rejects(self, input_name: str, lines: Ints) -> list[Reject]:
        return [
            Reject(input_name, int(lines[row]), field, rule, message)
            for row, (field, rule, message) in sorted(self._bad.items())
        ]

    def good_data(self) -> Any:
        schema = pa.schema([(name, pa.string()) for name in self._names])
        if self.keep.all():
            return pa.RecordBatch.from_arrays(self._strings, schema=schema)
        kept = self._raw.filter(pa.array(self.keep))
        return pa.RecordBatch.from_arrays([c.cast(pa.string()) for c in kept.columns], schema=schema)
