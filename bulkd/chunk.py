"""Chunking: NDJSON records become gzip files of bounded size, written crash-safely.

Chunk bytes depend only on the records and the settings: the gzip header carries no name and a
zero mtime, and the compression level is fixed, so converting the same input twice gives
byte-identical chunks (and the same Content-MD5), which is what makes a re-upload after a crash
harmless. Each chunk is written under a temporary name, fsynced, renamed, and its directory
fsynced before anyone may upload it.

A chunk is one gzip stream made of independently compressed blocks (as pigz does): each batch
of records is deflated on its own and ends on a byte boundary (a sync flush), so batches can be
compressed on several threads and concatenated in order; the trailer's CRC is combined from the
blocks' CRCs. A block's bytes depend only on its records, the level and its place in the file
(:func:`codec_for`), never on the thread.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from isal import isal_zlib
from zlib_ng import zlib_ng

from bulkd.durable import crashpoint, declare_crashpoint, fsync_dir, temp_path_for
from bulkd.encode import EncodedRows
from bulkd.errors import ConfigError, StorageError

__all__ = [
    "Block",
    "ChunkInfo",
    "ChunkLimits",
    "ChunkNaming",
    "ChunkWriter",
    "Codec",
    "codec_for",
    "codec_name",
]

CHUNK_RENAMED = declare_crashpoint("chunk.renamed")
"""A chunk file has its final name but nothing has recorded it yet."""

_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
_RAW_DEFLATE = -15
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""Deflate, no flags, mtime 0, no extra flags, OS unknown: the same bytes on every machine."""
_FINAL_BLOCK = b"\x03\x00"
"""An empty final fixed-Huffman block: ends the deflate stream after the sync-flushed blocks."""


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """When to start a new chunk. Defaults keep chunks far below Lexer's 5 GB file limit and
    small enough that several upload in parallel."""

    max_records: int = 1_000_000
    max_ndjson_bytes: int = 1 << 30
    """Uncompressed NDJSON bytes per chunk (the gzip file is typically 5-10x smaller)."""
    gzip_level: int = 3
    """0-3. Levels 0-2 are ISA-L's (fastest; level 2 is about 1.34x zlib level 6's size on
    customer records). Level 3 mixes two codecs block by block (see :func:`codec_for`): about
    1.23x zlib-6's size, as zlib-ng's own level 3 gives, for ~27 % less CPU. See benchmarks/README."""

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ConfigError("chunk.max_records", "must be at least 1")
        if self.max_ndjson_bytes < 1024:
            raise ConfigError("chunk.max_bytes", "must be at least 1024")
        if not 0 <= self.gzip_level <= 3:
            raise ConfigError("chunk.gzip_level", "must be 0 to 3")


@dataclass(frozen=True, slots=True)
class ChunkNaming:
    """``{dataset_id}_{record_type}_{timestamp}_{part}.ndjson.gz``: only letters, digits, - and _."""

    dataset_id: str
    record_type: str
    timestamp: str
    prefix: str = ""
    """Distinguishes several inputs converted into one directory (``""`` or e.g. ``f0001``)."""

    def __post_init__(self) -> None:
        for key in ("dataset_id", "record_type", "timestamp"):
            if not _SAFE.match(getattr(self, key)):
                raise ConfigError(key, "may hold only letters, digits, '-' and '_'")
        if self.prefix and not _SAFE.match(self.prefix):
            raise ConfigError("prefix", "may hold only letters, digits, '-' and '_'")

    def filename(self, part: int) -> str:
        """The upload filename of chunk ``part`` (1-based)."""
        middle = f"{self.prefix}-{part:05d}" if self.prefix else f"{part:05d}"
        return f"{self.dataset_id}_{self.record_type}_{self.timestamp}_{middle}.ndjson.gz"


def md5_b64(md5_hex: str) -> str:
    """The ``Content-MD5`` header value (base64 of the digest) for a hex MD5."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """A finished chunk: what the uploader and the manifest need to know."""

    index: int
    path: Path
    filename: str
    records: int
    bytes: int
    md5_hex: str
    sha256_hex: str

    @property
    def md5_b64(self) -> str:
        """The ``Content-MD5`` header value."""
        return md5_b64(self.md5_hex)

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "path": str(self.path),
            "filename": self.filename,
            "records": self.records,
            "bytes": self.bytes,
            "md5": self.md5_hex,
            "sha256": self.sha256_hex,
        }


@dataclass(frozen=True, slots=True)
class Codec:
    """One deflate library at one level."""

    library: Literal["ISA-L", "zlib-ng"]
    level: int

    def deflate(self, data: bytes | memoryview) -> bytes:
        """Raw deflate of ``data`` ending in a sync flush: a block that concatenates with others."""
        module = isal_zlib if self.library == "ISA-L" else zlib_ng
        deflater = module.compressobj(self.level, module.DEFLATED, _RAW_DEFLATE)
        return b"".join((deflater.compress(data), deflater.flush(module.Z_SYNC_FLUSH)))

    def __str__(self) -> str:
        return f"{self.library} level {self.level}"


_FAST = Codec("ISA-L", 2)
_DENSE = Codec("zlib-ng", 5)
_DENSE_BLOCKS, _PERIOD = 3, 8
"""Level 3 deflates 3 blocks in every 8 with ``_DENSE`` and the rest with ``_FAST``.

On customer records ISA-L 2 is 1.34x zlib-6's size at ~1.1 GB/s and zlib-ng 5 is 1.05x at
~220 MB/s; 3 in 8 lands on 1.23x for 2.25 ns a byte. zlib-ng's own level 3 gives the same size
for 3.1 ns a byte: it lies above the line between the two, as do zlib-ng 2 and 4 (measured in
benchmarks/README). Which blocks are dense depends only on their place in the file, so the
bytes stay the same on every run and thread count."""


def codec_for(level: int, block: int) -> Codec:
    """The codec of the file's ``block``-th unit (from 0) at ``gzip_level`` ``level``."""
    if level < 3:
        return Codec("ISA-L", level)
    return _DENSE if block * _DENSE_BLOCKS % _PERIOD < _DENSE_BLOCKS else _FAST


def codec_name(level: int) -> str:
    """What a ``gzip_level`` means, in words (for reports)."""
    if level < 3:
        return str(codec_for(level, 0))
    return f"{_DENSE} for {_DENSE_BLOCKS} blocks in {_PERIOD}, {_FAST} for the rest"


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """Records deflated ahead (on a worker thread) for one chunk, with their bounds.

    The text itself is not kept: a unit's NDJSON is ~4 MB against ~0.5 MB deflated, and several
    blocks wait in flight for the writer. Held, they made the writer's pool of output buffers
    miss and each new buffer's pages be faulted in again. A block that a chunk boundary splits
    (one per chunk) is inflated instead.
    """

    deflated: bytes
    crc: int
    codec: Codec
    """How it was deflated; pieces of it split off at a chunk boundary are deflated the same way."""
    offsets: np.ndarray
    """``count + 1`` bounds of the records in the block's text, from 0."""

    @classmethod
    def make(cls, rows: EncodedRows, codec: Codec) -> Block:
        raw = rows.slice_bytes(0, rows.count)
        offsets = rows.offsets[: rows.count + 1] - rows.offsets[0]
        return cls(codec.deflate(raw), zlib_ng.crc32(raw), codec, offsets)

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def rows(self) -> EncodedRows:
        """The records again, inflated from the block."""
        text = zlib_ng.decompressobj(_RAW_DEFLATE).decompress(self.deflated)
        return EncodedRows(data=pa.py_buffer(text), offsets=self.offsets, count=self.count)


class _OpenChunk:
    """One chunk being written: gzip framing, CRC, hashes and the temp file."""

    def __init__(self, final: Path, index: int) -> None:
        self.final = final
        self.index = index
        self.tmp = temp_path_for(final)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.crc = 0
        self.records = 0
        self.raw_bytes = 0
        self.size = 0
        self._emit(_GZIP_HEADER)

    def write(self, deflated: bytes, crc: int, raw_bytes: int, records: int) -> None:
        self._emit(deflated)
        self.crc = zlib_ng.crc32_combine(self.crc, crc, raw_bytes)
        self.records += records
        self.raw_bytes += raw_bytes

    def _emit(self, out: bytes) -> None:
        if not out:
            return
        self.md5.update(out)
        self.sha256.update(out)
        view = memoryview(out)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(out)

    def close(self) -> ChunkInfo:
        trailer = self.crc.to_bytes(4, "little") + (self.raw_bytes & 0xFFFFFFFF).to_bytes(4, "little")
        self._emit(_FINAL_BLOCK + trailer)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, self.final)
        fsync_dir(self.final.parent)
        crashpoint(CHUNK_RENAMED)
        return ChunkInfo(
            index=self.index,
            path=self.final,
            filename=self.final.name,
            records=self.records,
            bytes=self.size,
            md5_hex=self.md5.hexdigest(),
            sha256_hex=self.sha256.hexdigest(),
        )

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


class ChunkWriter:
    """Splits a stream of encoded records into chunks under ``out_dir``.

    Nothing is visible under a final name until that chunk is complete and synced; on any
    ``OSError`` the temp file is removed and :class:`StorageError` raised, since after a failed
    write or fsync the only safe repair is to regenerate the chunk.
    """

    def __init__(self, out_dir: Path, naming: ChunkNaming, limits: ChunkLimits) -> None:
        self.out_dir = out_dir
        self.naming = naming
        self.limits = limits
        self.chunks: list[ChunkInfo] = []
        self._open: _OpenChunk | None = None

    def write(self, block: Block) -> None:
        """Append a block's records, starting new chunks at the record and byte limits.

        A block that fits the open chunk whole is written as it is; one that a chunk boundary
        splits is inflated, and each piece deflated again with the block's codec.
        """
        offsets, count = block.offsets, block.count
        text: EncodedRows | None = None
        start = 0
        try:
            while start < count:
                chunk = self._current()
                stop = self._fit(offsets, start, chunk)
                if stop == start:  # the next record does not fit beside what the chunk holds
                    self._close()
                    continue
                if start == 0 and stop == count:
                    chunk.write(block.deflated, block.crc, block.nbytes, count)
                else:
                    if text is None:  # inflated once, however many pieces the block is cut into
                        text = block.rows()
                    raw = text.slice_bytes(start, stop)
                    chunk.write(block.codec.deflate(raw), zlib_ng.crc32(raw), len(raw), stop - start)
                start = stop
                if (
                    chunk.records >= self.limits.max_records
                    or chunk.raw_bytes >= self.limits.max_ndjson_bytes
                ):
                    self._close()
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot write chunk in {self.out_dir}: {exc.strerror or exc}") from exc

    def _current(self) -> _OpenChunk:
        if self._open is None:
            index = len(self.chunks) + 1
            self._open = _OpenChunk(self.out_dir / self.naming.filename(index), index)
        return self._open

    def _fit(self, offsets: np.ndarray, start: int, chunk: _OpenChunk) -> int:
        """The last record index (exclusive) that fits the open chunk's limits.

        At least one record goes into an empty chunk (a record larger than the byte limit gets a
        chunk of its own); ``start`` is returned when the next record would overflow a chunk that
        already holds records, so the caller closes it first.
        """
        stop = min(len(offsets) - 1, start + self.limits.max_records - chunk.records)
        room = self.limits.max_ndjson_bytes - chunk.raw_bytes
        base = int(offsets[start])
        if int(offsets[stop]) - base > room:
            limit = base + room
            fits = int(offsets[start : stop + 1].searchsorted(limit, side="right")) + start - 1
            stop = max(start + 1, fits) if chunk.records == 0 else fits
        return stop

    def _close(self) -> None:
        if self._open is not None:
            chunk, self._open = self._open, None
            self.chunks.append(chunk.close())

    def finish(self) -> list[ChunkInfo]:
        """Close the last chunk and return every chunk written."""
        try:
            self._close()
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot finish chunk in {self.out_dir}: {exc.strerror or exc}") from exc
        return list(self.chunks)

    def abort(self) -> None:
        """Remove the open temp file and every finished chunk: a refused input leaves no output."""
        if self._open is not None:
            self._open.discard()
            self._open = None
        for info in self.chunks:
            info.path.unlink(missing_ok=True)
        self.chunks.clear()
