"""The input file as a stream of UTF-8 bytes, whatever its compression and encoding."""

from __future__ import annotations

import codecs
import re
import threading
from pathlib import Path
from typing import Any, Final, cast

import pyarrow as pa
from isal import igzip, isal_zlib

from bulkd.errors import InputError
from bulkd.read._base import ReadOptions

BOMS: Final = (  # UTF-32 before UTF-16: FF FE 00 00 starts with the UTF-16 LE BOM
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_INFLATE_ERROR: Final = cast("type[Exception]", isal_zlib.error)
"""ISA-L's error for corrupt deflate data (its stubs do not say it is an exception class)."""
SNIFF_BYTES: Final = 1 << 16
TAIL_BYTES: Final = 4096
RATIO_FLOOR_BYTES: Final = 16 << 20
"""The expansion ratio is only judged past this much output: tiny files may compress very well."""
PACE_WAIT_SECONDS: Final = 1.0
"""How long a paced read waits for its consumer before it reads anyway (see :meth:`Stream.pace`)."""


def sniff_compression(head: bytes) -> str | None:
    """Compression by magic bytes, so a mis-named compressed file is still read correctly."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if re.match(rb"BZh[1-9](\x31\x41\x59\x26\x53\x59|\x17\x72\x45\x38\x50\x90)", head):
        return "bz2"
    return None


class Stream:
    """The file as UTF-8 bytes: decompressed, transcoded, BOM stripped, bombs and truncation refused.

    It is handed to pyarrow as a Python file object. The Python call per block (megabytes) is cheap,
    and it lets bulkd own the whole byte path: caps, clear errors, a pushback for the header sniff,
    and the stream's last bytes (to tell an unterminated quote from a closed one at the end).
    """

    def __init__(self, path: Path, compression: str | None, options: ReadOptions) -> None:
        self._path = str(path)
        self._options = options
        self._codec = compression
        self._raw = pa.OSFile(str(path), mode="r")
        self._source: Any = self._raw
        if compression == "gzip":
            # ISA-L inflates ~3x faster than Arrow's zlib stream (1 M customer rows: 0.17 s
            # against 0.52 s); like gzip it reads concatenated members.
            self._source = igzip.IGzipFile(fileobj=self._raw, mode="rb")  # type: ignore[no-untyped-call]
        elif compression is not None:
            self._source = pa.CompressedInputStream(self._raw, compression)
        self._decoded_in = 0
        self._pending = b""
        self._eof = False
        self.tail = b""
        self.closed = False
        self._pacer: _Pacer | None = None
        self.reads_out_of_turn = 0
        """Paced reads that waited ``PACE_WAIT_SECONDS`` and went on: 0 unless the parser's
        consumer held a batch that long, or the counting is off."""
        try:
            head = self._pull(SNIFF_BYTES)
            while len(head) < 4 and not self._eof:
                head += self._pull(SNIFF_BYTES)
            self._decoder = self._make_decoder(head)
            self._pending = self._transcode(head, start=True)
        except BaseException:
            self.close()
            raise

    @property
    def bytes_read(self) -> int:
        """Bytes of the file on disk consumed so far (compressed, when it is compressed)."""
        return int(self._raw.tell()) if not self._raw.closed else 0

    def _make_decoder(self, head: bytes) -> codecs.IncrementalDecoder | None:
        """None for UTF-8 (cells are checked later); else a strict decoder for the BOM or the option."""
        encoding = self._options.encoding
        if encoding is None:
            encoding = next((name for bom, name in BOMS if head.startswith(bom)), "utf-8")
        try:
            info = codecs.lookup(encoding)
        except LookupError as e:
            raise InputError(self._path, f"unknown encoding {encoding!r}") from e
        if info.name == "utf-8":
            return None
        return info.incrementaldecoder("strict")

    def _pull(self, size: int) -> bytes:
        """Up to ``size`` decompressed bytes, enforcing the decompression caps."""
        try:
            data = bytes(self._source.read(size))
        except EOFError as e:  # ISA-L's gzip reader: the stream ended inside a member
            raise InputError(self._path, f"the {self._codec} data is truncated") from e
        except (OSError, pa.ArrowException, _INFLATE_ERROR) as e:
            what = "truncated" if "runcated" in str(e) else f"corrupt ({e})"
            raise InputError(self._path, f"the {self._codec or 'file'} data is {what}") from e
        if not data:
            self._eof = True
            return data
        self._decoded_in += len(data)
        if self._codec is not None:
            self._check_caps()
        return data

    def _check_caps(self) -> None:
        cap, out = self._options.max_decompressed_bytes, self._decoded_in
        ratio = out / max(1, self.bytes_read)
        if (cap is not None and out > cap) or (
            out > RATIO_FLOOR_BYTES and ratio > self._options.max_expansion_ratio
        ):
            raise InputError(
                self._path,
                f"decompression limit exceeded ({out} bytes out, ratio {ratio:.0f}:1): a likely bomb",
            )

    def _transcode(self, data: bytes, start: bool = False) -> bytes:
        if self._decoder is not None:
            try:
                data = self._decoder.decode(data, final=self._eof).encode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(self._path, f"the text cannot be decoded as {self._encoding_name()}") from e
        if start and data.startswith(codecs.BOM_UTF8):
            data = data[3:]
        return data

    def _encoding_name(self) -> str:
        return self._options.encoding or "the encoding its byte-order mark declares"

    def read(self, size: int = -1) -> bytes:
        """At most ``size`` bytes of UTF-8 (all that is left for ``size < 0``); b"" at the end.

        pyarrow takes each returned chunk as one block, so a short read is a block boundary.
        """
        if self._pacer is not None and not self._pacer.turn():
            self.reads_out_of_turn += 1
        if size < 0:
            while not self._eof:
                self._pending += self._transcode(self._pull(1 << 20))
            size = len(self._pending)
        while len(self._pending) < 2 and not self._eof:
            self._pending += self._transcode(self._pull(max(size, 1 << 16)))
        out = self._pending[:size]
        if len(out) > 1 and out.endswith(b"\r") and (len(out) < len(self._pending) or not self._eof):
            # Never end a pyarrow block on CR: its buffer iterator then drops a following LF even
            # inside a quoted field (apache/arrow#51368). Hold the CR back for the next block.
            out = out[:-1]
        self._pending = self._pending[len(out) :]
        self.tail = (self.tail + out[-TAIL_BYTES:])[-TAIL_BYTES:]
        return out

    def pace(self, ahead: int) -> None:
        """From now on, let reads run at most ``ahead`` blocks ahead of :meth:`taken` calls.

        pyarrow's streaming CSV reader fetches blocks on a thread of its own and queues up to 32
        of them before its parser asks: 16-32 MiB of input held at 1 MiB a block, a sawtooth in
        the process's memory that grew its peak over a long file (the "flat RSS" target). The
        consumer calls :meth:`taken` after each block it parsed. Pacing only saves memory, so
        a read that has waited ``PACE_WAIT_SECONDS`` goes on without its turn: a reader that
        needed more blocks than counted can be slowed, never stopped, and a consumer that stalls
        lets reads run ahead one a second, up to pyarrow's own queue of 32 at worst.
        """
        self._pacer = _Pacer(ahead)

    def taken(self) -> None:
        """The consumer parsed one more block: one more may be read (see :meth:`pace`)."""
        if self._pacer is not None:
            self._pacer.taken()

    def unpace(self) -> None:
        """Reads no longer wait for turns, and a read waiting for one goes on."""
        pacer, self._pacer = self._pacer, None
        if pacer is not None:
            pacer.stop()

    def unread(self, data: bytes) -> None:
        """Push bytes back so that the next read returns them first (the header sniff uses this)."""
        self._pending = data + self._pending
        self.tail = b""

    def reopen(self) -> Stream:
        """A new stream over the same file from its first byte, with the same decoding and caps."""
        return Stream(Path(self._path), self._codec, self._options)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.unpace()  # a read waiting for its turn goes on, and finds the file closed
            self._source.close()
            self._raw.close()


class _Pacer:
    """Turns for reads: at most ``ahead`` blocks read and not yet taken.

    A reader that reached the limit waits until half of them are taken, and then reads that many
    in a row: one wake-up per few blocks, not one per block (each costs a GIL hand-over on
    pyarrow's I/O thread; at one a block, 1 M customer rows took 2.06 against 1.97 s, ~4.5 %).
    """

    def __init__(self, ahead: int) -> None:
        self._ahead = ahead
        self._resume = ahead // 2
        self._out = 0
        self._stopped = False
        self._cond = threading.Condition()

    def turn(self) -> bool:
        """Wait for a turn to read; False when ``PACE_WAIT_SECONDS`` passed without one."""
        with self._cond:
            fair = True
            if self._out >= self._ahead and not self._stopped:
                fair = self._cond.wait_for(
                    lambda: self._out <= self._resume or self._stopped, PACE_WAIT_SECONDS
                )
            self._out += 1
            return fair

    def taken(self) -> None:
        with self._cond:
            self._out -= 1
            if self._out == self._resume:
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
