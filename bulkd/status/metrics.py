"""Prometheus metrics for the daemon, on a registry of its own (never the global one).

Two kinds of numbers, following Prometheus' idiom:

* **Counters moved by job events** (:meth:`Metrics.on_event`, a :class:`~bulkd.jobs.JobRunner`
  listener): files finished by end state, rows / records / rejects when a conversion ends, chunks
  written / delivered / failed, delivered records and bytes, and the upload latency histogram.
  They count what happened since this process started, so after a run they add up to the job
  reports of the jobs that ran in it.
* **Gauges read at scrape time** (:class:`_LiveCollector`): files in each active state, queue
  depth, spool bytes, intake and uploader state, and the uploader's own counters (requests,
  retries by cause), which :class:`~bulkd.upload.UploaderStats` already keeps.

The values that need the ledger (active files, spool bytes) are fetched by :meth:`Metrics.refresh`
just before each scrape, because a collector runs synchronously and must not touch the ledger
thread from the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bulkd import __version__
from bulkd.jobs import JobEvent
from bulkd.ledger import ACTIVE_STATES, FINISHED_STATES, ChunkState, JobState, Ledger

if TYPE_CHECKING:
    from bulkd.service import Service

__all__ = ["UPLOAD_SECONDS_BUCKETS", "Metrics", "Totals"]

log = logging.getLogger("bulkd.status")

UPLOAD_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Create + PUT of one chunk: tens of milliseconds on loopback, minutes for a 1 GiB chunk."""


@dataclass(slots=True)
class Totals:
    """Plain running totals the throughput sampler differentiates (Prometheus counters are write-only)."""

    rows_converted: int = 0
    records_delivered: int = 0
    bytes_delivered: int = 0


@dataclass(slots=True)
class _Snapshot:
    """Ledger-derived values, refreshed before each scrape."""

    files: Mapping[JobState, int] = field(default_factory=dict)
    spool_bytes: int = 0


class Metrics:
    """The daemon's metrics; register :meth:`on_event` as a job listener and call :meth:`scrape`."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.totals = Totals()
        self.service = service
        self.snapshot = _Snapshot()
        """Ledger-derived values as of the last :meth:`refresh`."""
        self._pending: set[asyncio.Task[None]] = set()
        reg = self.registry
        self.files_finished = Counter(
            "bulkd_files_finished", "Files that reached an end state, by state", ["state"], registry=reg
        )
        self.rows = Counter("bulkd_rows", "Input rows read by finished conversions", registry=reg)
        self.records = Counter("bulkd_records", "Records written by finished conversions", registry=reg)
        self.rejected = Counter("bulkd_rejected_rows", "Input rows rejected", registry=reg)
        self.rejects = Counter("bulkd_rejects", "Rejects by rule", ["rule"], registry=reg)
        self.chunks = Counter(
            "bulkd_chunks", "Chunks written, delivered or refused, by state", ["state"], registry=reg
        )
        self.chunk_bytes = Counter(
            "bulkd_chunk_bytes", "Gzip chunk bytes written or delivered, by state", ["state"], registry=reg
        )
        self.records_delivered = Counter(
            "bulkd_records_delivered", "Records in delivered chunks", registry=reg
        )
        self.upload_seconds = Histogram(
            "bulkd_upload_seconds",
            "Time to deliver one chunk (create + PUT, retries included)",
            buckets=UPLOAD_SECONDS_BUCKETS,
            registry=reg,
        )
        Gauge("bulkd_build_info", "bulkd version", ["version"], registry=reg).labels(__version__).set(1)
        Gauge("bulkd_start_time_seconds", "When the daemon started (Unix time)", registry=reg).set(
            service.started
        )
        for state in FINISHED_STATES:
            self.files_finished.labels(state.value)
        for chunk_state in (ChunkState.WRITTEN, ChunkState.DELIVERED, ChunkState.FAILED):
            self.chunks.labels(chunk_state.value)
        reg.register(_LiveCollector(self))

    # -- events -----------------------------------------------------------------------------

    def on_event(self, event: JobEvent) -> None:
        """Count one job or chunk transition (runs on the event loop; must be quick)."""
        if event.kind == "chunk":
            self._on_chunk(event)
            return
        state = JobState(event.state)
        if state in FINISHED_STATES:
            self.files_finished.labels(state.value).inc()
        if state in (JobState.CONVERTED, JobState.FAILED):
            self._spawn(self._count_conversion(event.job_id, state))

    def _on_chunk(self, event: JobEvent) -> None:
        self.chunks.labels(event.state).inc()
        if event.state != ChunkState.DELIVERED.value:
            return
        self.chunk_bytes.labels(event.state).inc(event.bytes)
        self.records_delivered.inc(event.records)
        self.totals.records_delivered += event.records
        self.totals.bytes_delivered += event.bytes
        if event.seconds is not None:
            self.upload_seconds.observe(event.seconds)

    async def _count_conversion(self, job_id: str, state: JobState) -> None:
        """Add a finished conversion's tallies (a job failing after conversion was counted already)."""
        ledger = self.service.parts.ledger
        job = await ledger.run(Ledger.get_job, job_id)
        if state is JobState.FAILED and job.records is not None:
            return
        self.rows.inc(job.rows or 0)
        self.totals.rows_converted += job.rows or 0
        self.records.inc(job.records or 0)
        self.rejected.inc(job.rejected or 0)
        for rule, count in job.rejects_by_rule.items():
            self.rejects.labels(rule).inc(count)
        if state is JobState.CONVERTED:
            summary = await ledger.run(Ledger.job_summary, job_id)
            self.chunks.labels(ChunkState.WRITTEN.value).inc(summary.chunks)
            self.chunk_bytes.labels(ChunkState.WRITTEN.value).inc(summary.bytes)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("metrics: could not count a conversion: %s", task.exception())

    async def settle(self) -> None:
        """Wait for counting tasks still reading the ledger (before the ledger closes)."""
        if self._pending:
            await asyncio.wait(list(self._pending))

    # -- scraping ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read what the gauges need from the ledger."""
        ledger = self.service.parts.ledger
        active = await ledger.run(Ledger.jobs_in_state, *ACTIVE_STATES)
        counts = dict.fromkeys(ACTIVE_STATES, 0)
        for job in active:
            counts[job.state] += 1
        self.snapshot = _Snapshot(counts, await ledger.run(Ledger.pending_chunk_bytes))

    async def scrape(self) -> bytes:
        """The exposition text, current as of now."""
        await self.refresh()
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Gauges and uploader counters read from the running service at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        service = self._metrics.service
        snapshot = self._metrics.snapshot
        files = GaugeMetricFamily("bulkd_files", "Files in each active state", labels=["state"])
        for state in ACTIVE_STATES:
            files.add_metric([state.value], snapshot.files.get(state, 0))
        yield files
        yield _gauge(
            "bulkd_spool_bytes", "Bytes of chunks written and not yet delivered", snapshot.spool_bytes
        )
        yield _gauge("bulkd_queue_depth", "Files waiting to be claimed or converted", service.queue_depth)
        yield _gauge(
            "bulkd_intake_paused", "1 while new files are not claimed", service.intake_paused is not None
        )
        if service.started_up:
            yield from _uploader_metrics(service)


def _uploader_metrics(service: Service) -> Iterable[Metric]:
    uploader = service.parts.uploader
    stats = uploader.stats
    yield _gauge("bulkd_uploads_in_flight", "Chunks being uploaded now", stats.in_flight)
    yield _gauge("bulkd_uploads_paused", "1 after the API refused the token (401)", uploader.paused)
    yield _counter("bulkd_upload_requests", "HTTP requests started (creates and PUTs)", stats.attempts)
    yield _counter(
        "bulkd_upload_bytes_sent", "Body bytes written, failed attempts included", stats.bytes_sent
    )
    yield _counter(
        "bulkd_upload_retries_denied", "Retries refused by an empty retry budget", stats.retries_denied
    )
    retries = CounterMetricFamily("bulkd_upload_retries", "Upload retries by cause", labels=["cause"])
    for cause, count in sorted(stats.retries.items()):
        retries.add_metric([cause], count)
    yield retries


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))
