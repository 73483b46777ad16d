"""Seeded input files whose outcome is known before bulkd sees them.

Every generated row is either valid (and the exact record bulkd must deliver is known) or
invalid for a stated reason (and the line a reject must name is known). Values are already in
the canonical form bulkd writes (lower-case e-mail, ``Z`` date-times), so the expected record
is the row itself and the oracle needs no model of bulkd's coercions.

Invalid rows carry a distinctive *marker* in their cells: a reject file, report or log line
that contains one has leaked a cell value.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FORMATS",
    "RECORD_TYPE",
    "InputFile",
    "InputSet",
    "canonical",
    "drop_into_inbox",
    "generate_inputs",
]

RECORD_TYPE = "email_open"
"""Every generated file holds ``email_open`` rows: a required key (``email_id``), a pattern and a format."""


class Fmt(StrEnum):
    CSV = "csv"
    CSV_GZ = "csv.gz"
    NDJSON = "ndjson"
    NDJSON_GZ = "ndjson.gz"
    PARQUET = "parquet"


FORMATS: tuple[str, ...] = tuple(f.value for f in Fmt)
_COLUMNS = ("link.email", "action_at", "email_id", "campaign_id")
_INVALID_KINDS = ("bad_email", "bad_date", "no_email_id")


def canonical(record: Mapping[str, Any]) -> bytes:
    """One byte string per record content: how the oracle compares what was sent and what arrived."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class InputFile:
    """One generated input: where it goes under the inbox, its bytes and its known outcome."""

    rel: str
    """Path under the inbox root: ``<dataset_id>/<record_type>/<name>``."""
    fmt: str
    data: bytes = field(repr=False)
    valid: tuple[bytes, ...] = field(repr=False)
    """Canonical bytes (:func:`canonical`) of each record bulkd must deliver, in row order."""
    invalid_lines: frozenset[int]
    """The line (row number for Parquet) each rejected row must be reported under."""

    @property
    def rows(self) -> int:
        return len(self.valid) + len(self.invalid_lines)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True, slots=True)
class InputSet:
    """Files for one dataset, plus the markers that must never leak out of invalid rows."""

    dataset_id: str
    files: tuple[InputFile, ...]
    markers: tuple[str, ...]
    record_type: str = RECORD_TYPE

    @property
    def expected(self) -> Counter[bytes]:
        """Every record the dataset must end up holding, once each."""
        return Counter(r for f in self.files for r in f.valid)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


def generate_inputs(
    rng: random.Random,
    *,
    dataset_id: str,
    files: int,
    rows: tuple[int, int] = (60, 160),
    invalid_ratio: float = 0.1,
    formats: Sequence[str] = FORMATS,
) -> InputSet:
    """``files`` files of random size and format; about ``invalid_ratio`` of their rows invalid."""
    made: list[InputFile] = []
    markers: list[str] = []
    for number in range(files):
        fmt = Fmt(rng.choice(list(formats)))
        tag = f"{number:02d}{rng.getrandbits(24):06x}"
        cells, kinds = _rows(rng, tag, rng.randint(*rows), invalid_ratio, markers)
        made.append(_build(dataset_id, f"f{tag}.{fmt.value}", fmt, cells, kinds))
    return InputSet(dataset_id, tuple(made), tuple(markers))


Cells = dict[str, str | None]


def _rows(
    rng: random.Random, tag: str, count: int, invalid_ratio: float, markers: list[str]
) -> tuple[list[Cells], list[str | None]]:
    cells: list[Cells] = []
    kinds: list[str | None] = []
    for n in range(count):
        kind = rng.choice(_INVALID_KINDS) if rng.random() < invalid_ratio else None
        day = f"{rng.randint(2019, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        row: Cells = {
            "link.email": f"u{tag}.{n}@example.com",
            "action_at": f"{day}T{clock}Z",
            "email_id": f"e{tag}-{n}",
            "campaign_id": f"c{rng.getrandbits(32):08x}" if rng.random() < 0.8 else None,
        }
        if kind is not None:
            marker = f"LEAK{rng.getrandbits(48):012x}"
            markers.append(marker)
            row["campaign_id"] = marker
            if kind == "bad_email":
                row["link.email"] = f"{marker}-at-example.com"
            elif kind == "bad_date":
                row["action_at"] = f"{day[:5]}02-31T{clock}Z"
            else:
                row["email_id"] = None
        cells.append(row)
        kinds.append(kind)
    return cells, kinds


def _record(row: Cells) -> dict[str, Any]:
    record: dict[str, Any] = {"link": {"email": row["link.email"]}, "action_at": row["action_at"]}
    for key in ("email_id", "campaign_id"):
        if row[key] is not None:
            record[key] = row[key]
    return record


def _build(dataset_id: str, name: str, fmt: Fmt, cells: list[Cells], kinds: list[str | None]) -> InputFile:
    if fmt in (Fmt.CSV, Fmt.CSV_GZ):
        text = (
            ",".join(_COLUMNS) + "\n" + "".join(",".join(r[c] or "" for c in _COLUMNS) + "\n" for r in cells)
        )
        data, first_line = text.encode(), 2
        if fmt is Fmt.CSV_GZ:
            data = gzip.compress(data, mtime=0)
    elif fmt in (Fmt.NDJSON, Fmt.NDJSON_GZ):
        data, first_line = b"".join(orjson.dumps(_record(r)) + b"\n" for r in cells), 1
        if fmt is Fmt.NDJSON_GZ:
            data = gzip.compress(data, mtime=0)
    else:
        table = pa.table({c: pa.array([r[c] for r in cells], pa.string()) for c in _COLUMNS})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=max(1, len(cells) // 3))
        data, first_line = sink.getvalue().to_pybytes(), 1
    valid = tuple(canonical(_record(r)) for r, k in zip(cells, kinds, strict=True) if k is None)
    invalid = frozenset(i + first_line for i, k in enumerate(kinds) if k is not None)
    return InputFile(f"{dataset_id}/{RECORD_TYPE}/{name}", fmt.value, data, valid, invalid)


def drop_into_inbox(inbox: Path, files: Iterable[InputFile]) -> None:
    """Write each file as a careful producer does: a hidden ``.part`` name, then a rename into place."""
    for number, item in enumerate(files):
        target = inbox / item.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{number}.{os.getpid()}.part")  # short: the final name may be 255 bytes
        partial.write_bytes(item.data)
        os.rename(partial, target)
