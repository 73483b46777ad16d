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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
"""The default record type: a required key (``email_id``), a pattern and a format to break.
``purchase`` is the other one generated: order lines that fold into one record each."""


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
    rows: int
    """Input rows (lines, for NDJSON): records plus rejects, or more where rows fold into records."""

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
    record_type: str = RECORD_TYPE,
) -> InputSet:
    """``files`` files of random size and format; about ``invalid_ratio`` of their records invalid.

    ``record_type`` is ``email_open`` (one row, one record) or ``purchase`` (one to four order
    lines, interleaved with other orders, fold into one record; one bad line rejects its order).
    """
    made: list[InputFile] = []
    markers: list[str] = []
    kind = _KINDS[record_type]
    for number in range(files):
        fmt = Fmt(rng.choice(list(formats)))
        tag = f"{number:02d}{rng.getrandbits(24):06x}"
        groups = kind.groups(rng, tag, rng.randint(*rows), invalid_ratio, markers)
        made.append(_build(kind, f"{dataset_id}/{record_type}/f{tag}.{fmt.value}", fmt, groups, rng))
    return InputSet(dataset_id, tuple(made), tuple(markers), record_type)


Cells = dict[str, str | None]


@dataclass(frozen=True, slots=True)
class _Group:
    """The rows that make one record (one for most types, an order's lines for purchases)."""

    rows: tuple[Cells, ...]
    valid: bool


def _marker(rng: random.Random, markers: list[str]) -> str:
    marker = f"LEAK{rng.getrandbits(48):012x}"
    markers.append(marker)
    return marker


def _moment(rng: random.Random) -> tuple[str, str]:
    day = f"{rng.randint(2019, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return day, f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"


def _email_groups(
    rng: random.Random, tag: str, count: int, invalid_ratio: float, markers: list[str]
) -> list[_Group]:
    groups: list[_Group] = []
    for n in range(count):
        kind = rng.choice(_INVALID_KINDS) if rng.random() < invalid_ratio else None
        day, clock = _moment(rng)
        row: Cells = {
            "link.email": f"u{tag}.{n}@example.com",
            "action_at": f"{day}T{clock}Z",
            "email_id": f"e{tag}-{n}",
            "campaign_id": f"c{rng.getrandbits(32):08x}" if rng.random() < 0.8 else None,
        }
        if kind is not None:
            marker = row["campaign_id"] = _marker(rng, markers)
            if kind == "bad_email":
                row["link.email"] = f"{marker}-at-example.com"
            elif kind == "bad_date":
                row["action_at"] = f"{day[:5]}02-31T{clock}Z"
            else:
                row["email_id"] = None
        groups.append(_Group((row,), kind is None))
    return groups


def _email_record(rows: tuple[Cells, ...]) -> dict[str, Any]:
    (row,) = rows
    record: dict[str, Any] = {"link": {"email": row["link.email"]}, "action_at": row["action_at"]}
    for key in ("email_id", "campaign_id"):
        if row[key] is not None:
            record[key] = row[key]
    return record


def _purchase_groups(
    rng: random.Random, tag: str, count: int, invalid_ratio: float, markers: list[str]
) -> list[_Group]:
    groups: list[_Group] = []
    lines = 0
    while lines < count:
        size = min(rng.randint(1, 4), count - lines)
        day, clock = _moment(rng)
        head: Cells = {
            "purchase_id": f"p{tag}-{len(groups)}",
            "link.email": f"b{tag}.{len(groups)}@example.com",
            "action_at": f"{day}T{clock}Z",
            "type": rng.choice(("physical", "ecommerce")),
        }
        rows: list[Cells] = [
            head
            | {
                "products.product_reference.id": f"sku{rng.getrandbits(24):06x}",
                "products.product_reference.id_type": "sku",
                "products.price_paid": f"{rng.randint(0, 300)}.{rng.randint(1, 9)}",
                "products.quantity": str(rng.randint(1, 5)),
            }
            for _ in range(size)
        ]
        valid = rng.random() >= invalid_ratio
        if not valid:
            bad = rows[rng.randrange(size)]
            bad["products.product_reference.id"] = _marker(rng, markers)
            bad[rng.choice(("products.quantity", "products.price_paid"))] = "-1"
        groups.append(_Group(tuple(rows), valid))
        lines += size
    return groups


def _purchase_record(rows: tuple[Cells, ...]) -> dict[str, Any]:
    head = rows[0]
    return {
        "purchase_id": head["purchase_id"],
        "link": {"email": head["link.email"]},
        "action_at": head["action_at"],
        "type": head["type"],
        "products": [
            {
                "product_reference": {"id": r["products.product_reference.id"], "id_type": "sku"},
                "price_paid": float(str(r["products.price_paid"])),
                "quantity": int(str(r["products.quantity"])),
            }
            for r in rows
        ],
    }


@dataclass(frozen=True, slots=True)
class _Kind:
    columns: tuple[str, ...]
    groups: Callable[[random.Random, str, int, float, list[str]], list[_Group]]
    record: Callable[[tuple[Cells, ...]], dict[str, Any]]
    interleaved: bool = False
    """Whether a record's rows are spread among other records' rows in a file (order lines)."""


_KINDS = {
    "email_open": _Kind(_COLUMNS, _email_groups, _email_record),
    "purchase": _Kind(
        (
            "purchase_id",
            "link.email",
            "action_at",
            "type",
            "products.product_reference.id",
            "products.product_reference.id_type",
            "products.price_paid",
            "products.quantity",
        ),
        _purchase_groups,
        _purchase_record,
        interleaved=True,
    ),
}


def _interleave(groups: list[_Group], rng: random.Random) -> list[tuple[int, Cells]]:
    """Every group's rows, groups interleaved at random, each group's rows in their own order."""
    pending = [list(g.rows) for g in groups]
    draws = [i for i, rows in enumerate(pending) for _ in rows]
    rng.shuffle(draws)
    return [(i, pending[i].pop(0)) for i in draws]


def _build(kind: _Kind, rel: str, fmt: Fmt, groups: list[_Group], rng: random.Random) -> InputFile:
    valid = tuple(canonical(kind.record(g.rows)) for g in groups if g.valid)
    if fmt in (Fmt.NDJSON, Fmt.NDJSON_GZ):  # one document per record, as exporters write them
        data = b"".join(orjson.dumps(kind.record(g.rows)) + b"\n" for g in groups)
        invalid = frozenset(i + 1 for i, g in enumerate(groups) if not g.valid)
        if fmt is Fmt.NDJSON_GZ:
            data = gzip.compress(data, mtime=0)
        return InputFile(rel, fmt.value, data, valid, invalid, len(groups))
    rows = _interleave(groups, rng) if kind.interleaved else [(i, g.rows[0]) for i, g in enumerate(groups)]
    if fmt in (Fmt.CSV, Fmt.CSV_GZ):
        text = ",".join(kind.columns) + "\n"
        text += "".join(",".join(r[c] or "" for c in kind.columns) + "\n" for _, r in rows)
        data, first_line = text.encode(), 2
        if fmt is Fmt.CSV_GZ:
            data = gzip.compress(data, mtime=0)
    else:
        table = pa.table({c: pa.array([r[c] for _, r in rows], pa.string()) for c in kind.columns})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=max(1, len(rows) // 3))
        data, first_line = sink.getvalue().to_pybytes(), 1
    invalid = frozenset(n + first_line for n, (i, _) in enumerate(rows) if not groups[i].valid)
    return InputFile(rel, fmt.value, data, valid, invalid, len(rows))


def drop_into_inbox(inbox: Path, files: Iterable[InputFile]) -> None:
    """Write each file as a careful producer does: a hidden ``.part`` name, then a rename into place."""
    for number, item in enumerate(files):
        target = inbox / item.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{number}.{os.getpid()}.part")  # short: the final name may be 255 bytes
        partial.write_bytes(item.data)
        os.rename(partial, target)
