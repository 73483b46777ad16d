"""The reject file: one NDJSON line per rejected row (input, line, field, rule, message).

Cell values are never written, because rows may hold personal data; the line number and field
are enough to find the row in the source. The file is written under a temporary name and
renamed when the input is finished, so a crash leaves no half file behind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import orjson

from bulkd.durable import fsync_dir, temp_path_for
from bulkd.errors import StorageError
from bulkd.model import Reject

__all__ = ["RejectWriter"]


class RejectWriter:
    """Collects rejects for one input; creates the file only when there is something to write."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self.by_rule: Counter[str] = Counter()
        self._tmp: Path | None = None
        self._fh: IO[bytes] | None = None

    def add(self, rejects: Iterable[Reject]) -> None:
        for reject in rejects:
            self.count += 1
            self.by_rule[reject.rule] += 1
            if self.path is None:
                continue
            try:
                self._file().write(orjson.dumps(reject.as_json()) + b"\n")
            except OSError as exc:
                raise StorageError(f"cannot write rejects {self.path}: {exc.strerror or exc}") from exc

    def _file(self) -> IO[bytes]:
        if self._fh is None:
            assert self.path is not None
            self._tmp = temp_path_for(self.path)
            self._fh = open(self._tmp, "xb")  # noqa: SIM115 - closed in finish/abort
        return self._fh

    def finish(self) -> Path | None:
        """Make the reject file durable; None when no row was rejected (or no path was given)."""
        if self._fh is None or self._tmp is None or self.path is None:
            return None
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.rename(self._tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot finish rejects {self.path}: {exc.strerror or exc}") from exc
        self._fh = None
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
