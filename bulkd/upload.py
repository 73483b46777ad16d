"""Deliver spooled chunks to Lexer's File Upload API: create an upload (POST), then PUT the bytes.

Why it looks the way it does:

* **Exactly one object per chunk, as far as the protocol allows.** A presigned URL stays valid
  until it expires and a re-PUT of the same bytes to the same key is idempotent, so transient
  PUT failures retry the *same* URL. Only a 403 (expired or refused signature) asks the API for
  a fresh URL, and that is bounded. The ledger learns every upload id via ``on_created``.
* **Never a truncated or chunked body.** The body is a payload that opens the spooled file afresh
  on every write (aio-libs/aiohttp#13329: an internally retried PUT re-sent an advanced file
  handle) and always carries ``Content-Length`` and ``Content-MD5``, so S3 never sees chunked
  encoding and a short body fails loudly.
* **An outage must not multiply traffic.** Full-jitter backoff with a cap, ``Retry-After`` honoured
  (seconds or HTTP-date, clamped), and one retry budget per host shared by every upload, as in
  botocore's retry quota: when the budget is empty, failures surface instead of retrying.
* **Stop on a bad token.** A 401 pauses every upload at once; nothing loops on it.
* **No SSRF, no leaks.** Presigned URL hosts must be allow-listed (https when required); texts
  built here never contain the token or a URL query string (:mod:`bulkd.redact`).
* **Timeouts for big bodies.** No aiohttp 5-minute total; instead connect/read socket timeouts and
  a per-chunk deadline of ``size / min_throughput + slack``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from yarl import URL

from bulkd.durable import crashpoint, declare_crashpoint
from bulkd.errors import ConfigError, TerminalUploadError, TransientUploadError, UploadError
from bulkd.redact import redact_text
from bulkd.secret import Secret

__all__ = [
    "ChunkUpload",
    "RetryBudget",
    "TokenBucket",
    "UploadReceipt",
    "UploadSettings",
    "Uploader",
    "UploaderStats",
    "backoff_delay",
    "parse_retry_after",
]

log = logging.getLogger("bulkd.upload")

PUT_MID_BODY = declare_crashpoint("upload.put.body")
"""Part of a PUT body is on the wire, the rest is not."""

Phase = Literal["create", "put"]
_T = TypeVar("_T")

_ERROR_BODY_LIMIT = 64 * 1024
_READ_PIECE = 1024 * 1024
_XML_CODE = re.compile(r"<Code>([^<]{1,200})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{1,500})</Message>")
_RETRY_COST = 5
_TIMEOUT_RETRY_COST = 10
_TERMINAL_REASONS = {
    400: "the request was refused as invalid",
    401: "the API token was refused",
    403: "access is forbidden",
    404: "not found (unknown dataset or endpoint)",
    409: "conflict",
    411: "the length was refused",
    413: "the chunk is larger than the API accepts",
    422: "the request was refused as unprocessable",
    501: "the request used a feature the server does not implement",
}


@dataclass(frozen=True, slots=True)
class UploadSettings:
    """How to reach the API and how hard to push it; validated once, at construction."""

    api_url: str
    token: Secret
    concurrency: int = 8
    requests_per_second: float = 10.0
    """Create-upload (API) requests per second, all uploads together; Lexer documents 10/s per token.

    Presigned PUTs go to the object store, not the API, and do not count against the token."""
    max_attempts: int = 8
    """Tries per request (the create POST, the PUT), the first one included."""
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_budget: int = 100
    """Retry tokens per host shared by all uploads (a retry costs 5, after a timeout 10; successes refund)."""
    allowed_url_hosts: tuple[str, ...] = ()
    """Hosts a presigned URL may point at; empty means only the API's own host."""
    require_https: bool = True
    connect_timeout: float = 30.0
    read_timeout: float = 300.0
    min_throughput_bytes_per_s: int = 256 * 1024
    deadline_slack: float = 30.0
    """Added to ``size / min_throughput`` for the per-PUT deadline (connection set-up, server commit)."""
    url_refresh_limit: int = 3
    """Fresh URLs fetched after 403s for one chunk before giving up."""
    retry_after_cap: float = 60.0
    """A ``Retry-After`` longer than this is clamped, so a hostile header cannot stall the daemon."""

    def __post_init__(self) -> None:
        api = URL(self.api_url)
        if api.scheme not in ("http", "https") or not api.host:
            raise ConfigError("upload.api_url", "must be an http(s) URL with a host")
        if self.require_https and api.scheme != "https":
            raise ConfigError(
                "upload.api_url", "must use https (set require_https = false for a local simulator)"
            )
        if not self.token:
            raise ConfigError("upload.token", "must not be empty")
        positive = {
            "concurrency": self.concurrency,
            "requests_per_second": self.requests_per_second,
            "max_attempts": self.max_attempts,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "min_throughput_bytes_per_s": self.min_throughput_bytes_per_s,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"upload.{key}", "must be positive")
        non_negative = {
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "retry_budget": self.retry_budget,
            "deadline_slack": self.deadline_slack,
            "url_refresh_limit": self.url_refresh_limit,
            "retry_after_cap": self.retry_after_cap,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"upload.{key}", "must not be negative")

    @property
    def url_hosts(self) -> frozenset[str]:
        """The effective presigned-URL allow-list (lower-case host names)."""
        hosts = self.allowed_url_hosts or (URL(self.api_url).host or "",)
        return frozenset(h.lower() for h in hosts)


@dataclass(frozen=True, slots=True)
class ChunkUpload:
    """A spooled chunk ready to deliver; ``md5_b64`` and ``size`` were recorded when it was written."""

    path: Path
    filename: str
    dataset_id: str
    record_type: str
    md5_b64: str
    size: int


@dataclass(frozen=True, slots=True)
class UploadReceipt:
    """Proof of delivery: the upload id whose object holds the chunk, and what it took."""

    upload_id: str
    attempts: int
    seconds: float


@dataclass(slots=True)
class UploaderStats:
    """Counters for the metrics layer; monotonic except ``in_flight``."""

    attempts: int = 0
    """HTTP requests started (creates and PUTs, first tries and retries)."""
    creates: int = 0
    puts: int = 0
    delivered: int = 0
    failed: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    """Retries by cause: ``http_503``, ``connection``, ``timeout``, ``url_expired``, ``url_rejected``."""
    retries_denied: int = 0
    """Retries refused because the host's retry budget was empty."""
    bytes_sent: int = 0
    """Body bytes written to sockets, failed attempts included."""
    in_flight: int = 0
    max_in_flight: int = 0

    def count_retry(self, cause: str) -> None:
        """Add one retry under ``cause``."""
        self.retries[cause] = self.retries.get(cause, 0) + 1


class TokenBucket:
    """Request-rate limit shared by all uploads; waiters are served in arrival order."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = max(1.0, burst)
        self._tokens = self._burst
        self._clock = clock
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until one request may be sent."""
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self._rate)


class RetryBudget:
    """botocore-style retry quota for one host: retries spend tokens, successes refund them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tokens = capacity

    def spend(self, cost: int) -> bool:
        """Take ``cost`` tokens for a retry; False (and nothing taken) when the budget cannot pay."""
        if cost > self.tokens:
            return False
        self.tokens -= cost
        return True

    def refund(self, amount: int) -> None:
        """Give tokens back after a success, never above capacity."""
        self.tokens = min(self.capacity, self.tokens + amount)


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**(retry-1))]`` (AWS "standard" retry mode)."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** max(retry - 1, 0)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait per ``Retry-After`` (delay-seconds or HTTP-date); None if absent or invalid."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _RefreshUrl(Exception):
    """The presigned URL was refused (403); only a new create-upload can help."""

    def __init__(self, cause: Literal["url_expired", "url_rejected"], detail: str) -> None:
        super().__init__(detail)
        self.cause = cause


class _TransportError(TransientUploadError):
    """No HTTP answer at all (connection failure or timeout); ``cause`` prices the retry."""

    def __init__(self, message: str, cause: Literal["timeout", "connection"]) -> None:
        super().__init__(message)
        self.cause = cause


class _ChunkPayload(Payload):
    """The chunk file as a request body of known size, re-opened from byte 0 on every write."""

    _autoclose = True  # holds no file handle between writes

    def __init__(self, path: Path, size: int, on_sent: Callable[[int], None]) -> None:
        super().__init__(path, content_type="application/octet-stream")
        self._path = path
        self._size = size
        self._on_sent = on_sent

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a chunk body is binary and is never decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        size = self._size if self._size is not None else 0
        remaining = size if content_length is None else min(size, content_length)
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, self._path.open, "rb")
        # The first piece is at most half the body, so the mid-body crash point is always mid-body.
        piece_size = min(_READ_PIECE, max(1, remaining // 2))
        try:
            while remaining > 0:
                piece = await loop.run_in_executor(None, handle.read, min(piece_size, remaining))
                if not piece:
                    raise OSError("the chunk file is shorter than its recorded size")
                await writer.write(piece)
                remaining -= len(piece)
                self._on_sent(len(piece))
                if remaining:
                    crashpoint(PUT_MID_BODY)
                piece_size = _READ_PIECE
        finally:
            handle.close()


class Uploader:
    """Delivers chunks with bounded concurrency, a shared rate limit and shared retry budgets.

    Use as ``async with Uploader(settings) as up: await up.upload(chunk)``; it owns one
    ``aiohttp.ClientSession``.
    """

    def __init__(self, settings: UploadSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.stats = UploaderStats()
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._rate = TokenBucket(settings.requests_per_second)
        self._budgets: dict[str, RetryBudget] = {}
        self._paused = asyncio.Event()
        self._stopping = False
        self._pause_reason = ""
        self._session: aiohttp.ClientSession | None = None
        self._create_url = URL(settings.api_url.rstrip("/") + "/v1/uploads")

    async def __aenter__(self) -> Self:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.connect_timeout, sock_read=self.settings.read_timeout
        )
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency * 2)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def paused(self) -> bool:
        """True after a 401: every upload refuses to start until :meth:`resume`."""
        return self._paused.is_set()

    @property
    def paused_event(self) -> asyncio.Event:
        """Set while paused, for tasks that want to wait on it."""
        return self._paused

    def stop_starting(self) -> None:
        """Let uploads already under way finish (retries included), but start no new one: on
        SIGTERM the rest waits for the next start rather than racing the shutdown deadline."""
        self._stopping = True

    def resume(self) -> None:
        """Clear the pause (after the operator fixed the token and restarted delivery)."""
        self._paused.clear()
        self._pause_reason = ""

    def budget(self, host: str) -> RetryBudget:
        """The shared retry budget for ``host`` (created on first use)."""
        return self._budgets.setdefault(host.lower(), RetryBudget(self.settings.retry_budget))

    async def upload(
        self, chunk: ChunkUpload, on_created: Callable[[str], Awaitable[None]] | None = None
    ) -> UploadReceipt:
        """Create an upload and PUT the chunk; ``on_created(upload_id)`` runs after every successful create.

        Raises:
            TransientUploadError: attempts or the host's retry budget ran out on retryable failures.
            TerminalUploadError: the API or store refused the chunk for good, or uploads are paused (401).
        """
        self._raise_if_paused()
        async with self._slots:
            if self._stopping:
                raise TransientUploadError(f"{chunk.filename}: not started, bulkd is stopping")
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                receipt = await _Delivery(self, chunk, on_created).run()
            except UploadError:
                self.stats.failed += 1
                raise
            finally:
                self.stats.in_flight -= 1
        self.stats.delivered += 1
        return receipt

    # -- helpers used by _Delivery ------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Uploader must be used as an async context manager")
        return self._session

    def _raise_if_paused(self) -> None:
        if self._paused.is_set():
            raise TerminalUploadError(f"uploads are paused: {self._pause_reason}", status=401)

    def pause(self, reason: str) -> None:
        """Stop every upload: new ones refuse to start and those backing off give up at once."""
        if not self._paused.is_set():
            self._pause_reason = reason
            self._paused.set()
            log.error("pausing all uploads: %s", reason)

    def _redact(self, text: str) -> str:
        return redact_text(text, (self.settings.token,))

    def _check_url(self, url: str) -> URL:
        """Refuse a presigned URL that is not http(s), not allow-listed, or carries credentials."""
        try:
            parsed = URL(url, encoded=True)
        except (ValueError, TypeError):
            raise TerminalUploadError("create upload: the API returned an unparseable URL") from None
        host = (parsed.host or "").lower()
        if parsed.scheme not in ("http", "https") or not host or parsed.user is not None:
            raise TerminalUploadError("create upload: the API returned a URL that is not a plain http(s) URL")
        if self.settings.require_https and parsed.scheme != "https":
            raise TerminalUploadError(f"create upload: refusing a non-https upload URL on host {host!r}")
        if host not in self.settings.url_hosts:
            raise TerminalUploadError(
                f"create upload: refusing an upload URL on host {host!r} (not allow-listed)"
            )
        return parsed

    async def _sleep_unless_paused(self, seconds: float) -> None:
        """Back off, but wake at once if uploads get paused meanwhile."""
        try:
            await asyncio.wait_for(self._paused.wait(), timeout=seconds)
        except TimeoutError:
            return
        self._raise_if_paused()


class _Delivery:
    """One chunk's journey: create → PUT, with retries, URL refreshes and the shared budgets."""

    def __init__(
        self, owner: Uploader, chunk: ChunkUpload, on_created: Callable[[str], Awaitable[None]] | None
    ) -> None:
        self.owner = owner
        self.settings = owner.settings
        self.stats = owner.stats
        self.chunk = chunk
        self.on_created = on_created
        self.attempts = 0
        self.started = time.monotonic()

    async def run(self) -> UploadReceipt:
        self._check_file()
        refreshes = 0
        while True:
            upload_id, url = await self._retrying(self._create, self.owner._create_url.host or "")
            if self.on_created is not None:
                await self.on_created(upload_id)
            try:
                await self._retrying(functools.partial(self._put, url), url.host or "")
            except _RefreshUrl as refused:
                refreshes += 1
                self.stats.count_retry(refused.cause)
                if refreshes > self.settings.url_refresh_limit:
                    raise TerminalUploadError(
                        f"{self.chunk.filename}: upload URL refused {refreshes} times ({refused}); giving up",
                        status=403,
                    ) from None
                log.info("%s; fetching a fresh upload URL", refused)
                continue
            seconds = time.monotonic() - self.started
            log.debug("%s delivered as upload %s in %.2fs", self.chunk.filename, upload_id, seconds)
            return UploadReceipt(upload_id=upload_id, attempts=self.attempts, seconds=seconds)

    def _check_file(self) -> None:
        try:
            actual = os.stat(self.chunk.path).st_size
        except OSError as exc:
            raise TerminalUploadError(
                f"{self.chunk.filename}: chunk file unreadable ({exc.strerror})"
            ) from None
        if actual != self.chunk.size:
            raise TerminalUploadError(
                f"{self.chunk.filename}: chunk file is {actual} bytes, {self.chunk.size} were recorded"
            )

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]], host: str) -> _T:
        """Run one request until it succeeds, is terminal, or attempts/budget run out."""
        budget = self.owner.budget(host)
        spent = 0
        for number in range(1, self.settings.max_attempts + 1):
            self.owner._raise_if_paused()
            self.attempts += 1
            self.stats.attempts += 1
            try:
                result = await attempt()
            except TransientUploadError as exc:
                if number == self.settings.max_attempts:
                    raise TransientUploadError(
                        f"{exc} (gave up after {number} attempts)", exc.status, exc.retry_after
                    ) from None
                spent += self._pay_for_retry(budget, exc, host)
                await self._back_off(number, exc)
                continue
            budget.refund(spent if spent else 1)
            return result
        raise AssertionError("unreachable: max_attempts is positive")

    def _pay_for_retry(self, budget: RetryBudget, exc: TransientUploadError, host: str) -> int:
        timed_out = isinstance(exc, _TransportError) and exc.cause == "timeout"
        cost = _TIMEOUT_RETRY_COST if timed_out else _RETRY_COST
        if not budget.spend(cost):
            self.stats.retries_denied += 1
            raise TransientUploadError(
                f"{exc} (retry budget for {host} exhausted; not retrying)", exc.status, exc.retry_after
            ) from None
        return cost

    async def _back_off(self, retry: int, exc: TransientUploadError) -> None:
        delay = backoff_delay(retry, self.settings.backoff_base, self.settings.backoff_cap, self.owner._rng)
        if exc.retry_after is not None:
            hint = min(exc.retry_after, self.settings.retry_after_cap)
            delay = hint + self.owner._rng.uniform(0.0, min(self.settings.backoff_base, 1.0))
        cause = exc.cause if isinstance(exc, _TransportError) else f"http_{exc.status}"
        self.stats.count_retry(cause)
        log.warning("%s; retry %d in %.2fs", exc, retry, delay)
        await self.owner._sleep_unless_paused(delay)

    async def _create(self) -> tuple[str, URL]:
        await self.owner._rate.acquire()
        self.owner._raise_if_paused()
        self.stats.creates += 1
        body = {
            "filename": self.chunk.filename,
            "destination": {
                "destination_type": "dataset_load",
                "dataset_id": self.chunk.dataset_id,
                "record_type": self.chunk.record_type,
            },
        }
        headers = {"Auth-Api-Token": self.settings.token.reveal(), "Content-Type": "application/json"}
        try:
            async with (
                asyncio.timeout(self.settings.connect_timeout + self.settings.read_timeout),
                self.owner.session.post(
                    self.owner._create_url, data=orjson.dumps(body), headers=headers
                ) as resp,
            ):
                raw = await resp.content.read(_ERROR_BODY_LIMIT)
                if resp.status != 201:
                    raise self._refusal("create", resp.status, raw, resp.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._transport_error("create upload", exc) from None
        return self._parse_created(raw)

    def _parse_created(self, raw: bytes) -> tuple[str, URL]:
        try:
            doc: Any = orjson.loads(raw)
            upload_id, url = doc["id"], doc["url"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise TerminalUploadError("create upload: 201 without a JSON {id, url} body") from None
        if isinstance(upload_id, bool) or not isinstance(upload_id, int | str) or not isinstance(url, str):
            raise TerminalUploadError("create upload: 201 with a malformed id or url")
        return str(upload_id), self.owner._check_url(url)

    async def _put(self, url: URL) -> None:
        self.stats.puts += 1
        payload = _ChunkPayload(self.chunk.path, self.chunk.size, self._count_sent)
        headers = {"Content-Length": str(self.chunk.size), "Content-MD5": self.chunk.md5_b64}
        deadline = self.chunk.size / self.settings.min_throughput_bytes_per_s + self.settings.deadline_slack
        try:
            async with (
                asyncio.timeout(deadline),
                self.owner.session.put(url, data=payload, headers=headers) as resp,
            ):
                raw = await resp.content.read(_ERROR_BODY_LIMIT)
                if resp.status != 200:
                    raise self._refusal("put", resp.status, raw, resp.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._transport_error("object PUT", exc) from None

    def _count_sent(self, count: int) -> None:
        self.stats.bytes_sent += count

    def _refusal(
        self, phase: Phase, status: int, raw: bytes, headers: Mapping[str, str]
    ) -> UploadError | _RefreshUrl:
        """Turn a non-success answer into the error that says what to do next."""
        what = "create upload" if phase == "create" else "object PUT"
        detail = _error_detail(raw)
        text = f"{self.chunk.filename}: {what}: HTTP {status}" + (f" ({detail})" if detail else "")
        text = self.owner._redact(text)
        if status == 401:
            self.owner.pause(f"the API refused the token (HTTP 401 on {what})")
            return TerminalUploadError(f"{text}: {_TERMINAL_REASONS[401]}; all uploads paused", status)
        if status == 403 and phase == "put":
            expired = "expired" in detail.lower()
            return _RefreshUrl("url_expired" if expired else "url_rejected", text)
        if status in (408, 429) or (status >= 500 and status != 501) or "RequestTimeout" in detail:
            return TransientUploadError(text, status, parse_retry_after(headers.get("Retry-After")))
        reason = _TERMINAL_REASONS.get(status, "the request was refused")
        return TerminalUploadError(f"{text}: {reason}", status)

    def _transport_error(self, what: str, exc: BaseException) -> _TransportError:
        timed_out = isinstance(exc, TimeoutError)
        kind = "timed out" if timed_out else "connection failed"
        detail = self.owner._redact(str(exc)) or type(exc).__name__
        return _TransportError(
            f"{self.chunk.filename}: {what}: {kind} ({type(exc).__name__}: {detail})",
            "timeout" if timed_out else "connection",
        )


def _error_detail(raw: bytes) -> str:
    """A short reason from an error body: the JSON ``error``, or the S3 XML ``Code: Message``."""
    text = raw[:2048].decode("utf-8", "replace").strip()
    if not text:
        return ""
    if text.startswith("{"):
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            return text[:200]
        error = doc.get("error") if isinstance(doc, dict) else None
        return str(error)[:200] if error else text[:200]
    if text.startswith("<"):
        code, message = _XML_CODE.search(text), _XML_MESSAGE.search(text)
        parts = [m.group(1).strip() for m in (code, message) if m is not None]
        return ": ".join(parts)[:200] if parts else text[:200]
    return text[:200]
