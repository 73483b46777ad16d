"""The "dataset load" Lexer runs after an upload: parse each NDJSON line, validate, count, find duplicates.

Parsing and validation run in a worker thread (they are CPU work on possibly large objects);
only the merge into the per-dataset counters takes a lock. Records are not kept in memory:
each dataset remembers which objects it loaded and which of their lines were rejected, and
the record listing re-reads the objects from the store. Duplicate detection keeps a 16-byte
digest of each loaded record's canonical JSON, which is what lets tests prove exactly-once.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson

from bulkd.schemas import load_record_type
from bulkd.validate import SchemaViolation, compile_validator

__all__ = ["DatasetLoader", "DatasetStats", "ObjectLoad", "load_object", "read_loaded_records"]

_GZIP_MAGIC = b"\x1f\x8b"
_REJECT_SAMPLE = 20


@dataclass(frozen=True, slots=True)
class ObjectLoad:
    """The outcome of loading one stored object; computed off the event loop."""

    key: str
    record_type: str
    loaded: int
    rejected: int
    rejected_lines: frozenset[int]
    digests: tuple[bytes, ...] = field(repr=False)
    rejects: tuple[dict[str, Any], ...]
    error: str | None = None
    """Set when the object as a whole could not be read (corrupt gzip); nothing is loaded then."""


@dataclass(frozen=True, slots=True)
class DatasetStats:
    """Counts for one dataset, as ``GET /v1/_sim/datasets/{id}`` reports them."""

    dataset_id: str
    uploads: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    failed_loads: int = 0
    by_record_type: dict[str, dict[str, int]] = field(default_factory=dict)
    rejects_sample: tuple[dict[str, Any], ...] = ()
    """The first few reasons (line, path, rule, message), never the values."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the HTTP endpoint."""
        return {
            "dataset_id": self.dataset_id,
            "uploads": self.uploads,
            "loaded": self.loaded,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "failed_loads": self.failed_loads,
            "by_record_type": self.by_record_type,
            "rejects_sample": list(self.rejects_sample),
        }


def _open(path: Path) -> BinaryIO:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based physical line numbers (streamed, never the whole object)."""
    with _open(path) as stream:
        for number, raw in enumerate(stream, start=1):
            line = raw.strip()
            if line:
                yield number, line


def load_object(path: Path, key: str, record_type: str) -> ObjectLoad:
    """Parse and validate every line of one object (blocking; run it in a thread)."""
    validate = compile_validator(load_record_type(record_type))
    loaded = 0
    digests: list[bytes] = []
    rejected_lines: set[int] = set()
    rejects: list[dict[str, Any]] = []
    try:
        for number, line in _lines(path):
            reason = _check_line(line, validate, digests)
            if reason is None:
                loaded += 1
                continue
            rejected_lines.add(number)
            if len(rejects) < _REJECT_SAMPLE:
                rejects.append({"object": key, "line": number, **reason})
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        return ObjectLoad(key, record_type, 0, 0, frozenset(), (), (), error=f"{type(exc).__name__}: {exc}")
    return ObjectLoad(
        key,
        record_type,
        loaded,
        len(rejected_lines),
        frozenset(rejected_lines),
        tuple(digests),
        tuple(rejects),
    )


def _check_line(line: bytes, validate: Any, digests: list[bytes]) -> dict[str, Any] | None:
    """None when the line loads (its digest appended), else the reason without the value."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {"rule": "json", "message": "line is not valid JSON"}
    if not isinstance(record, dict):
        return {"rule": "type", "message": "line is not a JSON object"}
    try:
        validate(record)
    except SchemaViolation as exc:
        return {"rule": exc.rule, "path": list(exc.path), "message": exc.message}
    canonical = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    digests.append(hashlib.blake2b(canonical, digest_size=16).digest())
    return None


def read_loaded_records(path: Path, rejected_lines: frozenset[int]) -> list[dict[str, Any]]:
    """The records of one object that the load accepted (blocking; run it in a thread)."""
    return [orjson.loads(line) for number, line in _lines(path) if number not in rejected_lines]


@dataclass(slots=True)
class _Dataset:
    uploads: int = 0
    loaded: int = 0
    rejected: int = 0
    duplicates: int = 0
    failed_loads: int = 0
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    objects: dict[str, tuple[Path, frozenset[int]]] = field(default_factory=dict)
    seen: dict[bytes, str] = field(default_factory=dict)


class DatasetLoader:
    """Per-dataset counters, merged under a lock because loads finish on worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._datasets: dict[str, _Dataset] = {}

    def merge(self, dataset_id: str, path: Path, result: ObjectLoad) -> None:
        """Fold one object's load into its dataset; a record another object already loaded is a duplicate."""
        with self._lock:
            ds = self._datasets.setdefault(dataset_id, _Dataset())
            per_type = ds.by_type.setdefault(result.record_type, {"uploads": 0, "loaded": 0, "rejected": 0})
            ds.uploads += 1
            per_type["uploads"] += 1
            if result.error is not None:
                ds.failed_loads += 1
                return
            ds.loaded += result.loaded
            ds.rejected += result.rejected
            per_type["loaded"] += result.loaded
            per_type["rejected"] += result.rejected
            room = _REJECT_SAMPLE - len(ds.rejects)
            ds.rejects.extend(result.rejects[: max(room, 0)])
            ds.objects[result.key] = (path, result.rejected_lines)
            for digest in result.digests:
                owner = ds.seen.setdefault(digest, result.key)
                if owner != result.key:
                    ds.duplicates += 1

    def stats(self, dataset_id: str) -> DatasetStats:
        """A snapshot; a dataset that never received an upload has all counts at zero."""
        with self._lock:
            ds = self._datasets.get(dataset_id)
            if ds is None:
                return DatasetStats(dataset_id)
            return DatasetStats(
                dataset_id=dataset_id,
                uploads=ds.uploads,
                loaded=ds.loaded,
                rejected=ds.rejected,
                duplicates=ds.duplicates,
                failed_loads=ds.failed_loads,
                by_record_type={k: dict(v) for k, v in ds.by_type.items()},
                rejects_sample=tuple(ds.rejects),
            )

    def objects(self, dataset_id: str) -> list[tuple[Path, frozenset[int]]]:
        """The loaded objects of a dataset in load order, with the lines each load rejected."""
        with self._lock:
            ds = self._datasets.get(dataset_id)
            return [] if ds is None else list(ds.objects.values())
