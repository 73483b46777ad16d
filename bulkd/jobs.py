"""One job's life in the daemon: claimed → converting → converted → delivering → delivered → archived.

The ledger decides where a job resumes, so every step here is written to be redone after a
crash at any point:

* **Converting** always starts from an empty spool directory and converts the whole file again.
  Conversion is deterministic (the chunk timestamp comes from the job's creation time), so a
  chunk recorded before the crash is regenerated with the same bytes and the ledger accepts it
  as the same chunk.
* **Delivering** first checks each undelivered chunk's file against the recorded size and
  SHA-256; a missing or damaged file triggers a regeneration, and bytes that no longer match a
  chunk already sent stop the job (determinism broken: uploading them would corrupt the dataset).
  A chunk already delivered is never sent again.
* **Finishing** writes the report, moves the rejects beside it, archives the source, and only
  then records the end. Each of those is safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bulkd.chunk import ChunkInfo, ChunkLimits, md5_b64
from bulkd.config import Config
from bulkd.durable import crashpoint, declare_crashpoint, move_durable, remove_temp_files, sha256_fd
from bulkd.errors import BulkdError, LedgerError, StorageError, TerminalUploadError, UploadError
from bulkd.inbox import archive, report_path
from bulkd.ledger import ACTIVE_STATES, AsyncLedger, ChunkRecord, ChunkState, JobRecord, JobState, Ledger
from bulkd.pipeline import ConvertSettings, FileResult, convert_file
from bulkd.profile import Profile, load_profile
from bulkd.report import build_report, write_report
from bulkd.schemas import load_record_type
from bulkd.upload import ChunkUpload, Uploader, UploadReceipt

__all__ = [
    "DeliveryDeferred",
    "JobEvent",
    "JobInterrupted",
    "JobRunner",
    "Listener",
    "LiveJob",
    "chunk_timestamp",
    "sweep_spool",
]

log = logging.getLogger("bulkd.jobs")

UPLOAD_CREATED = declare_crashpoint("upload.created")
"""A create-upload answer (upload id) was recorded; the PUT has not started."""
UPLOAD_PUT_DONE = declare_crashpoint("upload.put.done")
"""The object store answered 200 to the PUT; the ledger does not know yet."""
ARCHIVE_BEFORE = declare_crashpoint("job.archive.before")
"""Every chunk is delivered and recorded; the report and the source are not moved yet."""
CONVERT_BATCH = declare_crashpoint("job.convert.batch")
"""After a batch was converted (mid-conversion); use ``:N`` for the N-th batch."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One job or chunk transition, as listeners (metrics, dashboards) see it."""

    kind: Literal["job", "chunk"]
    job_id: str
    state: str
    chunk_index: int | None = None
    records: int = 0
    bytes: int = 0
    seconds: float | None = None
    """For a delivered chunk: how long its upload took (create + PUT, retries included)."""


Listener = Callable[[JobEvent], None]


class JobInterrupted(Exception):
    """The daemon is stopping: raised between steps and inside a conversion thread (at its next
    batch). The job stays in its recorded state and resumes at the next start."""


class DeliveryDeferred(Exception):
    """Delivery stopped for now (retries exhausted, uploads paused); the job stays ``delivering``."""


@dataclass(slots=True)
class LiveJob:
    """What the status server shows of a running job that the ledger does not hold yet."""

    job_id: str
    source_name: str
    dataset_id: str
    record_type: str
    size: int
    phase: JobState
    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    bytes_read: int = 0
    chunks_total: int = 0
    chunks_delivered: int = 0

    @property
    def rows_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0


def chunk_timestamp(job: JobRecord) -> str:
    """The timestamp in chunk names: fixed by the job's creation, so regenerated chunks match."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(job.created_at))


class JobRunner:
    """Runs jobs through their states; owned by the service, which supplies the shared parts."""

    def __init__(
        self,
        config: Config,
        ledger: AsyncLedger,
        uploader: Uploader,
        *,
        stopping: threading.Event,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.uploader = uploader
        self.stopping = stopping
        self.live: dict[str, LiveJob] = {}
        self.listeners: list[Listener] = []
        """Called on the event loop for every transition; must be quick and must not raise."""
        self._convert_slots = asyncio.Semaphore(config.convert.parallel_files)

    # -- the state machine ------------------------------------------------------------------

    async def run(self, job_id: str) -> JobRecord:
        """Advance the job until it ends or has to wait (returns the job as it then stands).

        Raises:
            DeliveryDeferred: delivery must be tried again later (or the daemon is stopping).
            JobInterrupted: the daemon is stopping.
        """
        job = await self.ledger.run(Ledger.get_job, job_id)
        self.live[job_id] = LiveJob(
            job.job_id, job.source_name, job.dataset_id, job.record_type, job.size, job.state
        )
        try:
            while job.state in ACTIVE_STATES:
                if self.stopping.is_set() and job.state is not JobState.DELIVERED:
                    raise JobInterrupted(job_id)
                job = await self._step(job)
                self.live[job_id].phase = job.state
            if job.report_path is None:
                job = await self._finish(job)
            return job
        finally:
            self.live.pop(job_id, None)

    async def _step(self, job: JobRecord) -> JobRecord:
        match job.state:
            case JobState.CLAIMED:
                original = await self.ledger.run(Ledger.original_of, job.job_id)
                if original is not None:
                    why = f"same content as job {original.job_id} ({original.source_name})"
                    return await self._transition(job, JobState.DUPLICATE, error=why)
                return await self._transition(job, JobState.CONVERTING)
            case JobState.CONVERTING:
                return await self._convert(job)
            case JobState.CONVERTED:
                return await self._transition(job, JobState.DELIVERING)
            case JobState.DELIVERING:
                return await self._deliver(job)
            case JobState.DELIVERED:
                return await self._finish(job)
            case _:
                raise AssertionError(f"not an active state: {job.state}")

    def emit(self, event: JobEvent) -> None:
        """Tell every listener; a failing listener is logged, never allowed to stop a job."""
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a job event listener failed")

    async def _transition(self, job: JobRecord, to: JobState, **fields: object) -> JobRecord:
        updated = await self.ledger.transition_job(job.job_id, to, **fields)
        self.emit(JobEvent("job", job.job_id, to.value))
        log.info(
            "job %s: %s -> %s",
            job.job_id,
            job.state,
            to,
            extra={"event": "job", "job_id": job.job_id, "state": str(to), "source": job.source_name},
        )
        return updated

    async def fail(self, job: JobRecord, error: str) -> JobRecord:
        """Mark the job failed (from any active state but delivered); :meth:`run` then finishes it."""
        log.error("job %s (%s) failed: %s", job.job_id, job.source_name, error)
        return await self._transition(job, JobState.FAILED, error=error)

    # -- converting -------------------------------------------------------------------------

    def spool_dir(self, job_id: str) -> Path:
        return self.config.spool_dir / job_id

    async def _convert(self, job: JobRecord) -> JobRecord:
        async with self._convert_slots:
            result = await self._convert_file(job)
        tallies = {
            "rows": result.rows,
            "rejected": result.rejected,
            "rejects_by_rule": result.rejects_by_rule,
            "warnings": result.warnings,
        }
        if result.error is not None:
            log.error("job %s (%s) failed: %s", job.job_id, job.source_name, result.error)
            return await self._transition(job, JobState.FAILED, error=result.error, **tallies)
        for info in result.chunks:
            await self._record_chunk(job, info)
        self.live[job.job_id].chunks_total = len(result.chunks)
        return await self._transition(job, JobState.CONVERTED, records=result.records, **tallies)

    async def _record_chunk(self, job: JobRecord, info: ChunkInfo) -> ChunkRecord:
        return await self.ledger.run(
            Ledger.add_chunk,
            job.job_id,
            info.index,
            filename=info.filename,
            path=str(info.path),
            records=info.records,
            bytes=info.bytes,
            md5=info.md5_hex,
            sha256=info.sha256_hex,
        )

    async def _convert_file(self, job: JobRecord) -> FileResult:
        """Convert the claimed file into a fresh spool directory, in a worker thread."""
        try:
            settings = self._settings(job)
        except BulkdError as exc:
            return FileResult(input=job.source_name, error=str(exc))
        out = self.spool_dir(job.job_id)
        live = self.live[job.job_id]
        live.started, live.rows, live.bytes_read = time.monotonic(), 0, 0

        def progress(rows: int, bytes_read: int) -> None:
            live.rows, live.bytes_read = rows, bytes_read
            crashpoint(CONVERT_BATCH)
            if self.stopping.is_set():
                raise JobInterrupted(job.job_id)

        def work() -> FileResult:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            source = Path(job.claimed_path)
            if changed := _changed_since_claim(job):
                return FileResult(input=job.source_name, error=changed)
            result = convert_file(source, out, settings, progress, display_name=job.source_name)
            if changed := _changed_since_claim(job):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                return FileResult(input=job.source_name, rows=result.rows, error=changed)
            return result

        try:
            return await asyncio.to_thread(work)
        except OSError as exc:
            raise StorageError(f"spool {out}: {exc.strerror or exc}") from exc

    def _settings(self, job: JobRecord) -> ConvertSettings:
        conf = self.config.convert
        schema_file = None
        if conf.schema_dir is not None and (conf.schema_dir / f"{job.record_type}.json").is_file():
            schema_file = conf.schema_dir / f"{job.record_type}.json"
        return ConvertSettings(
            record_type=load_record_type(job.record_type, schema_file),
            dataset_id=job.dataset_id,
            timestamp=chunk_timestamp(job),
            profile=load_profile(Path(job.profile)) if job.profile else Profile(),
            limits=ChunkLimits(conf.chunk_max_records, conf.chunk_max_bytes, conf.gzip_level),
            max_reject_ratio=conf.max_reject_ratio,
        )

    # -- delivering -------------------------------------------------------------------------

    async def _deliver(self, job: JobRecord) -> JobRecord:
        chunks = await self.ledger.run(Ledger.chunks_of, job.job_id)
        live = self.live[job.job_id]
        live.chunks_total = len(chunks)
        live.chunks_delivered = sum(c.state is ChunkState.DELIVERED for c in chunks)
        pending = [c for c in chunks if c.state is not ChunkState.DELIVERED]
        if any(c.state is ChunkState.FAILED for c in pending):
            return await self.fail(job, "a chunk was refused by the API (see the report)")
        if not await asyncio.to_thread(_all_intact, pending):
            job = await self._regenerate(job, pending)
            if job.state is not JobState.DELIVERING:
                return job
        outcomes = await asyncio.gather(
            *(self._deliver_chunk(job, chunk) for chunk in pending), return_exceptions=True
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for error in errors:
            if not isinstance(error, UploadError | asyncio.CancelledError):
                raise error
        terminal = [e for e in errors if isinstance(e, TerminalUploadError)]
        if terminal and not self.uploader.paused:
            return await self.fail(job, str(terminal[0]))
        if errors:
            raise DeliveryDeferred(str(errors[0]))
        return await self._transition(job, JobState.DELIVERED)

    async def _regenerate(self, job: JobRecord, pending: list[ChunkRecord]) -> JobRecord:
        """Rebuild lost or damaged chunk files; the bytes must match what the ledger recorded."""
        log.warning("job %s: regenerating %d chunk file(s)", job.job_id, len(pending))
        async with self._convert_slots:
            result = await self._convert_file(job)
        if result.error is not None:
            return await self.fail(job, f"regenerating chunks failed: {result.error}")
        for info in result.chunks:
            try:
                await self._record_chunk(job, info)
            except LedgerError as exc:
                return await self.fail(job, f"regenerated chunks differ from the recorded ones: {exc}")
        if not await asyncio.to_thread(_all_intact, pending):
            return await self.fail(job, "regenerated chunks differ from the recorded ones")
        return job

    async def _deliver_chunk(self, job: JobRecord, chunk: ChunkRecord) -> None:
        current = chunk.state

        async def on_created(upload_id: str) -> None:
            nonlocal current
            if current is ChunkState.CREATED:  # a fresh URL after a 403: record the new id too
                await self._chunk_to(job, chunk, ChunkState.CREATING)
            await self._chunk_to(job, chunk, ChunkState.CREATED, upload_id=upload_id)
            current = ChunkState.CREATED
            crashpoint(UPLOAD_CREATED)

        await self._chunk_to(job, chunk, ChunkState.CREATING)
        current = ChunkState.CREATING
        upload = ChunkUpload(
            path=Path(chunk.path),
            filename=chunk.filename,
            dataset_id=job.dataset_id,
            record_type=job.record_type,
            md5_b64=md5_b64(chunk.md5),
            size=chunk.bytes,
        )
        try:
            receipt = await self.uploader.upload(upload, on_created)
        except TerminalUploadError as exc:
            if not self.uploader.paused:
                await self._chunk_to(job, chunk, ChunkState.FAILED, error=str(exc))
            raise
        crashpoint(UPLOAD_PUT_DONE)
        self.live[job.job_id].chunks_delivered += 1
        await self._chunk_to(job, chunk, ChunkState.DELIVERED, upload_id=receipt.upload_id, receipt=receipt)

    async def _chunk_to(
        self,
        job: JobRecord,
        chunk: ChunkRecord,
        to: ChunkState,
        *,
        upload_id: str | None = None,
        error: str | None = None,
        receipt: UploadReceipt | None = None,
    ) -> None:
        """One chunk transition: the ledger first, then a structured log line and the event."""
        recorded_id = upload_id if to is ChunkState.CREATED else None
        await self.ledger.transition_chunk(
            job.job_id, chunk.chunk_index, to, upload_id=recorded_id, error=error
        )
        seconds = receipt.seconds if receipt is not None else None
        fields: dict[str, object] = {"event": "chunk", "job_id": job.job_id, "chunk": chunk.chunk_index}
        fields |= {"state": to.value, "chunk_file": chunk.filename}
        if upload_id is not None:
            fields["upload_id"] = upload_id
        if to is ChunkState.DELIVERED:
            fields |= {"records": chunk.records, "bytes": chunk.bytes, "seconds": round(seconds or 0.0, 3)}
        level = logging.ERROR if to is ChunkState.FAILED else logging.INFO
        detail = f": {error}" if error else ""
        log.log(level, "chunk %s: %s%s", chunk.filename, to.value, detail, extra=fields)
        delivered = to is ChunkState.DELIVERED
        self.emit(
            JobEvent(
                "chunk",
                job.job_id,
                to.value,
                chunk.chunk_index,
                records=chunk.records if delivered else 0,
                bytes=chunk.bytes if delivered else 0,
                seconds=seconds,
            )
        )

    # -- finishing --------------------------------------------------------------------------

    async def _finish(self, job: JobRecord) -> JobRecord:
        """Report, move the rejects and the source to done/ or failed/, then record the end."""
        delivered = job.state in (JobState.DELIVERED, JobState.ARCHIVED)
        done = delivered or job.state is JobState.DUPLICATE
        dest = self.config.done_dir if done else self.config.failed_dir
        if delivered:
            crashpoint(ARCHIVE_BEFORE)
        chunks = await self.ledger.run(Ledger.chunks_of, job.job_id)
        upload_ids = await self.ledger.run(Ledger.upload_ids, job.job_id)
        target = report_path(dest, job.job_id)
        rejects = await asyncio.to_thread(self._move_rejects, job, dest)
        report = build_report(job, chunks, upload_ids, rejects)
        await asyncio.to_thread(self._write_and_archive, job, dest, target, report)
        if job.state is JobState.DELIVERED:
            job = await self._transition(job, JobState.ARCHIVED, report_path=str(target))
        else:
            job = await self.ledger.run(Ledger.record_report, job.job_id, str(target))
        if not self.config.spool.keep_delivered or not delivered:
            await asyncio.to_thread(shutil.rmtree, self.spool_dir(job.job_id), True)
        log.info(
            "job %s (%s) finished: %s; report %s",
            job.job_id,
            job.source_name,
            job.state,
            target,
            extra={"event": "job", "job_id": job.job_id, "state": str(job.state), "report": str(target)},
        )
        return job

    def _move_rejects(self, job: JobRecord, dest: Path) -> Path | None:
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / f"{job.job_id}.rejects.ndjson"
        found = sorted(self.spool_dir(job.job_id).glob("*.rejects.ndjson"))
        if found:
            move_durable(found[0], final)  # the spool may be on another filesystem
        return final if final.exists() else None

    def _write_and_archive(self, job: JobRecord, dest: Path, target: Path, report: bytes) -> None:
        write_report(target, report)
        work = Path(job.claimed_path)
        if work.exists() or not (dest / work.name).exists():
            with contextlib.suppress(FileNotFoundError):
                archive(work, dest, job.job_id)


def _changed_since_claim(job: JobRecord) -> str | None:
    """Why the claimed file is no longer what was claimed (its writer kept a descriptor), if it is not.

    Its content hash was taken at the claim; converting other bytes under that identity would
    deliver rows the claim never saw, or lose some, while the report vouched for the hash."""
    try:
        st = os.stat(job.claimed_path)
    except FileNotFoundError:
        return f"{job.source_name}: the claimed file disappeared from the work area"
    now = (st.st_size, st.st_ino, st.st_mtime_ns)
    claimed = (job.size, job.inode, job.mtime_ns or st.st_mtime_ns)
    if now == claimed:
        return None
    return (
        f"{job.source_name}: changed after it was claimed ({job.size} bytes then, {st.st_size} now); "
        "something was still writing it. Drop it into the inbox again once it is complete"
    )


def _all_intact(chunks: list[ChunkRecord]) -> bool:
    """Whether every chunk file is on disk with the recorded size and SHA-256."""
    for chunk in chunks:
        path = Path(chunk.path)
        try:
            with path.open("rb") as fh:
                if os.fstat(fh.fileno()).st_size != chunk.bytes or sha256_fd(fh.fileno()) != chunk.sha256:
                    return False
        except FileNotFoundError:
            return False
    return True


def sweep_spool(spool_dir: Path, keep: set[str]) -> None:
    """At start: drop temp files in the directories of ``keep`` jobs, and every other job directory
    (left by a crash between archiving a job and deleting its chunks)."""
    if not spool_dir.is_dir():
        return
    for entry in spool_dir.iterdir():
        if not entry.is_dir():
            continue
        if entry.name in keep:
            remove_temp_files(entry)
        else:
            shutil.rmtree(entry, ignore_errors=True)
