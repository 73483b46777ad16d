"""The ledger: bulkd's durable memory of every job and chunk, in SQLite (WAL).

After a crash the daemon knows what to resume only from here, so every state change is one
transaction and only the transitions in :data:`JOB_TRANSITIONS` / :data:`CHUNK_TRANSITIONS` are
accepted: a bug that would skip a step (archive a source before its chunks are delivered) fails
loudly with :class:`~bulkd.errors.LedgerError` instead of losing data.

Durability: the connection runs with ``synchronous=NORMAL`` (consistent, survives a process
crash) and switches to ``FULL`` for the transitions that gate irreversible actions (a chunk
delivered, a job delivered / failed / duplicate / archived) so that those survive power loss
too. There are a handful of these per file, so ``FULL`` costs nothing measurable. Any SQLite
error becomes ``LedgerError``; callers must stop rather than retry (a failed sync cannot be
trusted on retry).

Threads: :class:`Ledger` is synchronous and bound to the thread that opened it. The event loop
uses :class:`AsyncLedger`, which runs every call on one dedicated worker thread, which also
makes it the single writer. One process per state directory: an ``flock`` on ``bulkd.lock``
refuses a second instance before the database is touched. Readers that must not count as an
instance (``bulkd status``) open :class:`ReadOnlyLedger`, which takes no lock and cannot write.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from bulkd.durable import crashpoint, declare_crashpoint
from bulkd.errors import LedgerError

__all__ = [
    "ACTIVE_STATES",
    "CHUNK_TRANSITIONS",
    "FINISHED_STATES",
    "JOB_TRANSITIONS",
    "SCHEMA_VERSION",
    "AsyncLedger",
    "ChunkRecord",
    "ChunkState",
    "JobRecord",
    "JobState",
    "JobSummary",
    "Ledger",
    "ReadOnlyLedger",
]

DB_NAME = "ledger.sqlite3"
LOCK_NAME = "bulkd.lock"
TXN_WRITTEN = declare_crashpoint("ledger.txn.written")
"""Inside a transaction: rows written, ``COMMIT`` not yet issued."""
TXN_COMMITTED = declare_crashpoint("ledger.txn.committed")
"""Right after ``COMMIT`` returned."""

_P = ParamSpec("_P")
_T = TypeVar("_T")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class JobState(StrEnum):
    """Where a claimed input file stands; stored as text so the database reads plainly."""

    CLAIMED = "claimed"
    CONVERTING = "converting"
    CONVERTED = "converted"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    ARCHIVED = "archived"
    FAILED = "failed"
    DUPLICATE = "duplicate"


class ChunkState(StrEnum):
    """Where one output chunk stands in its create-upload → PUT life."""

    WRITTEN = "written"
    CREATING = "creating"
    CREATED = "created"
    DELIVERED = "delivered"
    FAILED = "failed"


ACTIVE_STATES = (
    JobState.CLAIMED,
    JobState.CONVERTING,
    JobState.CONVERTED,
    JobState.DELIVERING,
    JobState.DELIVERED,
)
"""States with work left: a job in one of them resumes at start."""
FINISHED_STATES = (JobState.ARCHIVED, JobState.FAILED, JobState.DUPLICATE)

J, C = JobState, ChunkState
JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    J.CLAIMED: frozenset({J.CONVERTING, J.FAILED, J.DUPLICATE}),
    J.CONVERTING: frozenset({J.CONVERTED, J.FAILED}),
    J.CONVERTED: frozenset({J.DELIVERING, J.FAILED}),
    J.DELIVERING: frozenset({J.DELIVERED, J.FAILED}),
    # Once delivered the data is at Lexer: the job can no longer "fail", only be archived.
    J.DELIVERED: frozenset({J.ARCHIVED}),
    J.ARCHIVED: frozenset(),
    J.FAILED: frozenset(),
    J.DUPLICATE: frozenset(),
}
"""Allowed job moves. A resumed job stays in its state and its step is redone."""

CHUNK_TRANSITIONS: Mapping[ChunkState, frozenset[ChunkState]] = {
    C.WRITTEN: frozenset({C.CREATING, C.FAILED}),
    # Creating again: a crash (or lost reply) after the POST left no upload id to continue with.
    C.CREATING: frozenset({C.CREATING, C.CREATED, C.FAILED}),
    # An expired presigned URL sends the chunk back to the API for a fresh one.
    C.CREATED: frozenset({C.DELIVERED, C.CREATING, C.FAILED}),
    C.DELIVERED: frozenset(),
    C.FAILED: frozenset(),
}
"""Allowed chunk moves. Entering ``creating`` counts an attempt."""

_FULL_SYNC_JOB = frozenset({J.DELIVERED, J.ARCHIVED, J.FAILED, J.DUPLICATE})
_FULL_SYNC_CHUNK = frozenset({C.DELIVERED})
del J, C


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of ``jobs``: a claimed input file. ``source_name`` is escaped display text only."""

    job_id: str
    state: JobState
    source_name: str
    dataset_id: str
    record_type: str
    profile: str | None
    content_sha256: str
    size: int
    device: int
    inode: int
    claimed_path: str
    created_at: float
    updated_at: float
    rows: int | None
    records: int | None
    rejected: int | None
    error: str | None
    report_path: str | None
    rejects_by_rule: Mapping[str, int]
    warnings: tuple[str, ...]
    """The conversion's warnings (columns the schema does not know, ...), for the report."""
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One row of ``chunks``: an output chunk file and its delivery progress."""

    job_id: str
    chunk_index: int
    state: ChunkState
    filename: str
    path: str
    records: int
    bytes: int
    md5: str
    sha256: str
    upload_id: str | None
    attempts: int
    error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class JobSummary:
    """A job plus its chunk tallies, as the status API and reports show it."""

    job: JobRecord
    chunk_counts: Mapping[ChunkState, int]
    chunks: int
    records: int
    bytes: int
    delivered_records: int
    delivered_bytes: int


_SCHEMA_V1 = (
    """CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY, state TEXT NOT NULL, source_name TEXT NOT NULL,
        dataset_id TEXT NOT NULL, record_type TEXT NOT NULL, profile TEXT,
        content_sha256 TEXT NOT NULL, size INTEGER NOT NULL, device INTEGER NOT NULL,
        inode INTEGER NOT NULL, claimed_path TEXT NOT NULL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, rows INTEGER, records INTEGER, rejected INTEGER,
        error TEXT, report_path TEXT) STRICT""",
    "CREATE INDEX jobs_by_state ON jobs(state, created_at)",
    "CREATE INDEX jobs_by_content ON jobs(content_sha256, state)",
    """CREATE TABLE chunks (
        job_id TEXT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
        chunk_index INTEGER NOT NULL, state TEXT NOT NULL, filename TEXT NOT NULL,
        path TEXT NOT NULL, records INTEGER NOT NULL, bytes INTEGER NOT NULL,
        md5 TEXT NOT NULL, sha256 TEXT NOT NULL, upload_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0, error TEXT, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, PRIMARY KEY (job_id, chunk_index)) STRICT""",
    "CREATE INDEX chunks_by_state ON chunks(state)",
)

_SCHEMA_V2 = (
    # Every upload id a chunk was ever given: after a lost reply the same bytes may sit under two.
    """CREATE TABLE uploads (
        job_id TEXT NOT NULL, chunk_index INTEGER NOT NULL, upload_id TEXT NOT NULL,
        created_at REAL NOT NULL, PRIMARY KEY (job_id, chunk_index, upload_id),
        FOREIGN KEY (job_id, chunk_index) REFERENCES chunks(job_id, chunk_index) ON DELETE CASCADE
    ) STRICT""",
    "ALTER TABLE jobs ADD COLUMN rejects_by_rule TEXT NOT NULL DEFAULT '{}'",
    "ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'",
    # The claim's mtime: with size and inode it tells whether the file changed after its claim.
    "ALTER TABLE jobs ADD COLUMN mtime_ns INTEGER NOT NULL DEFAULT 0",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2)
"""``MIGRATIONS[n]`` moves a database from ``user_version`` n to n + 1, in one transaction."""
SCHEMA_VERSION = len(MIGRATIONS)


def _lock_instance(state_dir: Path) -> int:
    """Take the per-directory instance lock; the kernel drops it when the process dies."""
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LedgerError(f"another bulkd instance is using {state_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Ledger:
    """Synchronous ledger bound to the thread that opened it (use :class:`AsyncLedger` on a loop)."""

    def __init__(
        self, state_dir: Path, *, busy_timeout: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.state_dir = state_dir
        self._clock = clock
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_instance(state_dir)
        except OSError as exc:
            raise LedgerError(f"cannot use state directory {state_dir}: {exc.strerror or exc}") from exc
        try:
            self._db = self._connect(state_dir / DB_NAME, busy_timeout)
        except BaseException:
            os.close(self._lock_fd)
            raise
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            db.row_factory = sqlite3.Row
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise LedgerError(f"{path}: WAL mode unavailable (got {mode}); use a local volume")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
        return db

    def _migrate(self) -> None:
        version = int(self._query_one("PRAGMA user_version")[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(f"ledger schema {version} is newer than this bulkd ({SCHEMA_VERSION})")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction(full=True):
                for statement in MIGRATIONS[target - 1]:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={target}")

    def close(self) -> None:
        """Close the database, then release the instance lock."""
        try:
            self._db.close()
        finally:
            os.close(self._lock_fd)

    @contextmanager
    def _transaction(self, *, full: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT``; ``full`` syncs the commit to stable storage."""
        db = self._db
        try:
            if full:
                db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                crashpoint(TXN_WRITTEN)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                if full:
                    db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger write failed: {exc}") from exc
        crashpoint(TXN_COMMITTED)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger read failed: {exc}") from exc

    def _query_one(self, sql: str, params: tuple[Any, ...] = (), missing: str = "row") -> sqlite3.Row:
        rows = self._query(sql, params)
        if not rows:
            raise LedgerError(f"unknown {missing}")
        return rows[0]

    # -- jobs -------------------------------------------------------------------------------

    def add_job(
        self,
        *,
        job_id: str,
        source_name: str,
        dataset_id: str,
        record_type: str,
        profile: str | None,
        content_sha256: str,
        size: int,
        device: int,
        inode: int,
        claimed_path: str,
        mtime_ns: int = 0,
    ) -> JobRecord:
        """Record a freshly claimed file in state ``claimed``; a job id is recorded only once."""
        if not _JOB_ID.fullmatch(job_id):
            raise LedgerError(f"invalid job id {job_id!r}")
        now = self._clock()
        values = (job_id, JobState.CLAIMED.value, source_name, dataset_id, record_type, profile)
        values_tail = (content_sha256, size, device, inode, claimed_path, now, now, mtime_ns)
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO jobs (job_id, state, source_name, dataset_id, record_type, profile,"
                    " content_sha256, size, device, inode, claimed_path, created_at, updated_at,"
                    " mtime_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (*values, *values_tail),
                )
        except LedgerError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise LedgerError(f"job {job_id} is already recorded") from exc
            raise
        return self.get_job(job_id)

    def transition_job(
        self,
        job_id: str,
        to: JobState,
        *,
        rows: int | None = None,
        records: int | None = None,
        rejected: int | None = None,
        error: str | None = None,
        report_path: str | None = None,
        rejects_by_rule: Mapping[str, int] | None = None,
        warnings: Sequence[str] | None = None,
    ) -> JobRecord:
        """Move a job to ``to`` (and set the given fields) in one transaction, or refuse."""
        fields: dict[str, int | str | None] = {"rows": rows, "records": records, "rejected": rejected}
        fields |= {"error": error, "report_path": report_path}
        if rejects_by_rule is not None:
            fields["rejects_by_rule"] = json.dumps(dict(rejects_by_rule), sort_keys=True)
        if warnings is not None:
            fields["warnings"] = json.dumps(list(warnings))
        updates = {k: v for k, v in fields.items() if v is not None}
        with self._transaction(full=to in _FULL_SYNC_JOB) as db:
            row = self._query_one("SELECT state FROM jobs WHERE job_id=?", (job_id,), f"job {job_id}")
            current = JobState(row[0])
            if to not in JOB_TRANSITIONS[current]:
                raise LedgerError(f"job {job_id}: illegal transition {current} -> {to}")
            if to is JobState.DELIVERED:
                self._require_all_chunks_delivered(job_id)
            sets = "".join(f", {name}=?" for name in updates)
            db.execute(
                f"UPDATE jobs SET state=?, updated_at=?{sets} WHERE job_id=?",
                (to.value, self._clock(), *updates.values(), job_id),
            )
        return self.get_job(job_id)

    def _require_all_chunks_delivered(self, job_id: str) -> None:
        pending = self._query_one(
            "SELECT count(*) FROM chunks WHERE job_id=? AND state!=?", (job_id, ChunkState.DELIVERED.value)
        )[0]
        if pending:
            raise LedgerError(f"job {job_id}: {pending} chunk(s) not delivered yet")

    def find_job(self, job_id: str) -> JobRecord | None:
        """The job, or None when it was never recorded."""
        rows = self._query("SELECT * FROM jobs WHERE job_id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def get_job(self, job_id: str) -> JobRecord:
        """The job; :class:`LedgerError` when unknown."""
        job = self.find_job(job_id)
        if job is None:
            raise LedgerError(f"unknown job {job_id}")
        return job

    def jobs_in_state(self, *states: JobState) -> list[JobRecord]:
        """Jobs in any of ``states``, oldest first: what the daemon resumes at startup."""
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at, job_id"
        return [_job(row) for row in self._query(sql, tuple(s.value for s in states))]

    def list_jobs(
        self, *, states: tuple[JobState, ...] = (), limit: int = 100, offset: int = 0
    ) -> list[JobRecord]:
        """Most recently updated first, optionally filtered by state (for the status API)."""
        where = f"WHERE state IN ({','.join('?' * len(states))})" if states else ""
        sql = f"SELECT * FROM jobs {where} ORDER BY updated_at DESC, job_id LIMIT ? OFFSET ?"
        return [_job(row) for row in self._query(sql, (*(s.value for s in states), limit, offset))]

    def original_of(self, job_id: str) -> JobRecord | None:
        """An earlier job with the same content for the same dataset and record type that is
        delivered or still on its way (not failed).

        Two copies of one export dropped together must not both be loaded, so a job in progress
        counts as well as a delivered one. The same file sent to another dataset is not a copy."""
        job = self.get_job(job_id)
        sql = (
            "SELECT * FROM jobs WHERE content_sha256=? AND dataset_id=? AND record_type=?"
            " AND job_id!=? AND state NOT IN (?,?)"
            " AND (created_at < ? OR (created_at = ? AND job_id < ?)) ORDER BY created_at LIMIT 1"
        )
        same = (job.content_sha256, job.dataset_id, job.record_type, job_id)
        params = (*same, JobState.FAILED.value, JobState.DUPLICATE.value)
        rows = self._query(sql, (*params, job.created_at, job.created_at, job_id))
        return _job(rows[0]) if rows else None

    def unreported_jobs(self) -> list[JobRecord]:
        """Jobs that reached an end (failed, duplicate) but whose report and archive move are not done:
        a crash came between the synced state change and the file moves."""
        sql = "SELECT * FROM jobs WHERE state IN (?,?) AND report_path IS NULL ORDER BY created_at"
        return [_job(row) for row in self._query(sql, (JobState.FAILED.value, JobState.DUPLICATE.value))]

    def record_report(self, job_id: str, report_path: str) -> JobRecord:
        """Note where a finished job's report was written (its state does not change)."""
        with self._transaction(full=True) as db:
            job = self.get_job(job_id)
            if JOB_TRANSITIONS[job.state] - {JobState.ARCHIVED}:
                raise LedgerError(f"job {job_id}: a report is recorded only for a finished job ({job.state})")
            db.execute("UPDATE jobs SET report_path=? WHERE job_id=?", (report_path, job_id))
        return self.get_job(job_id)

    def pending_chunk_bytes(self) -> int:
        """Bytes of chunks written but not yet delivered: what the spool holds for delivery."""
        sql = "SELECT coalesce(sum(bytes), 0) FROM chunks WHERE state NOT IN (?,?)"
        return int(self._query_one(sql, (ChunkState.DELIVERED.value, ChunkState.FAILED.value))[0])

    def job_summary(self, job_id: str) -> JobSummary:
        """The job with chunk counts per state and record/byte totals."""
        job = self.get_job(job_id)
        sql = "SELECT state, count(*), sum(records), sum(bytes) FROM chunks WHERE job_id=? GROUP BY state"
        counts: dict[ChunkState, int] = dict.fromkeys(ChunkState, 0)
        records = size = delivered_records = delivered_bytes = 0
        for state_text, count, recs, nbytes in self._query(sql, (job_id,)):
            state = ChunkState(state_text)
            counts[state] = count
            records, size = records + recs, size + nbytes
            if state is ChunkState.DELIVERED:
                delivered_records, delivered_bytes = recs, nbytes
        return JobSummary(
            job, counts, sum(counts.values()), records, size, delivered_records, delivered_bytes
        )

    # -- chunks -----------------------------------------------------------------------------

    def add_chunk(
        self,
        job_id: str,
        chunk_index: int,
        *,
        filename: str,
        path: str,
        records: int,
        bytes: int,
        md5: str,
        sha256: str,
    ) -> ChunkRecord:
        """Record a chunk file that is already durable on disk, in state ``written``.

        Regenerating a chunk after a crash is expected and yields identical bytes, so recording
        the same chunk again is a no-op. Different bytes for a chunk that was never sent replace
        the row; different bytes for a chunk already sent are refused (determinism was broken).
        """
        now = self._clock()
        row_values = (job_id, chunk_index, ChunkState.WRITTEN.value, filename, path, records, bytes)
        with self._transaction() as db:
            rows = self._query("SELECT * FROM chunks WHERE job_id=? AND chunk_index=?", (job_id, chunk_index))
            if rows:
                old = _chunk(rows[0])
                if old.sha256 == sha256 and old.bytes == bytes:
                    return old
                if old.state is not ChunkState.WRITTEN:
                    raise LedgerError(f"job {job_id} chunk {chunk_index}: content changed after {old.state}")
                db.execute("DELETE FROM chunks WHERE job_id=? AND chunk_index=?", (job_id, chunk_index))
            db.execute(
                "INSERT INTO chunks (job_id, chunk_index, state, filename, path, records, bytes, md5,"
                " sha256, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (*row_values, md5, sha256, now, now),
            )
        return self.get_chunk(job_id, chunk_index)

    def transition_chunk(
        self,
        job_id: str,
        chunk_index: int,
        to: ChunkState,
        *,
        upload_id: str | None = None,
        error: str | None = None,
    ) -> ChunkRecord:
        """Move a chunk to ``to`` in one transaction (``FULL`` sync for ``delivered``), or refuse."""
        key = (job_id, chunk_index)
        with self._transaction(full=to in _FULL_SYNC_CHUNK) as db:
            sql = "SELECT state FROM chunks WHERE job_id=? AND chunk_index=?"
            row = self._query_one(sql, key, f"chunk {chunk_index} of job {job_id}")
            current = ChunkState(row[0])
            if to not in CHUNK_TRANSITIONS[current]:
                raise LedgerError(f"job {job_id} chunk {chunk_index}: illegal transition {current} -> {to}")
            if to is ChunkState.CREATED and upload_id is None:
                raise LedgerError(f"job {job_id} chunk {chunk_index}: 'created' needs an upload id")
            db.execute(
                "UPDATE chunks SET state=?, updated_at=?, attempts=attempts+?,"
                " upload_id=coalesce(?, upload_id), error=coalesce(?, error)"
                " WHERE job_id=? AND chunk_index=?",
                (to.value, self._clock(), int(to is ChunkState.CREATING), upload_id, error, *key),
            )
            if upload_id is not None:
                db.execute(
                    "INSERT OR IGNORE INTO uploads (job_id, chunk_index, upload_id, created_at)"
                    " VALUES (?,?,?,?)",
                    (*key, upload_id, self._clock()),
                )
        return self.get_chunk(job_id, chunk_index)

    def get_chunk(self, job_id: str, chunk_index: int) -> ChunkRecord:
        """One chunk; :class:`LedgerError` when unknown."""
        rows = self._query("SELECT * FROM chunks WHERE job_id=? AND chunk_index=?", (job_id, chunk_index))
        if not rows:
            raise LedgerError(f"unknown chunk {chunk_index} of job {job_id}")
        return _chunk(rows[0])

    def chunks_of(self, job_id: str, *states: ChunkState) -> list[ChunkRecord]:
        """The job's chunks in index order, limited to ``states`` when given."""
        sql = "SELECT * FROM chunks WHERE job_id=?"
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
        params = (job_id, *(s.value for s in states))
        return [_chunk(row) for row in self._query(sql + " ORDER BY chunk_index", params)]

    def upload_ids(self, job_id: str) -> dict[int, list[str]]:
        """Every upload id each chunk of the job was given, oldest first (reports list them all)."""
        sql = "SELECT chunk_index, upload_id FROM uploads WHERE job_id=?"
        sql += " ORDER BY chunk_index, created_at, rowid"
        found: dict[int, list[str]] = {}
        for index, upload_id in self._query(sql, (job_id,)):
            found.setdefault(index, []).append(upload_id)
        return found

    # -- health -----------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Problems reported by ``PRAGMA integrity_check`` and ``foreign_key_check``; empty = healthy."""
        problems = [str(r[0]) for r in self._query("PRAGMA integrity_check") if r[0] != "ok"]
        problems += [f"foreign key: {tuple(r)}" for r in self._query("PRAGMA foreign_key_check")]
        return problems


class ReadOnlyLedger(Ledger):
    """The ledger opened only to look at it, so ``bulkd status`` can never get in a daemon's way.

    :class:`Ledger` takes the instance lock, creates the database and migrates it; a status
    reader doing any of that would make a starting daemon refuse to run as a "second instance",
    and could not read while a daemon holds the lock. This opens SQLite with ``mode=ro``: no
    lock, no migration, no directory or database created, and WAL lets it read while a daemon
    commits. It reuses every query of :class:`Ledger`; the inherited writes fail inside SQLite
    (``SQLITE_READONLY``, raised as :class:`LedgerError`), so no check of ours can drift.
    SQLite may still create the empty ``-wal``/``-shm`` side files a WAL reader needs.
    """

    def __init__(self, state_dir: Path, *, busy_timeout: float = 5.0) -> None:
        self.state_dir = state_dir
        self._clock = time.time
        path = state_dir / DB_NAME
        if not path.is_file():
            what = f"holds no {DB_NAME}" if state_dir.is_dir() else "does not exist"
            raise LedgerError(f"no ledger to read: state directory {state_dir} {what}")
        try:
            # as_uri() percent-encodes the path, so '?', '#' or '%' in a directory name stay literal.
            uri = path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the ledger in state directory {state_dir}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._check_schema()
        except BaseException:
            self._db.close()
            raise

    def _check_schema(self) -> None:
        """Queries assume the current tables; only a daemon may migrate, so say what to do instead."""
        version = int(self._query_one("PRAGMA user_version")[0])
        if version == SCHEMA_VERSION:
            return
        where = f"the ledger in state directory {self.state_dir}"
        if version == 0:
            raise LedgerError(f"{where} is not set up yet (a daemon may be starting); try again")
        if version > SCHEMA_VERSION:
            raise LedgerError(f"{where} has schema {version}, newer than this bulkd ({SCHEMA_VERSION})")
        raise LedgerError(
            f"{where} has schema {version}, older than this bulkd ({SCHEMA_VERSION}); "
            "start the daemon once to migrate it"
        )

    def close(self) -> None:
        """Close the database (there is no lock to release)."""
        self._db.close()

    @contextmanager
    def snapshot(self) -> Iterator[Self]:
        """Hold one read transaction, so that a listing and its per-job summaries describe the same
        moment even while a daemon commits (WAL keeps the reader's view fixed until it ends)."""
        try:
            self._db.execute("BEGIN DEFERRED")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger read failed: {exc}") from exc
        try:
            yield self
        finally:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger read failed: {exc}") from exc


def _job(row: sqlite3.Row) -> JobRecord:
    values = dict(zip(row.keys(), row, strict=True))
    values["state"] = JobState(values["state"])
    values["rejects_by_rule"] = json.loads(values["rejects_by_rule"])
    values["warnings"] = tuple(json.loads(values["warnings"]))
    return JobRecord(**values)


def _chunk(row: sqlite3.Row) -> ChunkRecord:
    values = dict(zip(row.keys(), row, strict=True))
    values["state"] = ChunkState(values["state"])
    return ChunkRecord(**values)


class AsyncLedger:
    """The ledger for the event loop: every call runs on one dedicated thread, never on the loop.

    That thread owns the SQLite connection, so the daemon has exactly one writer and no call
    can stall the loop on a ``fsync``. Use ``await AsyncLedger.open(dir)`` and
    ``await ledger.run(Ledger.method, *args)``, or the shortcuts below.
    """

    def __init__(self, ledger: Ledger, executor: ThreadPoolExecutor) -> None:
        self._ledger = ledger
        self._executor = executor

    @classmethod
    async def open(cls, state_dir: Path, **options: Any) -> AsyncLedger:
        """Open (and lock) the ledger on a fresh worker thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkd-ledger")
        loop = asyncio.get_running_loop()
        try:
            ledger = await loop.run_in_executor(executor, functools.partial(Ledger, state_dir, **options))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(ledger, executor)

    async def run(
        self, method: Callable[Concatenate[Ledger, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``method(ledger, *args, **kwargs)`` on the ledger thread."""
        call = functools.partial(method, self._ledger, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        """Close the database and release the lock, then stop the thread."""
        try:
            await self.run(Ledger.close)
        finally:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncLedger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def transition_job(self, job_id: str, to: JobState, **fields: Any) -> JobRecord:
        """Shortcut for :meth:`Ledger.transition_job`."""
        return await self.run(Ledger.transition_job, job_id, to, **fields)

    async def transition_chunk(self, job_id: str, index: int, to: ChunkState, **fields: Any) -> ChunkRecord:
        """Shortcut for :meth:`Ledger.transition_chunk`."""
        return await self.run(Ledger.transition_chunk, job_id, index, to, **fields)
