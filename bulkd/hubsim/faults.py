"""Fault knobs for the simulator: what can go wrong, how often, drawn from a seeded generator.

Faults are a frozen value so a test can state them once and swap them atomically at run time;
the draw happens per request from one ``random.Random`` so a single-client run with a fixed seed
is reproducible (concurrent clients interleave draws, so only the rates are stable then).
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from email.utils import formatdate
from typing import Any

__all__ = ["Decision", "FaultInjector", "Faults", "RetryAfterForm", "Verdict"]


class RetryAfterForm(enum.StrEnum):
    """How the ``Retry-After`` header is written (RFC 9110 allows both forms)."""

    SECONDS = "seconds"
    HTTP_DATE = "http-date"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Faults:
    """Rates are probabilities in [0, 1] per request; their sum per method must not exceed 1."""

    post_errors: Mapping[int, float] = field(default_factory=dict, hash=False)
    """Status code → probability of answering ``POST /v1/uploads`` with it (before creating anything)."""
    put_errors: Mapping[int, float] = field(default_factory=dict, hash=False)
    """Status code → probability of answering a presigned PUT with it (before reading the body)."""
    throttle_rate: float = 0.0
    """Probability of a 429 on either POST or PUT, with ``Retry-After``."""
    retry_after_seconds: float = 1.0
    """The hint sent with every 429 and 503 (rounded up to whole seconds, as the header requires)."""
    retry_after_form: RetryAfterForm = RetryAfterForm.SECONDS
    latency_seconds: float = 0.0
    """Added before every API and store request is handled."""
    reset_rate: float = 0.0
    """Probability that a PUT reads part of the body and then drops the connection (nothing stored)."""
    reset_after_body_rate: float = 0.0
    """Probability that a PUT stores the object, then drops the connection before answering (ambiguous)."""
    url_ttl_seconds: float | None = None
    """Overrides the configured presigned-URL lifetime for URLs issued from now on."""
    presign_base_url: str | None = None
    """Makes the API hand out URLs on another base (e.g. ``http://169.254.169.254``) to test SSRF guards."""
    api_rate_limit: float | None = None
    """Enforce the documented per-token request rate on ``POST /v1/uploads`` (429 beyond); None = off."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name, table in (("post_errors", self.post_errors), ("put_errors", self.put_errors)):
            for status, rate in table.items():
                if not 400 <= int(status) <= 599:
                    raise ValueError(f"{name}: {status} is not an error status")
                _check_rate(f"{name}[{status}]", rate)
        for name in ("throttle_rate", "reset_rate", "reset_after_body_rate"):
            _check_rate(name, getattr(self, name))
        if sum(self.post_errors.values()) + self.throttle_rate > 1:
            raise ValueError("POST fault rates add up to more than 1")
        put_total = sum(self.put_errors.values()) + self.throttle_rate + self.reset_rate
        if put_total + self.reset_after_body_rate > 1:
            raise ValueError("PUT fault rates add up to more than 1")
        if self.retry_after_seconds < 0 or self.latency_seconds < 0:
            raise ValueError("retry_after_seconds and latency_seconds must not be negative")
        if self.url_ttl_seconds is not None and self.url_ttl_seconds < 0:
            raise ValueError("url_ttl_seconds must not be negative")
        if self.api_rate_limit is not None and self.api_rate_limit <= 0:
            raise ValueError("api_rate_limit must be positive")

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Faults:
        """Build from the JSON accepted by ``POST /v1/_sim/faults`` (status codes as string keys)."""
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown fault knob(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = dict(doc)
        for name in ("post_errors", "put_errors"):
            if name in kwargs:
                kwargs[name] = {int(k): float(v) for k, v in dict(kwargs[name]).items()}
        if "retry_after_form" in kwargs:
            kwargs["retry_after_form"] = RetryAfterForm(kwargs["retry_after_form"])
        return cls(**kwargs)

    def to_json(self) -> dict[str, Any]:
        """The JSON form, the inverse of :meth:`from_json`."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["post_errors"] = {str(k): v for k, v in self.post_errors.items()}
        out["put_errors"] = {str(k): v for k, v in self.put_errors.items()}
        out["retry_after_form"] = self.retry_after_form.value
        return out


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {rate}")


def _capacity(faults: Faults) -> float:
    return max(1.0, faults.api_rate_limit or 1.0)


class Verdict(enum.Enum):
    """What the injector decided for one request."""

    PASS = "pass"
    ERROR = "error"
    RESET = "reset"
    RESET_AFTER_BODY = "reset_after_body"


@dataclass(frozen=True, slots=True)
class Decision:
    """One draw: the verdict, and the status to answer with when the verdict is ``ERROR``."""

    verdict: Verdict
    status: int = 0

    @property
    def name(self) -> str:
        """Short label for the request log (``http_503``, ``reset``...)."""
        return f"http_{self.status}" if self.verdict is Verdict.ERROR else self.verdict.value


_PASS = Decision(Verdict.PASS)


class FaultInjector:
    """Holds the current :class:`Faults`, the seeded generator and the API rate-limit window."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._bucket = _capacity(faults)
        self._bucket_at = time.monotonic()

    @property
    def faults(self) -> Faults:
        """The knobs in force."""
        return self._faults

    def set(self, faults: Faults) -> None:
        """Swap the knobs; reseeding makes the run after a change reproducible too."""
        self._faults = faults
        self._rng = random.Random(faults.seed)
        self._bucket = _capacity(faults)
        self._bucket_at = time.monotonic()

    def for_post(self) -> Decision:
        """Draw the fate of one ``POST /v1/uploads``; the rate limit is checked first, as a real API would."""
        if self._over_rate_limit():
            return Decision(Verdict.ERROR, 429)
        return self._draw(self._faults.post_errors, ())

    def for_put(self) -> Decision:
        """Draw the fate of one presigned PUT."""
        extra = (
            (Verdict.RESET, self._faults.reset_rate),
            (Verdict.RESET_AFTER_BODY, self._faults.reset_after_body_rate),
        )
        return self._draw(self._faults.put_errors, extra)

    def _draw(self, errors: Mapping[int, float], extra: tuple[tuple[Verdict, float], ...]) -> Decision:
        roll = self._rng.random()
        edge = 0.0
        for status, rate in (*errors.items(), (429, self._faults.throttle_rate)):
            edge += rate
            if roll < edge:
                return Decision(Verdict.ERROR, status)
        for verdict, rate in extra:
            edge += rate
            if roll < edge:
                return Decision(verdict)
        return _PASS

    def _over_rate_limit(self) -> bool:
        """Token bucket holding one second's worth of requests, refilled continuously."""
        rate = self._faults.api_rate_limit
        if rate is None:
            return False
        now = time.monotonic()
        self._bucket = min(_capacity(self._faults), self._bucket + (now - self._bucket_at) * rate)
        self._bucket_at = now
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return False
        return True

    def retry_after_header(self) -> str | None:
        """The ``Retry-After`` value for a throttling answer, in the configured form."""
        seconds = math.ceil(self._faults.retry_after_seconds)
        form = self._faults.retry_after_form
        if form is RetryAfterForm.NONE:
            return None
        if form is RetryAfterForm.HTTP_DATE:
            return formatdate(math.ceil(time.time()) + seconds, usegmt=True)
        return str(seconds)
