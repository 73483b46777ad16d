"""The daemon's lifecycle: start safely, watch the inbox, run jobs, stop cleanly.

Start-up order matters after a crash: the ledger is opened first (its lock refuses a second
instance before anything is touched), then interrupted claims are adopted into the ledger, the
spool is swept of temp files and of directories no job owns, and every unfinished job resumes
from its recorded state. Only then does intake start.

Stopping (SIGTERM/SIGINT): intake stops at once, conversions are cancelled at their next batch
(the job converts again at the next start), uploads in flight get ``shutdown_grace_seconds`` to
finish, and whatever is left stays in the ledger to resume. The process exits 0. A second signal
exits at once: every state change is already a committed transaction, so nothing is lost.

Backpressure: new files are claimed only while the spool's undelivered bytes stay under
``spool.max_bytes`` and only a few jobs wait for conversion; nothing is ever evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bulkd import encode, patterns
from bulkd.config import Config, UploadSection
from bulkd.durable import probe_writable, remove_stale_probes, remove_temp_files
from bulkd.errors import LedgerError, StorageError
from bulkd.hubsim import RunningSimulator, SimulatorConfig, start_simulator
from bulkd.inbox import ClaimedFile, Inbox, InboxSettings, Route, forget_claim
from bulkd.jobs import DeliveryDeferred, JobEvent, JobInterrupted, JobRunner, sweep_spool
from bulkd.ledger import ACTIVE_STATES, AsyncLedger, JobRecord, JobState, Ledger
from bulkd.secret import Secret
from bulkd.upload import Uploader, UploadSettings

__all__ = ["EXIT_INCOMPLETE", "EXIT_OK", "Service", "run_service"]

log = logging.getLogger("bulkd.service")

EXIT_OK = 0
EXIT_INCOMPLETE = 1
"""``--once`` finished with a failed job or with deliveries left for a later run."""
EXIT_SECOND_SIGNAL = 130
_UPLOAD_TUNING = tuple(
    sorted(
        {f.name for f in dataclasses.fields(UploadSettings)}
        & set(UploadSection.model_fields) - {"api_url", "token", "allowed_url_hosts", "require_https"}
    )
)
_NATIVE_PARTS = (("NDJSON writer", encode.NATIVE), ("scans of cell bytes", patterns.NATIVE))
"""bulkd's optional C extensions, named as the start-up warning names a missing one."""
_QUEUED_CONVERSIONS = 2
"""Jobs claimed beyond those converting: enough to keep converters busy, few enough to stay fair."""


def run_service(
    config: Config, *, once: bool = False, sample: bool = False, addons: Sequence[Addon] = ()
) -> int:
    """Run the daemon on uvloop until stopped (or, with ``once``, until the inbox is drained)."""
    service = Service(config, addons)
    runner = _event_loop_runner()
    with runner:
        return runner.run(service.run(once=once, sample=sample))


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


Addon = Callable[["Service"], AbstractAsyncContextManager[object]]
"""Something that runs beside the daemon for its whole life, given the started service."""


@dataclass(frozen=True, slots=True)
class Parts:
    """What a started service is made of (the status server reads these)."""

    ledger: AsyncLedger
    uploader: Uploader
    runner: JobRunner
    inbox: Inbox
    simulator: RunningSimulator | None


class Service:
    """One daemon instance. The status server reads its public attributes; nothing else writes them."""

    def __init__(self, config: Config, addons: Sequence[Addon] = ()) -> None:
        self.config = config
        self.addons = tuple(addons)
        """Started after the core parts, stopped before them (the status server is one)."""
        self.stopping = threading.Event()
        """Set on the first signal; conversion threads poll it between batches."""
        self.started = time.time()
        self._parts: Parts | None = None
        self.intake_paused: str | None = None
        """Why new files are not being claimed right now (spool full, disk trouble), if they are not."""
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[JobRecord]] = {}
        self._retry_at: dict[str, float] = {}
        self._refused: set[bytes] = set()
        self._incomplete = False
        self._signals = 0
        self._hold_intake_until = 0.0
        self._side_tasks: set[asyncio.Task[None]] = set()

    # -- public surface ---------------------------------------------------------------------

    @property
    def parts(self) -> Parts:
        """The running components; only valid once :meth:`run` has started them."""
        if self._parts is None:
            raise RuntimeError("the service has not started")
        return self._parts

    @property
    def started_up(self) -> bool:
        return self._parts is not None

    @property
    def queue_depth(self) -> int:
        """Files seen in the inbox and not yet claimed, plus jobs waiting to convert."""
        if self._parts is None:
            return 0
        return len(self._parts.inbox.candidates - self._refused) + self._waiting_to_convert()

    def _waiting_to_convert(self) -> int:
        return sum(j.phase is JobState.CLAIMED for j in self.parts.runner.live.values())

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        self.stopping.set()
        self._stop.set()
        if self._parts is not None:
            self._parts.uploader.stop_starting()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, once: bool = False, sample: bool = False) -> int:
        """Serve until stopped; returns the process exit status."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            async with AsyncExitStack() as stack:
                await self._start(stack)
                if sample:
                    await asyncio.to_thread(self._drop_sample)
                await self._serve(once)
                await self._drain()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return EXIT_INCOMPLETE if once and self._incomplete else EXIT_OK

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            log.warning("second %s: exiting at once (the ledger is consistent; work resumes at start)", name)
            logging.shutdown()
            os._exit(EXIT_SECOND_SIGNAL)
        grace = self.config.service.shutdown_grace_seconds
        log.info("%s: stopping intake; in-flight uploads get %.0fs to finish", name, grace)
        self.request_stop()

    async def _start(self, stack: AsyncExitStack) -> None:
        conf = self.config
        await asyncio.to_thread(self._prepare_directories)
        ledger = await AsyncLedger.open(conf.state_dir)
        stack.push_async_callback(ledger.close)
        # Only now, holding the instance lock: temp files of a crashed report or archive move,
        # and named probes of a process killed while probing a directory.
        for directory in (conf.done_dir, conf.failed_dir):
            await asyncio.to_thread(remove_temp_files, directory)
        for _key, directory in self._directories():
            await asyncio.to_thread(remove_stale_probes, directory)
        simulator = await self._simulator(stack)
        upload_settings = self._upload_settings(simulator)
        uploader = await stack.enter_async_context(Uploader(upload_settings))
        runner = JobRunner(conf, ledger, uploader, stopping=self.stopping)
        inbox = Inbox(self._inbox_settings())
        self._parts = Parts(ledger, uploader, runner, inbox, simulator)
        if simulator is not None:
            runner.listeners.append(self._report_dry_run)
        for claimed in await inbox.prepare():
            await self._adopt(claimed)
        active = await ledger.run(Ledger.jobs_in_state, *ACTIVE_STATES)
        unreported = await ledger.run(Ledger.unreported_jobs)
        if not conf.spool.keep_delivered:
            keep = {j.job_id for j in (*active, *unreported)}
            await asyncio.to_thread(sweep_spool, conf.spool_dir, keep)
        for addon in self.addons:
            await stack.enter_async_context(addon(self))
        for job in [*active, *unreported]:
            log.info("resuming job %s (%s) in state %s", job.job_id, job.source_name, job.state)
            self._start_job(job.job_id)
        log.info(
            "bulkd running: inbox %s (layout <dataset_id>/<record_type>/<file>%s), uploads to %s",
            conf.inbox_dir,
            ", or routes" if conf.inbox.routes else "",
            "the embedded simulator" if conf.uses_simulator else upload_settings.api_url,
        )
        missing = [name for name, built in _NATIVE_PARTS if not built]
        if missing:
            log.warning(
                "bulkd's C %s %s not built (no C compiler at install), so slower Arrow kernels do "
                "that work; reinstall bulkd where gcc or cc is available",
                " and ".join(missing),
                "was" if len(missing) == 1 else "were",
            )

    def _directories(self) -> tuple[tuple[str, Path], ...]:
        """Every directory the daemon writes in, with the config key that names it."""
        conf = self.config
        return (
            ("inbox.dir", conf.inbox_dir),
            ("inbox.work_dir", conf.work_dir),
            ("inbox.done_dir", conf.done_dir),
            ("inbox.failed_dir", conf.failed_dir),
            ("spool.dir", conf.spool_dir),
            ("state.dir", conf.state_dir),
        )

    def _prepare_directories(self) -> None:
        for key, path in self._directories():
            try:
                path.mkdir(parents=True, exist_ok=True)
                probe_writable(path)
            except OSError as exc:
                raise StorageError(
                    f"{key} = {path} is not a writable directory: {exc.strerror or exc}; "
                    "bulkd needs it writable (mount a volume there)"
                ) from None

    async def _simulator(self, stack: AsyncExitStack) -> RunningSimulator | None:
        """The embedded simulator when no API is configured (a dry run), else None."""
        if not self.config.uses_simulator:
            return None
        simulator = await self._start_simulator(self.config.api_token or Secret(secrets.token_urlsafe(24)))
        stack.push_async_callback(simulator.close)
        log.info(
            "no upload.api_url configured: dry run against the embedded Lexer simulator at %s "
            "(dataset counts: GET %s/v1/_sim/datasets/<dataset_id>)",
            simulator.base_url,
            simulator.base_url,
        )
        return simulator

    def _upload_settings(self, simulator: RunningSimulator | None) -> UploadSettings:
        up = self.config.upload
        hosts: tuple[str, ...]
        if simulator is not None:
            api_url, token = simulator.base_url, simulator.config.token
            hosts, https = (), False
        elif up.api_url is not None and self.config.api_token is not None:
            api_url, token = up.api_url, self.config.api_token
            hosts, https = up.allowed_url_hosts, up.require_https
        else:  # load_config refuses an API without a token
            raise AssertionError("an API URL without a token passed configuration")
        # Every other [upload] key is an UploadSettings field of the same name and meaning.
        tuning = {name: getattr(up, name) for name in _UPLOAD_TUNING}
        return UploadSettings(
            api_url=api_url, token=token, allowed_url_hosts=hosts, require_https=https, **tuning
        )

    async def _start_simulator(self, token: Secret) -> RunningSimulator:
        sim = self.config.simulator
        config = SimulatorConfig(
            token=token,
            store_dir=self.config.simulator_store_dir,
            host=sim.host,
            port=sim.port,
            url_ttl_seconds=sim.url_ttl_seconds,
        )
        try:
            return await start_simulator(config)
        except OSError as exc:
            raise StorageError(
                f"the embedded simulator cannot listen on {sim.host}:{sim.port} ({exc.strerror or exc}); "
                "set simulator.port (0 picks a free one)"
            ) from None

    def _inbox_settings(self) -> InboxSettings:
        conf = self.config
        routes = tuple(
            Route(r.glob, r.dataset_id, r.record_type, str(r.profile) if r.profile else None)
            for r in conf.inbox.routes
        )
        return InboxSettings(
            root=conf.inbox_dir,
            work_dir=conf.work_dir,
            settle_seconds=conf.inbox.settle_seconds,
            poll_interval=conf.inbox.poll_interval,
            routes=routes,
            max_depth=conf.inbox.max_depth,
        )

    def _report_dry_run(self, event: JobEvent) -> None:
        """In a dry run, say what the simulated dataset now holds once a job is archived."""
        if event.kind == "job" and event.state == JobState.ARCHIVED.value:
            task = asyncio.create_task(self._log_dataset(event.job_id))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)

    async def _log_dataset(self, job_id: str) -> None:
        parts = self.parts
        job = await parts.ledger.run(Ledger.get_job, job_id)
        if parts.simulator is None:
            return
        await parts.simulator.drain()
        stats = parts.simulator.stats(job.dataset_id)
        log.info(
            "dry run: simulated dataset %s now holds %d records from %d upload(s); its load refused %d",
            job.dataset_id,
            stats.loaded,
            stats.uploads,
            stats.rejected,
            extra={"event": "simulator", "dataset_id": job.dataset_id, "loaded": stats.loaded},
        )

    def _drop_sample(self) -> None:
        """Put the bundled sample into the inbox (renamed into place, as a careful writer does)."""
        target_dir = self.config.inbox_dir / "demo" / "customer_record"
        target_dir.mkdir(parents=True, exist_ok=True)
        sample = resources.files("bulkd").joinpath("samples/customers.csv")
        stamp = time.strftime("%Y%m%dT%H%M%S")
        partial = target_dir / f"customers-{stamp}.csv.part"
        with resources.as_file(sample) as source:
            shutil.copyfile(source, partial)
        partial.rename(target_dir / f"customers-{stamp}.csv")
        log.info("dropped the bundled sample into %s", target_dir)

    # -- the loop ---------------------------------------------------------------------------

    async def _serve(self, once: bool) -> None:
        while not self._stop.is_set():
            await self._reap()
            self._resume_deferred(once)
            await self._intake()
            if once and self._drained():
                log.info("inbox drained (--once)")
                return
            await self._wait(self.config.inbox.poll_interval)

    def _drained(self) -> bool:
        waiting = self.parts.inbox.candidates - self._refused
        return not (self._tasks or self._retry_at or waiting)

    async def _wait(self, seconds: float) -> None:
        """Sleep until the next poll, a stop, or a job finishing (whichever comes first)."""
        stop = asyncio.ensure_future(self._stop.wait())
        waiters: set[asyncio.Future[Any]] = {stop, *self._tasks.values()}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    async def _intake(self) -> None:
        inbox = self.parts.inbox
        entries = await inbox.poll()
        for entry in entries:
            if self._stop.is_set() or not await self._intake_open():
                return
            try:
                claimed = await inbox.claim(entry)
            except StorageError as exc:
                self.intake_paused = f"claiming failed: {exc}"
                log.error("intake paused: %s", exc)
                return
            if claimed is None:
                self._refused.add(entry.rel)
                continue
            self._refused.discard(entry.rel)
            await self._adopt(claimed)
            self._start_job(claimed.job_id)

    async def _intake_open(self) -> bool:
        if time.monotonic() < self._hold_intake_until:
            return False
        if self._waiting_to_convert() >= self.config.convert.parallel_files + _QUEUED_CONVERSIONS:
            return False
        pending = await self.parts.ledger.run(Ledger.pending_chunk_bytes)
        if pending >= self.config.spool.max_bytes:
            if self.intake_paused is None:
                log.warning("intake paused: the spool holds %d undelivered bytes (spool.max_bytes)", pending)
            self.intake_paused = "the spool is full (spool.max_bytes)"
            return False
        self.intake_paused = None
        return True

    async def _adopt(self, claimed: ClaimedFile) -> None:
        """Record a claimed file as a job (unless a crash left it recorded), then drop its claim record."""
        ledger = self.parts.ledger
        if await ledger.run(Ledger.find_job, claimed.job_id) is None:
            await ledger.run(
                Ledger.add_job,
                job_id=claimed.job_id,
                source_name=claimed.source_name,
                dataset_id=claimed.route.dataset_id,
                record_type=claimed.route.record_type,
                profile=claimed.route.profile,
                content_sha256=claimed.sha256,
                size=claimed.size,
                device=claimed.device,
                inode=claimed.inode,
                claimed_path=str(claimed.work_path),
                mtime_ns=claimed.mtime_ns,
            )
            log.info(
                "claimed %s as job %s (%d bytes)",
                claimed.source_name,
                claimed.job_id,
                claimed.size,
                extra={"event": "job", "job_id": claimed.job_id, "state": "claimed"},
            )
            self.parts.runner.emit(JobEvent("job", claimed.job_id, JobState.CLAIMED.value))
        await asyncio.to_thread(forget_claim, self.config.work_dir, claimed.job_id)

    def _start_job(self, job_id: str) -> None:
        if job_id in self._tasks:
            return
        self._retry_at.pop(job_id, None)
        self._tasks[job_id] = asyncio.create_task(self.parts.runner.run(job_id), name=f"job-{job_id}")

    async def _reap(self) -> None:
        """Collect finished job tasks and decide what each outcome means."""
        for job_id, task in list(self._tasks.items()):
            if not task.done():
                continue
            del self._tasks[job_id]
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                if task.result().state is JobState.FAILED:
                    self._incomplete = True
            elif isinstance(exc, DeliveryDeferred):
                self._defer(job_id, str(exc))
            elif isinstance(exc, JobInterrupted):
                continue
            elif isinstance(exc, StorageError | OSError):
                self.intake_paused = f"storage trouble: {exc}"
                self._hold_intake_until = time.monotonic() + self.config.upload.retry_delivery_after
                log.error("job %s: %s; intake paused, retrying later", job_id, exc)
                self._defer(job_id, str(exc))
            elif isinstance(exc, LedgerError):
                log.critical("the ledger failed (%s); stopping so that no state is guessed", exc)
                self._incomplete = True
                self.request_stop()
            else:
                log.error("job %s: unexpected error", job_id, exc_info=exc)
                self._incomplete = True

    def _defer(self, job_id: str, why: str) -> None:
        self._incomplete = True
        if self.parts.uploader.paused:
            log.error("job %s waits: uploads are paused (fix the API token, then restart bulkd)", job_id)
            return
        delay = self.config.upload.retry_delivery_after
        log.warning("job %s deferred: %s; trying again in %.0fs", job_id, why, delay)
        self._retry_at[job_id] = time.monotonic() + delay

    def _resume_deferred(self, once: bool) -> None:
        if once:
            self._retry_at.clear()  # --once leaves them for the next run (exit status 1)
            return
        now = time.monotonic()
        for job_id, when in list(self._retry_at.items()):
            if when <= now:
                self._start_job(job_id)

    async def _drain(self) -> None:
        """Give in-flight work the grace period, then cancel what is left (it resumes at next start)."""
        if self._side_tasks:
            await asyncio.wait(self._side_tasks, timeout=5.0)
        if not self._tasks:
            return
        grace = self.config.service.shutdown_grace_seconds
        _, pending = await asyncio.wait(self._tasks.values(), timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._reap()
        if pending:
            log.info("%d job(s) checkpointed; they resume at the next start", len(pending))
