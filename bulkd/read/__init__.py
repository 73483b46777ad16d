"""The reader stage: stream an input file into :class:`~bulkd.model.SourceBatch` values.

Why it looks like this:

* **Bounded memory.** Every format is read in blocks (CSV through ``pyarrow.csv.open_csv``, Parquet
  through ``ParquetFile.iter_batches``, NDJSON in large byte blocks split with numpy), so a file of
  any size costs a few blocks of memory.
* **Python only on the rare path.** Good rows never pass through per-row Python: the checks (cell
  size, NUL bytes, line breaks for line numbers, UTF-8) are numpy/Arrow passes over whole column
  buffers. Only rows that fail a check are looked at one by one.
* **No type inference, ever.** CSV cells are read as ``binary`` and cast to ``string``, so a late odd
  value can neither crash the stream nor retype a column; typing belongs to the validator.
* **A bad row is a value, a bad file is an exception.** Rows become :class:`~bulkd.model.Reject`
  (never with cell values); structural faults raise :class:`~bulkd.errors.InputError`, before the
  first batch wherever the fault can be known by then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from bulkd.errors import InputError
from bulkd.read._base import EmptySource, ReadOptions, Source, SourceFormat
from bulkd.read._csv import CsvSource
from bulkd.read._ndjson import NdjsonSource
from bulkd.read._parquet import ParquetSource
from bulkd.read._stream import Stream, sniff_compression

__all__ = ["ReadOptions", "Source", "SourceFormat", "open_source"]

_EXTENSIONS: Final = {
    ".csv": SourceFormat.CSV,
    ".tsv": SourceFormat.TSV,
    ".tab": SourceFormat.TSV,
    ".parquet": SourceFormat.PARQUET,
    ".pq": SourceFormat.PARQUET,
    ".ndjson": SourceFormat.NDJSON,
    ".jsonl": SourceFormat.NDJSON,
    ".json": SourceFormat.NDJSON,
}
_COMPRESSION_EXTENSIONS: Final = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def open_source(path: Path, options: ReadOptions = ReadOptions()) -> Source:  # noqa: B008 - frozen
    """Open ``path`` for reading; raises :class:`InputError` if the whole file must be refused."""
    path = Path(path)
    _check_options(options)
    fmt, ext_compression = _format_of(path, options)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise InputError(str(path), f"cannot be opened ({e.strerror or e})") from e
    if not head:
        return EmptySource(path, fmt)
    compression = sniff_compression(head)
    if ext_compression is not None and compression != ext_compression:
        raise InputError(
            str(path), f"the name says {ext_compression} but the content is not {ext_compression}"
        )
    if fmt is SourceFormat.PARQUET:
        if compression is not None:
            raise InputError(str(path), "compressed Parquet is not supported: Parquet compresses itself")
        return ParquetSource(path, options)
    stream = Stream(path, compression, options)
    try:
        if fmt is SourceFormat.NDJSON:
            return NdjsonSource(path, stream, options)
        return CsvSource(path, fmt, stream, options)
    except BaseException:
        stream.close()
        raise


def _check_options(options: ReadOptions) -> None:
    """Reject option values that would make parsing ambiguous (a programming error, not bad input)."""
    for name in ("delimiter", "quote_char"):
        value = getattr(options, name)
        if value is not None and (len(value) != 1 or not value.isascii() or value in "\r\n"):
            raise ValueError(f"ReadOptions.{name} must be one ASCII character other than CR/LF")
    if options.batch_rows < 1 or options.block_size < 1:
        raise ValueError("ReadOptions.batch_rows and block_size must be positive")


def _format_of(path: Path, options: ReadOptions) -> tuple[SourceFormat, str | None]:
    """The format (given, or from the extension) and the compression the extension promises."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = _COMPRESSION_EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if compression is not None:
        suffixes.pop()
    if options.format is not None:
        return options.format, compression
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(
            str(path), "unknown file type; name it .csv, .tsv, .parquet or .ndjson, or set format"
        )
    return fmt, compression
