"""Vectorised per-cell checks shared by the CSV and NDJSON readers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from bulkd.buffers import value_bytes, value_offsets
from bulkd.model import Reject, RejectRule
from bulkd.read._base import ReadOptions

try:
    from bulkd import _match
except ImportError:  # built without a C compiler: numpy takes the census
    _match = None  # type: ignore[assignment]

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class _Census:
    """What one pass over a binary column's cells tells the checks."""

    high: bool
    """Some byte is 0x80 or more: the column needs UTF-8 validation."""
    low: bool
    """Some byte is under the control threshold: line breaks to count, or NUL."""
    longest: int
    total: int


def _census(column: Any, below: int, empty: npt.NDArray[np.uint8]) -> _Census:
    """Take a column's census, and clear ``empty`` for each row whose cell holds bytes.

    In C when built (``_match.scan``: one pass, without the GIL); numpy otherwise.
    """
    n = len(column)
    _validity, offsets_buffer, data = column.buffers()
    if _match is not None and n:
        high, low, longest, total = _match.scan(offsets_buffer, data or b"", column.offset, n, below, empty)
        return _Census(high, low, longest, total)
    sizes = np.diff(value_offsets(column))
    empty &= sizes == 0
    values = value_bytes(column)
    if not values.size:
        return _Census(False, False, int(sizes.max(initial=0)), 0)
    return _Census(bool(values.max() >= 0x80), bool(values.min() < below), int(sizes.max()), values.size)


class CellChecks:
    """Vectorised checks over one parsed batch of binary columns.

    Per column the common case costs a min/max pass over its bytes (control bytes? non-ASCII?) and
    one gather over its offsets (rows still possibly blank); cell lengths are only computed when a
    column or the batch is big enough to break a cap, and rows are only visited one by one when a
    check has found something. ``lines_mode`` is the NDJSON flavour: a cell is a whole line, so
    its cap is the line cap and line breaks need no counting.
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
        below = 1 if lines_mode else 14  # NUL; or NUL and the line breaks, which are counted
        empty = np.ones(n, dtype=np.uint8)  # rows whose cells are all empty so far
        censuses = [_census(column, below, empty) for column in raw.columns]
        whole_rows = not lines_mode and sum(c.total for c in censuses) > options.max_line_bytes
        row_bytes = np.zeros(n, dtype=np.int64)
        for name, column, census in zip(names, raw.columns, censuses, strict=True):
            if whole_rows or census.longest > self._limit:
                lengths = np.diff(value_offsets(column)).astype(np.int64)
                self._check_lengths(name, lengths)
                row_bytes += lengths
            self._check_column(name, column, census)
        for row in np.flatnonzero(row_bytes > options.max_line_bytes).tolist():
            msg = f"row is {int(row_bytes[row])} bytes, over the {options.max_line_bytes}-byte limit"
            self._bad.setdefault(row, (None, RejectRule.LINE_TOO_LARGE, msg))
        blank: Ints = np.flatnonzero(empty)
        self.blank = blank
        """Rows whose cells are all empty: a blank line, or (CSV) a row of empty cells."""
        self.keep: Bools = np.ones(n, dtype=np.bool_)
        self.keep[blank] = False  # never data; the CSV reader tells blank lines from empty rows
        if self._bad:
            self.keep[list(self._bad)] = False

    def _check_lengths(self, name: str, lengths: Ints) -> None:
        if not lengths.size or lengths.max() <= self._limit:
            return
        what, rule = (
            ("line", RejectRule.LINE_TOO_LARGE) if self._lines_mode else ("cell", RejectRule.FIELD_TOO_LARGE)
        )
        for row in np.flatnonzero(lengths > self._limit).tolist():
            msg = f"{what} is {int(lengths[row])} bytes, over the {self._limit}-byte limit"
            self._bad.setdefault(row, (None if self._lines_mode else name, rule, msg))

    def _check_column(self, name: str, column: Any, census: _Census) -> None:
        """Control bytes (line breaks, NUL) and UTF-8; pure ASCII needs no UTF-8 validation at all."""
        if census.low:
            self._check_controls(name, value_bytes(column), value_offsets(column))
        if not census.high:
            self._strings.append(column.view(pa.string()))
            return
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
