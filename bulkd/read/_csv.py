"""CSV/TSV: ``pyarrow.csv.open_csv`` with every column as a string and exact line numbers."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from bulkd.errors import InputError
from bulkd.memory import reader_memory_pool
from bulkd.model import Reject, RejectRule, SourceBatch
from bulkd.read._base import ReadOptions, Source, SourceFormat
from bulkd.read._cells import CellChecks, Ints
from bulkd.read._stream import SNIFF_BYTES, Stream

_AIM_BLOCK = 1 << 20
_AIM_ROWS_WIDE = 64
_BLOCKS_AHEAD = 8
"""Blocks read ahead of the parser (see ``Stream.pace``). With 8, 1 M customer rows convert as fast as
with pyarrow's own 32 (2.00 against 2.02 s wall, four alternated pairs)."""


def line_breaks(text: bytes) -> int:
    """Physical line breaks in ``text``: LF, CR and CRLF each count once, as pyarrow sees them."""
    lf = text.count(b"\n")
    return lf if b"\r" not in text else lf + text.count(b"\r") - text.count(b"\r\n")


class BlankLines:
    """Tells whether a physical line of the file is blank (no bytes between its line breaks).

    pyarrow hands a blank line and a row of empty cells (``,,`` or ``"",""``) over as the same
    all-empty row, so only the raw bytes can tell them apart. Those rows are rare, and only they
    are looked up here: a second :class:`Stream` over the file walks forwards to each asked line.
    A file without such rows costs nothing; one with them costs at most one more pass over its
    bytes (line breaks counted with ``bytes.count``), in one block of memory.
    """

    def __init__(self, stream: Stream, block_size: int) -> None:
        self._origin, self._block_size = stream, block_size
        self._stream: Stream | None = None
        self._buf = b""
        self._base = 0
        """Line breaks before ``_buf``, so its first byte is on line ``_base + 1``."""
        self._count = 0
        self._ends: Ints | None = None

    def is_blank(self, line: int) -> bool:
        """Whether 1-based physical ``line`` is empty; ask for lines in rising order only."""
        while True:
            k = line - 1 - self._base  # line breaks in _buf before the line starts
            assert k >= 0, "lines must be asked for in rising order"
            if k <= self._count:
                start = 0 if k == 0 else int(self._break_ends()[k - 1])
                if start < len(self._buf):
                    return self._buf[start] in b"\r\n"
            if not self._advance():
                return False

    def _advance(self) -> bool:
        if self._stream is None:
            self._stream = self._origin.reopen()
        self._base += self._count
        # Two bytes at least: then a read never ends on a CR whose LF is still to come.
        self._buf = self._stream.read(max(2, self._block_size))
        self._count, self._ends = line_breaks(self._buf), None
        return bool(self._buf)

    def _break_ends(self) -> Ints:
        """Offsets just past each line break in ``_buf``."""
        if self._ends is None:
            a = np.frombuffer(self._buf, dtype=np.uint8)
            ends = np.flatnonzero(a == 10)
            if b"\r" in self._buf:
                cr = np.flatnonzero(a == 13)
                after = np.minimum(cr + 1, a.size - 1)
                alone = cr[(cr + 1 == a.size) | (a[after] != 10)]
                ends = np.sort(np.concatenate((ends, alone)))
            self._ends = ends.astype(np.int64) + 1
        return self._ends

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def scan_record(buf: bytes, delim: int, quote: int, eof: bool) -> tuple[int | None, bool]:
    """Where the first CSV record in ``buf`` ends (after its line break), and if it ends inside quotes.

    ``(None, _)`` means more bytes are needed. Quotes open only at a field start, as in pyarrow.
    """
    i, n, field_start = 0, len(buf), True
    stops = re.compile(b"[" + re.escape(bytes([delim])) + b"\r\n]")
    while i < n:
        if field_start and buf[i] == quote:
            j = i + 1
            while True:
                k = buf.find(bytes([quote]), j)
                if k < 0 or (k + 1 == n and not eof):
                    return (n if eof else None), k < 0
                if k + 1 < n and buf[k + 1] == quote:
                    j = k + 2
                    continue
                i, field_start = k + 1, False
                break
            continue
        m = stops.search(buf, i)
        if m is None:
            break
        c, i = buf[m.start()], m.end()
        if c == delim:
            field_start = True
            continue
        if c == 13 and i == n and not eof:
            return None, False
        return (i + 1 if c == 13 and i < n and buf[i] == 10 else i), False
    return (n if eof else None), False


@dataclass(frozen=True, slots=True)
class _Invalid:
    """A row pyarrow's parser skipped, as reported to ``invalid_row_handler`` (serial mode)."""

    number: int
    """1-based record number, counting the header and blank lines."""
    span: int
    fields: int
    unterminated: bool


class CsvSource(Source):
    """CSV/TSV through ``pyarrow.csv.open_csv``, all columns as strings, line numbers kept exact.

    Blank lines and empty rows, deliberately:

    * A **blank line** (nothing between two line breaks, wherever it is: between rows or trailing
      at the end of the file) is not a row. Python's ``csv`` module and Lexer's converter skip it
      too, so row counts agree with theirs; it still counts for the line numbers after it.
    * A **row whose cells are all empty** (``,,``, ``"",""``, or ``""`` in a one-column file) is a
      row with nothing to upload: it becomes an ``empty_row`` reject, so that every row ends up in
      a record or in the reject file.
    """

    def __init__(self, path: Path, fmt: SourceFormat, stream: Stream, options: ReadOptions) -> None:
        self.path, self.format, self._stream, self._options = path, fmt, stream, options
        self._input = str(path)
        self._delim = options.delimiter or ("\t" if fmt is SourceFormat.TSV else ",")
        self._invalid: list[_Invalid] = []
        self._next_record = 2
        self._reader: Any = None
        self._last: tuple[bytes, int] | None = None
        self._block = options.block_size
        self._blank_lines = BlankLines(stream, options.block_size)
        self.columns, self._next_line, has_rows, row_bytes = self._read_header()
        if has_rows:
            self._reader = self._open_reader(row_bytes)

    def _read_header(self) -> tuple[tuple[str, ...], int, bool, int]:
        """Parse the header ourselves (to force string types); return names, next line, rows?, row size."""
        buf, eof, quote = b"", False, ord(self._options.quote_char)
        while True:
            end, _ = scan_record(buf, ord(self._delim), quote, eof)
            if end is not None or eof:
                break
            if len(buf) > self._options.max_line_bytes:
                raise InputError(self._input, "the header is longer than max_line_bytes", line=1)
            chunk = self._stream.read(max(SNIFF_BYTES, len(buf)))  # doubling: no quadratic rescans
            eof, buf = not chunk, buf + chunk
        self._stream.unread(buf)
        end = len(buf) if end is None else end
        record, rest = buf[:end], buf[end:]
        if not record.strip(b"\r\n"):
            if buf.strip(b"\r\n"):
                raise InputError(self._input, "the first line is blank; it must be the header", line=1)
            return (), 1, False, 0
        names = self._header_names(record.rstrip(b"\r\n"))
        has_rows = not (eof and not rest.strip(b"\r\n"))
        rows = rest[: rest.rfind(b"\n") + 1]
        row_bytes = len(rows) // max(1, rows.count(b"\n")) if rows else 0
        return names, 2 + line_breaks(record.rstrip(b"\r\n")), has_rows, row_bytes

    def _header_names(self, record: bytes) -> tuple[str, ...]:
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(self._input, "the header is not valid UTF-8; set the encoding", line=1) from e
        if "\x00" in text:
            raise InputError(self._input, "the header holds NUL bytes; is it UTF-16 without a BOM?", line=1)
        dialect = {"delimiter": self._delim, "quotechar": self._options.quote_char, "doublequote": True}
        names = tuple(next(csv.reader([text], **dialect)))  # type: ignore[arg-type]
        if len(names) > self._options.max_columns:
            raise InputError(self._input, f"{len(names)} columns, more than max_columns allows", line=1)
        if any(not n.strip() for n in names):
            raise InputError(self._input, "the header has a blank column name", line=1)
        dupes = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) < len(names) else []
        if dupes:
            raise InputError(self._input, f"duplicate column names in the header: {', '.join(dupes)}", line=1)
        return names

    def _open_reader(self, row_bytes: int) -> Any:
        """Serial reader (row numbers in the handler need it), all binary, multi-line values on."""
        o = self._options
        # 1 MiB blocks unless rows are wide (a record must fit in a block, about two at most):
        # pyarrow's reader keeps several blocks in flight, so at 4 MiB it peaks ~140 MB higher
        # (1 M customer rows: 267 MB against 137 MB RSS for open_csv alone), and no faster.
        # The pipeline regroups batches into units of its own size, so output bytes do not
        # depend on this.
        self._block = block = min(o.block_size, max(_AIM_BLOCK, row_bytes * _AIM_ROWS_WIDE))
        self._stream.pace(_BLOCKS_AHEAD)
        try:
            reader = pacsv.open_csv(
                pa.PythonFile(self._stream, mode="r"),
                read_options=pacsv.ReadOptions(use_threads=False, block_size=block),
                parse_options=pacsv.ParseOptions(
                    delimiter=self._delim,
                    quote_char=o.quote_char,
                    newlines_in_values=True,
                    ignore_empty_lines=False,
                    invalid_row_handler=self._on_invalid,
                ),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(self.columns, pa.binary())),
                memory_pool=reader_memory_pool() if o.parse_on_jemalloc else None,
            )
        except pa.ArrowInvalid as e:
            raise self._parse_error(e) from None
        if reader.schema.names != list(self.columns):
            raise InputError(self._input, "the header could not be read consistently", line=1)
        return reader

    def _on_invalid(self, row: Any) -> str:
        text = row.text.encode("utf-8", "surrogateescape")
        _, unterminated = scan_record(text, ord(self._delim), ord(self._options.quote_char), True)
        self._invalid.append(_Invalid(row.number, 1 + line_breaks(text), row.actual_columns, unterminated))
        return "skip"

    def _parse_error(self, e: Exception) -> InputError:
        """Explain a pyarrow parse failure without its text, which may quote cell values.

        Callers raise it ``from None`` so that the original message does not travel along either.
        """
        text = str(e)
        if "straddl" in text:
            cause = f"a record at or after this line is longer than the {self._block}-byte block size"
            return InputError(self._input, cause + " (an unterminated quote?)", line=self._next_line)
        if "Expected" in text and "columns" in text:
            # pyarrow decodes a bad row's text as UTF-8 before calling the handler; if that fails
            # the handler is never called and the row becomes a parse error.
            cause = "a row at or after this line has the wrong number of fields and invalid UTF-8"
            return InputError(self._input, cause + " (set the encoding?)", line=self._next_line)
        return InputError(
            self._input, f"cannot be parsed as CSV ({text.split(':', maxsplit=1)[0]})", line=self._next_line
        )

    def batches(self) -> Iterator[SourceBatch]:
        if self._reader is None:
            return
        held: SourceBatch | None = None
        while True:
            try:
                raw = self._reader.read_next_batch()
                self._stream.taken()  # one batch for each block, even a block of skipped rows
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise self._parse_error(e) from None
            batch = self._finish(raw, final=False)
            if batch is not None:
                if held is not None:
                    yield held
                held = batch
        self._check_unterminated()
        last = self._finish(None, final=True)
        if held is not None:
            yield held
        if last is not None:
            yield last

    def _check_unterminated(self) -> None:
        """At the end: did the last record's last field open a quote that never closed?"""
        if self._last is None or self._invalid:  # skipped rows still queued come after it
            return
        cell, line = self._last
        q = self._options.quote_char.encode()
        opened = q + cell.replace(q, q + q)
        tail = self._stream.tail
        if len(opened) < len(tail):
            hit = tail.endswith(opened) and tail[-len(opened) - 1] in self._delim.encode() + b"\r\n"
        else:
            hit = opened.endswith(tail)
        if hit:
            raise InputError(self._input, "a quoted field is never closed", line=line)

    def _take_invalid(self, rows: int, final: bool) -> list[_Invalid]:
        """The skipped rows that sit among (or right after) the next ``rows`` parsed records."""
        k = 0
        while k < len(self._invalid) and (final or self._invalid[k].number <= self._next_record + rows + k):
            k += 1
        taken, self._invalid = self._invalid[:k], self._invalid[k:]
        return taken

    def _finish(self, raw: Any, final: bool) -> SourceBatch | None:
        """Number the rows, check the cells, and split good rows from rejects."""
        n = 0 if raw is None else raw.num_rows
        invalid = self._take_invalid(n, final)
        if n == 0 and not invalid:
            return None
        checks = CellChecks(raw, self.columns, self._options) if n else None
        spans = np.ones(n + len(invalid), dtype=np.int64)
        at = np.array([r.number - self._next_record for r in invalid], dtype=np.int64)
        good = np.ones(n + len(invalid), dtype=np.bool_)
        good[at] = False
        if checks is not None:
            spans[good] += checks.breaks
        spans[at] = [r.span for r in invalid]
        starts = self._next_line + np.cumsum(spans) - spans
        self._next_line += int(spans.sum())
        self._next_record += n + len(invalid)
        rejects = [self._ragged(r, int(starts[i])) for r, i in zip(invalid, at, strict=True)]
        if checks is None:
            self._last = None
            return self._batch(pa.RecordBatch.from_arrays([], names=[]), starts[:0], rejects)
        lines = starts[good]
        trailing_invalid = bool(at.size) and int(at.max()) > int(np.flatnonzero(good)[-1])
        cell = raw.column(len(self.columns) - 1)[n - 1].as_py()
        self._last = None if trailing_invalid else (bytes(cell), int(lines[-1]))
        rejects += checks.rejects(self._input, lines)
        if checks.blank.size:
            rejects += self._empty_rows(lines[checks.blank].tolist())
        rejects.sort(key=lambda r: r.line)
        return self._batch(checks.good_data(), lines[checks.keep], rejects)

    def _empty_rows(self, lines: list[int]) -> list[Reject]:
        """All-empty rows: blank lines are dropped, rows of empty cells become rejects."""
        message = "every cell is empty"
        return [
            Reject(self._input, line, None, RejectRule.EMPTY_ROW, message)
            for line in lines
            if not self._blank_lines.is_blank(line)
        ]

    def _ragged(self, row: _Invalid, line: int) -> Reject:
        if row.unterminated:
            raise InputError(self._input, "a quoted field is never closed", line=line)
        message = f"row has {row.fields} fields; the header has {len(self.columns)}"
        return Reject(self._input, line, None, RejectRule.RAGGED_ROW, message)

    def _batch(self, data: Any, lines: Ints, rejects: list[Reject]) -> SourceBatch:
        if data.num_columns == 0 and self.columns:
            data = pa.RecordBatch.from_arrays(
                [pa.array([], pa.string())] * len(self.columns), names=list(self.columns)
            )
        return SourceBatch(data, pa.array(lines, pa.int64()), tuple(rejects), self._stream.bytes_read)

    def close(self) -> None:
        self._stream.unpace()  # dropping pyarrow's reader waits for its read in flight
        self._reader = None
        self._blank_lines.close()
        self._stream.close()
