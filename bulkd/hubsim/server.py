"""HTTP routes of the simulator: Lexer's create-upload API, the presigned object store and ``/v1/_sim``.

Refusals come in the order a real stack produces them (authentication, then request shape, then
injected faults), so a test of a refusal gets the same answer whatever fault knobs are set.
The request log and the simulator's own log lines carry paths only, never query strings or
headers, because both the token and the URL signature are bearer credentials.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import orjson
from aiohttp import web

from bulkd.hubsim.config import SimulatorConfig
from bulkd.hubsim.faults import Decision, FaultInjector, Faults, Verdict
from bulkd.hubsim.loader import DatasetLoader, load_object, read_loaded_records
from bulkd.hubsim.store import KEY_RE, ObjectStore, PresignCheck, Presigner, StoreRefusal, parse_content_md5
from bulkd.schemas import RECORD_TYPES

__all__ = ["FILENAME_RE", "RequestLogEntry", "SimState", "build_app"]

log = logging.getLogger("bulkd.hubsim")

FILENAME_RE = re.compile(r"[A-Za-z0-9_-]+\.ndjson(?:\.gz)?", re.ASCII)
"""Lexer accepts letters, digits, ``-`` and ``_`` followed by ``.ndjson`` or ``.ndjson.gz``."""
_MAX_FILENAME = 200
_READ_PIECE = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One handled request; ``status`` is None when the simulator dropped the connection."""

    method: str
    path: str
    status: int | None
    seconds: float
    started_at: float
    fault: str | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``GET /v1/_sim/requests``."""
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "seconds": round(self.seconds, 6),
            "started_at": self.started_at,
            "fault": self.fault,
        }


@dataclass(frozen=True, slots=True)
class _Upload:
    upload_id: int
    filename: str
    dataset_id: str
    record_type: str


class SimState:
    """Everything one simulator instance remembers; owned by its event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.base_url = ""
        self.presigner = Presigner()
        self.store = ObjectStore(config.store_dir)
        self.loader = DatasetLoader()
        self.injector = FaultInjector(config.faults)
        self.requests: deque[RequestLogEntry] = deque(maxlen=config.request_log_limit)
        self.uploads: dict[str, _Upload] = {}
        self.ids = itertools.count(1001)
        self.pending: set[asyncio.Future[None]] = set()
        self.executor = ThreadPoolExecutor(config.load_workers, thread_name_prefix="hubsim-load")

    @property
    def public_url(self) -> str:
        """The base of the presigned URLs: the configured public URL, else where it listens."""
        return self.config.public_url or self.base_url

    def schedule_load(self, upload: _Upload, key: str) -> None:
        """Run the dataset load in a worker thread; ``drain()`` waits for these."""
        path = self.store.path_for(key)

        def work() -> None:
            result = load_object(path, key, upload.record_type)
            self.loader.merge(upload.dataset_id, path, result)

        future = asyncio.get_running_loop().run_in_executor(self.executor, work)
        self.pending.add(future)
        future.add_done_callback(self._load_done)

    def _load_done(self, future: asyncio.Future[None]) -> None:
        self.pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("dataset load failed: %s", type(future.exception()).__name__)

    async def drain(self) -> None:
        """Wait until every scheduled dataset load has been merged."""
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)


_STATE: web.AppKey[SimState] = web.AppKey("hubsim_state", SimState)
_FAULT: web.RequestKey[str | None] = web.RequestKey("hubsim_fault", str)
_DROPPED: web.RequestKey[bool] = web.RequestKey("hubsim_dropped", bool)


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _s3_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )
    response = web.Response(status=status, text=body, content_type="application/xml", headers=headers)
    response.force_close()  # the unread body may be gigabytes; do not drain it for keep-alive
    return response


def _throttle_headers(state: SimState, status: int) -> dict[str, str] | None:
    if status not in (429, 503):
        return None
    value = state.injector.retry_after_header()
    return None if value is None else {"Retry-After": value}


def _authorised(state: SimState, request: web.Request) -> bool:
    return state.config.token.matches(request.headers.get("Auth-Api-Token"))


@web.middleware
async def _log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record method, path (no query), status and timing; add the configured latency first."""
    state = request.app[_STATE]
    started, wall = time.monotonic(), time.time()
    status: int | None = None
    try:
        if not request.path.startswith("/v1/_sim/"):
            latency = state.injector.faults.latency_seconds
            if latency:
                await asyncio.sleep(latency)
        response = await handler(request)
        status = None if request.get(_DROPPED) else response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        entry = RequestLogEntry(
            request.method, request.path, status, time.monotonic() - started, wall, request.get(_FAULT)
        )
        state.requests.append(entry)
        log.debug("%s %s -> %s", entry.method, entry.path, entry.status)


async def _create_upload(request: web.Request) -> web.Response:
    """``POST /v1/uploads``: authenticate, validate the body, then maybe fail, then issue a URL."""
    state = request.app[_STATE]
    if not _authorised(state, request):
        return _json_error(401, "missing or invalid Auth-Api-Token")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json_error(400, "request body is not valid JSON")
    problem = _check_upload_body(body)
    if problem is not None:
        return _json_error(400, problem)
    destination = body["destination"]
    known = state.config.known_datasets
    if known is not None and destination["dataset_id"] not in known:
        return _json_error(404, "dataset not found")
    decision = state.injector.for_post()
    if decision.verdict is Verdict.ERROR:
        request[_FAULT] = decision.name
        return _json_error(decision.status, "simulated failure", _throttle_headers(state, decision.status))
    upload = _Upload(next(state.ids), body["filename"], destination["dataset_id"], destination["record_type"])
    key = f"{upload.upload_id}-{upload.filename}"
    state.uploads[key] = upload
    faults = state.injector.faults
    ttl = faults.url_ttl_seconds if faults.url_ttl_seconds is not None else state.config.url_ttl_seconds
    base = faults.presign_base_url or state.public_url
    url = f"{base}/_store/{key}?{state.presigner.query(key, ttl)}"
    return web.json_response({"id": upload.upload_id, "url": url}, status=201)


def _check_upload_body(body: Any) -> str | None:
    """The reason the create-upload body is refused, or None when it is acceptable."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    filename = body.get("filename")
    if not isinstance(filename, str) or len(filename) > _MAX_FILENAME or not FILENAME_RE.fullmatch(filename):
        return "filename may contain only letters, digits, '-' and '_' and must end in .ndjson or .ndjson.gz"
    destination = body.get("destination")
    if not isinstance(destination, dict):
        return "destination must be an object"
    if destination.get("destination_type") != "dataset_load":
        return "destination.destination_type must be 'dataset_load'"
    dataset_id = destination.get("dataset_id")
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        return "destination.dataset_id must be a non-empty string"
    if destination.get("record_type") not in RECORD_TYPES:
        return f"destination.record_type must be one of: {', '.join(RECORD_TYPES)}"
    return None


def _refuse_put_request(state: SimState, request: web.Request, key: str) -> web.Response | None:
    """Signature, expiry and header checks, in S3's order; None when the PUT may proceed."""
    check = state.presigner.check(key, request.query) if KEY_RE.fullmatch(key) else PresignCheck.MISSING
    if check is PresignCheck.MISSING:
        return _s3_error(403, "AccessDenied", "Query-string authentication requires a signature")
    if check is PresignCheck.BAD_SIGNATURE:
        return _s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    if check is PresignCheck.EXPIRED:
        return _s3_error(403, "AccessDenied", "Request has expired")
    if key not in state.uploads:
        return _s3_error(404, "NoSuchUpload", "The specified upload does not exist.")
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _s3_error(
            501, "NotImplemented", "A header you provided implies functionality that is not implemented"
        )
    if request.content_length is None:
        return _s3_error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
    if request.content_length > state.config.max_object_bytes:
        return _s3_error(413, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
    md5 = request.headers.get("Content-MD5")
    if md5 is not None and parse_content_md5(md5) is None:
        return _s3_error(400, "InvalidDigest", "The Content-MD5 you specified is not valid.")
    return None


async def _put_object(request: web.Request) -> web.StreamResponse:
    """Presigned ``PUT /_store/{key}``: checks, injected faults, streamed write, dataset load."""
    state = request.app[_STATE]
    key = request.match_info["key"]
    refusal = _refuse_put_request(state, request, key)
    if refusal is not None:
        return refusal
    decision = state.injector.for_put()
    request[_FAULT] = None if decision.verdict is Verdict.PASS else decision.name
    if decision.verdict is Verdict.ERROR:
        code = {503: "SlowDown", 500: "InternalError", 429: "SlowDown"}.get(decision.status, "SimulatedError")
        return _s3_error(
            decision.status, code, "simulated failure", _throttle_headers(state, decision.status)
        )
    if decision.verdict is Verdict.RESET:
        return await _drop_mid_body(request)
    return await _store_body(state, request, key, decision)


async def _drop_mid_body(request: web.Request) -> web.Response:
    """Read about half the body, then abort the connection: the client sees a reset, nothing is stored."""
    length = request.content_length or 0
    target, seen = max(1, length // 2), 0
    async for piece in request.content.iter_chunked(_READ_PIECE):
        seen += len(piece)
        if seen >= target:
            break
    return _drop(request)


def _drop(request: web.Request) -> web.Response:
    request[_DROPPED] = True
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)  # never reaches the client: the transport is gone


async def _body_pieces(request: web.Request) -> AsyncIterator[bytes]:
    async for piece in request.content.iter_chunked(_READ_PIECE):
        yield piece


async def _store_body(
    state: SimState, request: web.Request, key: str, decision: Decision
) -> web.StreamResponse:
    header_md5 = request.headers.get("Content-MD5")
    md5 = parse_content_md5(header_md5) if header_md5 is not None else None
    length = request.content_length or 0
    try:
        outcome = await state.store.put(key, _body_pieces(request), length, md5)
    except StoreRefusal as exc:
        return _s3_error(exc.status, exc.code, exc.message)
    if outcome.changed:
        state.schedule_load(state.uploads[key], key)
    if decision.verdict is Verdict.RESET_AFTER_BODY:
        return _drop(request)
    return web.Response(status=200, headers={"ETag": f'"{outcome.etag}"'})


def _require_token(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not _authorised(request.app[_STATE], request):
            return _json_error(401, "missing or invalid Auth-Api-Token")
        return await handler(request)

    return guarded


async def _dataset_stats(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    return web.json_response(state.loader.stats(request.match_info["dataset_id"]).to_json())


async def _dataset_records(request: web.Request) -> web.StreamResponse:
    """NDJSON of the loaded records, one object at a time so memory stays at one object's worth."""
    state = request.app[_STATE]
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    for path, rejected in state.loader.objects(request.match_info["dataset_id"]):
        records = await loop.run_in_executor(state.executor, read_loaded_records, path, rejected)
        await response.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
    await response.write_eof()
    return response


async def _request_log(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    return web.json_response([entry.to_json() for entry in state.requests])


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[_STATE].injector.faults.to_json())


async def _set_faults(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    try:
        doc = orjson.loads(await request.read())
        if not isinstance(doc, dict):
            raise ValueError("faults must be a JSON object")
        faults = Faults.from_json(doc)
    except (ValueError, TypeError) as exc:
        return _json_error(400, str(exc))
    state.injector.set(faults)
    return web.json_response(faults.to_json())


def build_app(state: SimState) -> web.Application:
    """The aiohttp application; the object-store route takes the raw body, so no size cap applies there."""
    app = web.Application(middlewares=[_log_requests])
    app[_STATE] = state
    app.router.add_post("/v1/uploads", _create_upload)
    app.router.add_put("/_store/{key}", _put_object)
    app.router.add_get("/v1/_sim/datasets/{dataset_id}", _require_token(_dataset_stats))
    app.router.add_get("/v1/_sim/datasets/{dataset_id}/records", _require_token(_dataset_records))
    app.router.add_get("/v1/_sim/requests", _require_token(_request_log))
    app.router.add_get("/v1/_sim/faults", _require_token(_get_faults))
    app.router.add_post("/v1/_sim/faults", _require_token(_set_faults))
    return app
