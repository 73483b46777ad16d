"""The oracle: what must hold after any sequence of crashes, kills and faults.

* The simulator holds exactly the valid records, each once. Copies are counted by *chunk
  identity* (the object's bytes): the same chunk stored again under a second upload id is a
  **re-send**, explained when the ledger (and so the report) lists that upload id for the chunk:
  at-least-once delivery sends a chunk again when the daemon died between the PUT and the ledger
  commit, or when a PUT's answer was lost and its URL expired before the retry. The same record
  in two different chunks is a **duplicate** (a bug), as is a stored copy the ledger never heard of.
* Rejects hold exactly the invalid rows (by line) and never a cell value.
* Nothing acknowledged is lost: every chunk the ledger calls delivered is in the object store
  with the recorded MD5; a source is in ``done/`` only if all its chunks were delivered.
* Every source is in exactly one place (inbox, work area, done, failed): nothing vanishes.
* At the end: no temp files, no claim records, an empty spool, a healthy ledger, and neither the
  token nor a URL signature in any log, report, reject file or the ledger itself.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from bulkd.ledger import DB_NAME, ChunkRecord, ChunkState, JobRecord, JobState, Ledger
from bulkd.selftest.daemon import Workspace
from bulkd.selftest.inputs import InputFile, InputSet, canonical

__all__ = ["LedgerView", "StoredObject", "Tally", "check_final", "check_progress", "read_store", "tally"]

_SIGNATURE = re.compile(
    rb"(?i)(x-amz-(signature|credential|security-token)|signature|sig)=(?!\*{8}|<redacted>)[^&\s'\"<>\\]{6}"
)
"""A signed query parameter with a value that is not the redaction mask."""
_SIDE_FILES = (".report.json", ".rejects.ndjson", ".claim.json")
_TERMINAL = (JobState.ARCHIVED, JobState.FAILED, JobState.DUPLICATE)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object in the simulator's store (``<upload id>-<chunk filename>``)."""

    key: str
    md5: str
    sha256: str
    records: tuple[bytes, ...]

    @property
    def filename(self) -> str:
        return self.key.split("-", 1)[1]


def read_store(store_dir: Path, dataset_id: str) -> list[StoredObject]:
    """Every object the simulator committed for ``dataset_id``, records in canonical form."""
    objects_dir = store_dir / "objects"
    found: list[StoredObject] = []
    if not objects_dir.is_dir():
        return found
    for path in sorted(objects_dir.iterdir()):
        _, _, filename = path.name.partition("-")
        if not filename.startswith(f"{dataset_id}_"):
            continue
        raw = path.read_bytes()
        body = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        records = tuple(canonical(orjson.loads(line)) for line in body.splitlines() if line.strip())
        found.append(
            StoredObject(
                path.name,
                hashlib.md5(raw, usedforsecurity=False).hexdigest(),
                hashlib.sha256(raw).hexdigest(),
                records,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class Tally:
    """The figures a fault-matrix row prints."""

    records_in: int
    delivered: int
    duplicates: int
    """Extra copies of a record across *different* chunks: must be zero."""
    resent: int
    """Extra objects holding an already-stored chunk's exact bytes (explained by a crash)."""
    lost: int
    unexpected: int
    """Records the simulator holds that no input row produced."""


def tally(inputs: InputSet, objects: Iterable[StoredObject]) -> Tally:
    objects = list(objects)
    distinct = {o.sha256: o.records for o in objects}
    counts: Counter[bytes] = Counter(r for records in distinct.values() for r in records)
    expected = inputs.expected
    delivered = sum(1 for r in expected if counts[r] > 0)
    return Tally(
        records_in=sum(expected.values()),
        delivered=delivered,
        duplicates=sum(n - 1 for n in counts.values() if n > 1),
        resent=len(objects) - len(distinct),
        lost=sum(expected.values()) - delivered,
        unexpected=sum(n for r, n in counts.items() if r not in expected),
    )


@dataclass(frozen=True, slots=True)
class LedgerView:
    """A read of the ledger between runs (it takes the instance lock: never while a daemon runs)."""

    jobs: dict[str, JobRecord]
    chunks: dict[str, list[ChunkRecord]]
    uploads: dict[tuple[str, str], set[str]]
    """Every upload id the ledger recorded, by chunk (filename, MD5)."""
    problems: list[str]

    @classmethod
    def read(cls, state_dir: Path) -> LedgerView:
        if not (state_dir / DB_NAME).exists():
            return cls({}, {}, {}, [])
        ledger = Ledger(state_dir)
        try:
            jobs = {j.job_id: j for j in ledger.list_jobs(limit=1 << 40)}
            chunks = {job_id: ledger.chunks_of(job_id) for job_id in jobs}
            uploads: dict[tuple[str, str], set[str]] = {}
            for job_id, job_chunks in chunks.items():
                ids = ledger.upload_ids(job_id)
                for c in job_chunks:
                    known = uploads.setdefault((c.filename, c.md5), set())
                    known.update(ids.get(c.chunk_index, []), [c.upload_id] if c.upload_id else [])
            return cls(jobs, chunks, uploads, [f"ledger integrity: {p}" for p in ledger.integrity_check()])
        finally:
            ledger.close()


def check_progress(
    ws: Workspace, inputs: InputSet, objects: list[StoredObject], view: LedgerView
) -> list[str]:
    """Invariants that hold between any two runs, however the last one ended."""
    problems = list(view.problems)
    stored = {(o.filename, o.md5) for o in objects}
    for job_id, job in view.jobs.items():
        chunks = view.chunks[job_id]
        if job.state in (JobState.DELIVERED, JobState.ARCHIVED):
            pending = [c.chunk_index for c in chunks if c.state is not ChunkState.DELIVERED]
            if pending:
                problems.append(f"job {job_id} is {job.state} but chunks {pending} are not delivered")
        for chunk in chunks:
            if chunk.state is ChunkState.DELIVERED and (chunk.filename, chunk.md5) not in stored:
                problems.append(f"chunk {chunk.filename} of job {job_id} is delivered but not in the store")
    for obj in objects:  # every stored copy is one bulkd knows it sent (and reports)
        upload_id = obj.key.split("-", 1)[0]
        if upload_id not in view.uploads.get((obj.filename, obj.md5), set()):
            problems.append(
                f"object {obj.key} is under an upload id the ledger never recorded for that chunk"
            )
    problems += _check_places(ws, inputs, view)
    return problems


def _check_places(ws: Workspace, inputs: InputSet, view: LedgerView) -> list[str]:
    """Each source is in exactly one place, and only where its ledger state allows."""
    problems: list[str] = []
    by_digest: dict[str, list[tuple[str, Path]]] = {}
    sizes = {len(f.data) for f in inputs.files}
    for place, path in _source_files(ws):
        if path.stat().st_size in sizes:
            by_digest.setdefault(_sha256(path), []).append((place, path))
    for item in inputs.files:
        places = by_digest.get(item.sha256, [])
        if len(places) != 1:
            shown = [f"{p}/{path.name}" for p, path in places] or ["nowhere"]
            problems.append(f"source {item.rel} is in {len(places)} places: {', '.join(shown)}")
            continue
        place, path = places[0]
        if place == "inbox" and path != ws.inbox / item.rel:
            problems.append(f"source {item.rel} moved within the inbox to {path}")
        if place in ("done", "failed"):
            problems += _check_archived(place, path, view)
    return problems


def _check_archived(place: str, path: Path, view: LedgerView) -> list[str]:
    job_id = path.name.split(".", 1)[0]
    job = view.jobs.get(job_id)
    allowed = (
        (JobState.DELIVERED, JobState.ARCHIVED, JobState.DUPLICATE) if place == "done" else (JobState.FAILED,)
    )
    if job is None or job.state not in allowed:
        return [f"{place}/{path.name}: the ledger says {job.state if job else 'no such job'}"]
    return []


def _source_files(ws: Workspace) -> Iterator[tuple[str, Path]]:
    for place, root in (("inbox", ws.inbox), ("work", ws.work), ("done", ws.done), ("failed", ws.failed)):
        for path in _walk(root):
            if not path.name.endswith(_SIDE_FILES) and not path.name.startswith("."):
                yield place, path


def _walk(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_final(
    ws: Workspace,
    inputs: InputSet,
    objects: list[StoredObject],
    view: LedgerView,
    *,
    expect_delivery: bool = True,
) -> list[str]:
    """Everything :func:`check_progress` checks, plus the end state of a drained daemon."""
    problems = check_progress(ws, inputs, objects, view)
    problems += _check_drained(ws, view, expect_delivery)
    if expect_delivery:
        counts = tally(inputs, objects)
        for name in ("lost", "duplicates", "unexpected"):
            if value := getattr(counts, name):
                problems.append(f"{value} record(s) {name}")
    problems += _check_reports(ws, inputs, view)
    problems += find_leaks(ws, inputs)
    return problems


def _check_drained(ws: Workspace, view: LedgerView, expect_delivery: bool) -> list[str]:
    problems: list[str] = []
    for place, root in (("work", ws.work), ("spool", ws.spool)):
        left = sorted(str(p.relative_to(root)) for p in _walk(root))
        if left:
            problems.append(f"{place} not empty after draining: {left[:5]}")
    if ws.spool.is_dir() and any(ws.spool.iterdir()):
        problems.append(f"spool still has job directories: {sorted(p.name for p in ws.spool.iterdir())[:5]}")
    temps = [str(p) for p in _walk(ws.data) if p.name.endswith((".tmp", ".part"))]
    if temps:
        problems.append(f"temp files left: {temps[:5]}")
    for job_id, job in view.jobs.items():
        if job.state not in _TERMINAL:
            problems.append(f"job {job_id} ended in state {job.state}")
        elif expect_delivery and job.state is not JobState.ARCHIVED:
            problems.append(f"job {job_id} ({job.source_name}) ended {job.state}: {job.error}")
        if job.report_path is None:
            problems.append(f"job {job_id} has no report")
    return problems


def _check_reports(ws: Workspace, inputs: InputSet, view: LedgerView) -> list[str]:
    """Each source's report counts its rows, and its reject file names exactly the invalid lines."""
    problems: list[str] = []
    files = {f.sha256: f for f in inputs.files}
    seen: set[str] = set()
    for job in view.jobs.values():
        item = files.get(job.content_sha256)
        if item is None:
            continue
        seen.add(item.sha256)
        if job.state is JobState.ARCHIVED:
            problems += _check_report(item, job)
    if view.jobs:
        missing = sorted(f.rel for sha, f in files.items() if sha not in seen)
        if missing:
            problems.append(f"no job for {missing[:5]}")
    return problems


def _check_report(item: InputFile, job: JobRecord) -> list[str]:
    problems: list[str] = []
    assert job.report_path is not None
    report_file = Path(job.report_path)
    if not report_file.exists():
        return [f"{item.rel}: report {report_file} is missing"]
    report = orjson.loads(report_file.read_bytes())
    want = {"rows": item.rows, "records": len(item.valid), "rejected": len(item.invalid_lines)}
    got = {key: report.get(key) for key in want}
    if got != want:
        problems.append(f"{item.rel}: report says {got}, expected {want}")
    rejects_file = report_file.with_name(f"{job.job_id}.rejects.ndjson")
    lines: list[int] = []
    if rejects_file.exists():
        lines = [orjson.loads(line)["line"] for line in rejects_file.read_bytes().splitlines()]
    if sorted(lines) != sorted(item.invalid_lines):
        extra = sorted(set(lines) - item.invalid_lines)[:5]
        missing = sorted(item.invalid_lines - set(lines))[:5]
        problems.append(f"{item.rel}: rejects differ (unexpected lines {extra}, missing lines {missing})")
    if len(lines) != len(set(lines)):
        problems.append(f"{item.rel}: a rejected line is listed twice")
    return problems


def find_leaks(ws: Workspace, inputs: InputSet | None = None, *, extra: Iterable[bytes] = ()) -> list[str]:
    """Find the token, URL signatures or invalid cells' markers in logs, reports, rejects or the ledger."""
    needles = [ws.token.reveal().encode(), *extra]
    if inputs is not None:
        needles += [m.encode() for m in inputs.markers]
    problems: list[str] = []
    for path in _leak_surfaces(ws):
        data = path.read_bytes()
        for needle in needles:
            if needle and needle in data:
                shown = "the API token" if needle == needles[0] else f"value {needle[:12]!r}..."
                problems.append(f"{shown} leaked into {path.relative_to(ws.root)}")
        if _SIGNATURE.search(data):
            problems.append(f"a URL signature leaked into {path.relative_to(ws.root)}")
    return problems


def _leak_surfaces(ws: Workspace) -> Iterator[Path]:
    yield from (run.log for run in ws.runs if run.log.exists())
    for root in (ws.done, ws.failed):
        for path in _walk(root):
            if path.name.endswith((".report.json", ".rejects.ndjson")):
                yield path
    for path in _walk(ws.state):
        if path.name.startswith(DB_NAME):
            yield path
