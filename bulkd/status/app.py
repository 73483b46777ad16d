"""The status server's routes: a read-only aiohttp application over a running :class:`Service`.

Routes (``GET`` and ``HEAD`` only; anything else is 405)::

    /                           the dashboard (static, shipped in the package)
    /static/{name}              its script and style sheet
    /healthz                    the event loop answers                        (no token needed)
    /readyz                     ledger, spool, API and intake are usable      (no token needed)
    /metrics                    Prometheus exposition
    /api/overview               service, intake, spool, uploader and the throughput window
    /api/jobs                   jobs, newest first (?state=a,b&limit=&offset=)
    /api/jobs/{id}              one job with its chunks and every upload id
    /api/jobs/{id}/rejects      reject reasons grouped by field and rule, with line numbers

Security: when a status token is configured every route but the probes and the static files
needs ``Authorization: Bearer <token>``, compared in constant time. Every body is scrubbed of
the known secrets and of URL query strings before it leaves (:func:`bulkd.redact.redact_text`),
and documents carry no cell values. Responses say ``no-store`` and send a strict CSP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from yarl import URL

from bulkd import __version__
from bulkd.config import Config
from bulkd.durable import probe_writable
from bulkd.errors import LedgerError
from bulkd.ledger import JobState, JobSummary, Ledger
from bulkd.redact import redact_text, redact_url
from bulkd.secret import Secret
from bulkd.status.metrics import Metrics
from bulkd.status.throughput import Throughput
from bulkd.status.views import chunk_view, group_rejects, job_view, uploader_view

if TYPE_CHECKING:
    from bulkd.service import Service

__all__ = ["JOB_ID_PATTERN", "build_app", "find_rejects"]

JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/favicon.ico"})
_STATIC = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_MAX_LIMIT = 500
_REJECT_LINES = 100
_API_CHECK_TTL = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Api:
    """Request handlers; everything they read belongs to the service or the metrics."""

    def __init__(self, service: Service, metrics: Metrics, throughput: Throughput) -> None:
        self.service = service
        self.metrics = metrics
        self.throughput = throughput
        config = service.config
        self.token = config.status_token
        self.secrets: tuple[Secret, ...] = tuple(s for s in (config.status_token, config.api_token) if s)
        self._api_check: tuple[float, str] = (0.0, "unknown")
        self._rejects_cache: dict[str, tuple[tuple[int, int], dict[str, object]]] = {}
        package = resources.files("bulkd.status").joinpath("static")
        self.files = {name: package.joinpath(name).read_bytes() for name in (*_STATIC, "index.html")}

    # -- plumbing ---------------------------------------------------------------------------

    def scrub(self, body: bytes) -> bytes:
        """Last line of defence: no known secret and no URL query string leaves in a body."""
        return redact_text(body.decode("utf-8"), self.secrets).encode("utf-8")

    def json(self, doc: object, status: int = 200) -> web.Response:
        return web.Response(
            body=self.scrub(orjson.dumps(doc)), status=status, content_type="application/json"
        )

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bearer token check (constant time), then security headers on every answer."""
        protected = request.path not in _OPEN_PATHS and not request.path.startswith("/static/")
        if protected and self.token is not None and not self.token.matches(_bearer(request)):
            response: web.StreamResponse = self.json({"error": "a bearer token is required"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="bulkd"'
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = self.json({"error": exc.reason}, exc.status)
        response.headers.update(
            {
                "Cache-Control": "no-store",
                "Content-Security-Policy": _CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY",
            }
        )
        return response

    # -- pages ------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.files["index.html"], content_type="text/html", charset="utf-8")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound(reason="not found")
        return web.Response(body=self.files[name], content_type=_STATIC[name], charset="utf-8")

    # -- probes and metrics -----------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return self.json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self._readiness()
        ready = all(value == "ok" for value in checks.values())
        return self.json({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def _readiness(self) -> dict[str, str]:
        service = self.service
        checks = {"service": "stopping" if service.stopping.is_set() else "ok"}
        try:
            await service.parts.ledger.run(Ledger.pending_chunk_bytes)
            checks["ledger"] = "ok"
        except LedgerError:
            checks["ledger"] = "unavailable"
        writable = await asyncio.to_thread(_writable, service.config.spool_dir)
        checks["spool"] = "ok" if writable else "not writable"
        checks["api"] = (
            "paused: the API refused the token" if service.parts.uploader.paused else await self._api()
        )
        return checks

    async def _api(self) -> str:
        """Whether the upload API accepts TCP connections (cached for a few seconds)."""
        checked_at, verdict = self._api_check
        if time.monotonic() - checked_at < _API_CHECK_TTL:
            return verdict
        url = URL(self.service.parts.uploader.settings.api_url)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(url.host, url.port), timeout=3.0)
            writer.close()
            verdict = "ok"
        except (OSError, TimeoutError):
            verdict = "unreachable"
        self._api_check = (time.monotonic(), verdict)
        return verdict

    async def metrics_text(self, request: web.Request) -> web.Response:
        body = await self.metrics.scrape()
        return web.Response(body=self.scrub(body), content_type="text/plain", charset="utf-8")

    # -- the API ----------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        service = self.service
        parts = service.parts
        pending = await parts.ledger.run(Ledger.pending_chunk_bytes)
        phases: dict[str, int] = {}
        for live in parts.runner.live.values():
            phases[live.phase.value] = phases.get(live.phase.value, 0) + 1
        target = (
            "embedded simulator"
            if parts.simulator is not None
            else redact_url(str(URL(parts.uploader.settings.api_url)))
        )
        return self.json(
            {
                "version": __version__,
                "now": time.time(),
                "started_at": service.started,
                "uptime_seconds": round(time.time() - service.started, 1),
                "intake": {
                    "paused": service.intake_paused,
                    "queue_depth": service.queue_depth,
                    "stopping": service.stopping.is_set(),
                },
                "spool": {"pending_bytes": pending, "max_bytes": service.config.spool.max_bytes},
                "running": phases,
                "uploader": uploader_view(
                    parts.uploader.stats,
                    paused=parts.uploader.paused,
                    concurrency=parts.uploader.settings.concurrency,
                    recent_retries=self.throughput.recent_retries(),
                    target=target,
                ),
                "throughput": self.throughput.as_json(),
            }
        )

    async def jobs(self, request: web.Request) -> web.Response:
        states = _states(request.query.get("state", ""))
        limit = _int_param(request, "limit", 50, 1, _MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0, 1 << 31)
        summaries = await self.service.parts.ledger.run(_summaries, states, limit, offset)
        live, now = self.service.parts.runner.live, time.time()
        docs = [job_view(s, live.get(s.job.job_id), now) for s in summaries]
        return self.json({"jobs": docs, "limit": limit, "offset": offset})

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        ledger = self.service.parts.ledger
        if await ledger.run(Ledger.find_job, job_id) is None:
            raise web.HTTPNotFound(reason="unknown job")
        summary = await ledger.run(Ledger.job_summary, job_id)
        chunks = await ledger.run(Ledger.chunks_of, job_id)
        upload_ids = await ledger.run(Ledger.upload_ids, job_id)
        doc = job_view(summary, self.service.parts.runner.live.get(job_id))
        doc["chunk_list"] = [chunk_view(c, upload_ids.get(c.chunk_index, ())) for c in chunks]
        doc["upload_ids"] = sorted({u for ids in upload_ids.values() for u in ids}, key=_numeric_first)
        return self.json(doc)

    async def rejects(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        job = await self.service.parts.ledger.run(Ledger.find_job, job_id)
        if job is None:
            raise web.HTTPNotFound(reason="unknown job")
        doc = await asyncio.to_thread(self._read_rejects, job_id)
        return self.json({"job_id": job_id, "rejected": job.rejected, **doc})

    def _read_rejects(self, job_id: str) -> dict[str, object]:
        """Grouped reasons from the job's reject file, cached while the file is unchanged."""
        path = find_rejects(self.service.config, job_id)
        try:
            if path is None:
                raise FileNotFoundError(job_id)
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
            cached = self._rejects_cache.get(job_id)
            if cached is not None and cached[0] == key:
                return cached[1]
            with path.open("rb") as fh:
                doc = group_rejects(fh, _REJECT_LINES)
        except FileNotFoundError:
            return group_rejects((), _REJECT_LINES)
        if len(self._rejects_cache) >= 64:
            self._rejects_cache.pop(next(iter(self._rejects_cache)))
        self._rejects_cache[job_id] = (key, doc)
        return doc


def build_app(service: Service, metrics: Metrics, throughput: Throughput) -> web.Application:
    """The read-only application (aiohttp answers 405 to any method but GET and HEAD)."""
    api = _Api(service, metrics, throughput)
    app = web.Application(middlewares=[api.guard], client_max_size=1024)
    job = "/api/jobs/{job_id:" + JOB_ID_PATTERN + "}"
    for path, handler in (
        ("/", api.index),
        ("/static/{name}", api.static),
        ("/healthz", api.healthz),
        ("/readyz", api.readyz),
        ("/metrics", api.metrics_text),
        ("/api/overview", api.overview),
        ("/api/jobs", api.jobs),
        (job, api.job),
        (job + "/rejects", api.rejects),
    ):
        app.router.add_get(path, handler)
    return app


def find_rejects(config: Config, job_id: str) -> Path | None:
    """The job's reject file: archived beside its report, or still in the spool while it runs."""
    for directory in (config.done_dir, config.failed_dir):
        archived = directory / f"{job_id}.rejects.ndjson"
        if archived.is_file():
            return archived
    spooled = sorted(p for p in (config.spool_dir / job_id).glob("*.rejects.ndjson") if p.name[0] != ".")
    return spooled[0] if spooled else None


def _summaries(ledger: Ledger, states: tuple[JobState, ...], limit: int, offset: int) -> list[JobSummary]:
    """One hop to the ledger thread for a whole page of job summaries."""
    return [
        ledger.job_summary(job.job_id) for job in ledger.list_jobs(states=states, limit=limit, offset=offset)
    ]


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _states(text: str) -> tuple[JobState, ...]:
    try:
        return tuple(JobState(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise web.HTTPBadRequest(reason=f"state must be among: {', '.join(JobState)}") from None


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be an integer") from None
    if not low <= value <= high:
        raise web.HTTPBadRequest(reason=f"{name} must be between {low} and {high}")
    return value


def _writable(directory: Path) -> bool:
    try:
        probe_writable(directory)
    except OSError:
        return False
    return True


def _numeric_first(upload_id: str) -> tuple[int, str]:
    return (int(upload_id), "") if upload_id.isdigit() else (1 << 62, upload_id)
