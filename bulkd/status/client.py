"""``bulkd status``: what the daemon is doing, as a terminal table or JSON.

It asks the running daemon's status API at the configured ``status.host``/``status.port`` (with
``BULKD_STATUS_TOKEN`` when set). When nothing answers there (no daemon, or one whose API is
disabled or elsewhere) it reads the ledger through :class:`~bulkd.ledger.ReadOnlyLedger`: no
instance lock, no writes, so a daemon starting meanwhile is not refused as a second instance and
a running one does not lock the reader out. Either way the jobs look the same, because both go
through :func:`job_view`.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from bulkd.config import Config
from bulkd.errors import BulkdError
from bulkd.ledger import DB_NAME, ReadOnlyLedger
from bulkd.status.views import job_view, rejects_by_rule_text

__all__ = ["StatusReport", "check_health", "fetch_report", "render", "status_base_url"]

_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class _NoDaemon(Exception):
    """Nothing listens at the status address."""


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What ``bulkd status`` prints; ``overview`` is None when read from the ledger."""

    source: Literal["daemon", "ledger"]
    jobs: list[dict[str, Any]]
    overview: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "overview": self.overview, "jobs": self.jobs}


def status_base_url(config: Config) -> str:
    """Where the daemon's status server answers on this machine."""
    host = _ANY_ADDRESS.get(config.status.host, config.status.host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{config.status.port}"


def fetch_report(config: Config, *, limit: int = 20, timeout: float = 3.0) -> StatusReport:
    """From the daemon's API, or from the ledger when no daemon answers.

    Raises:
        BulkdError: the daemon answered with an error.
        LedgerError: the ledger exists but cannot be read (schema of another bulkd, corrupt).
    """
    if config.status.enabled:
        try:
            return _from_daemon(config, limit, timeout)
        except _NoDaemon:
            pass
    return _from_ledger(config, limit)


def check_health(config: Config, timeout: float = 3.0) -> bool:
    """Whether the daemon's ``/healthz`` answers 200 (the container's health check)."""
    try:
        _get(status_base_url(config) + "/healthz", config, timeout)
    except (_NoDaemon, BulkdError):
        return False
    return True


def _from_daemon(config: Config, limit: int, timeout: float) -> StatusReport:
    base = status_base_url(config)
    overview = _get(f"{base}/api/overview", config, timeout)
    jobs = _get(f"{base}/api/jobs?limit={limit}", config, timeout)["jobs"]
    return StatusReport("daemon", jobs, overview)


def _get(url: str, config: Config, timeout: float) -> Any:
    headers = {"Accept": "application/json"}
    if config.status_token is not None:
        headers["Authorization"] = f"Bearer {config.status_token.reveal()}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = "; set BULKD_STATUS_TOKEN to the daemon's status token" if exc.code == 401 else ""
        raise BulkdError(f"the status server answered {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise _NoDaemon(url) from exc


def _from_ledger(config: Config, limit: int) -> StatusReport:
    if not (config.state_dir / DB_NAME).exists():
        return StatusReport("ledger", [], None)  # no daemon ever ran here: nothing to show yet
    ledger = ReadOnlyLedger(config.state_dir)
    try:
        with ledger.snapshot():  # the listing and its summaries from one moment, mid-write or not
            summaries = [ledger.job_summary(job.job_id) for job in ledger.list_jobs(limit=limit)]
    finally:
        ledger.close()
    now = time.time()
    return StatusReport("ledger", [job_view(s, now=now) for s in summaries], None)


def render(report: StatusReport) -> None:
    """Print the report as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped or logged: do not squeeze columns into 80
    if report.overview is None:
        console.print("[dim]no daemon answering: read from the ledger[/dim]")
    else:
        console.print(_overview_line(report.overview))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in _COLUMNS:
        table.add_column(name, justify=justify)
    for job in report.jobs:
        table.add_row(*_row(job))
    if report.jobs:
        console.print(table)
    else:
        console.print("no jobs yet")


_COLUMNS: tuple[tuple[str, Literal["left", "right"]], ...] = (
    ("file", "left"),
    ("state", "left"),
    ("progress", "right"),
    ("rows", "right"),
    ("rows/s", "right"),
    ("records", "right"),
    ("rejected", "right"),
    ("chunks", "right"),
    ("reject reasons", "left"),
)


def _row(job: dict[str, Any]) -> tuple[str, ...]:
    progress = job["progress"]
    chunks = job["chunks"]
    return (
        job["source"],
        job["state"],
        f"{progress['fraction'] * 100:.0f}% {progress['stage']}",
        _count(job["rows"]),
        f"{job['rows_per_second']:,.0f}",
        _count(job["records"]),
        _count(job["rejected"]),
        f"{chunks['delivered']}/{chunks['total']}",
        rejects_by_rule_text(job["rejects_by_rule"]),
    )


def _overview_line(overview: dict[str, Any]) -> str:
    up = overview["uploader"]
    intake = overview["intake"]
    intake_text = "stopping" if intake["stopping"] else intake["paused"] or "open"
    return (
        f"bulkd {overview['version']} up {overview['uptime_seconds']:.0f}s · intake {intake_text} · "
        f"queue {intake['queue_depth']} · spool {overview['spool']['pending_bytes']:,} B · "
        f"uploader {up['state']} ({up['in_flight']} in flight, {up['retries_total']} retries)"
    )


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"
