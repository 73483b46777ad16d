"""Settings for one simulator instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bulkd.hubsim.faults import Faults
from bulkd.secret import Secret

__all__ = ["DEFAULT_MAX_OBJECT_BYTES", "SimulatorConfig", "public_base_url"]

DEFAULT_MAX_OBJECT_BYTES = 5 * 1024**3
"""Lexer's documented maximum file size (5 GB), which is also S3's single-PUT limit."""


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Where to listen, which token to accept, where objects live and what goes wrong."""

    token: Secret
    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port; read the real one from ``RunningSimulator.base_url``."""
    url_ttl_seconds: float = 900.0
    faults: Faults = field(default_factory=Faults)
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    known_datasets: frozenset[str] | None = None
    """When set, uploads to any other dataset id get 404, as an unknown dataset does in Lexer."""
    request_log_limit: int = 100_000
    """The request log keeps this many most recent entries, so long benchmark runs stay bounded."""
    load_workers: int = 2
    """Threads that run dataset loads; loads never run on the event loop."""
    public_url: str | None = None
    """Base of the presigned URLs handed out (``http://hubsim:8787``) when clients reach the
    simulator by another name than the address it listens on; None: the listening address."""

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the simulator needs a non-empty token")
        if self.url_ttl_seconds < 0 or self.max_object_bytes <= 0 or self.load_workers < 1:
            raise ValueError("url_ttl_seconds, max_object_bytes and load_workers must be positive")
        if self.public_url is not None:
            try:
                normal = public_base_url(self.public_url)
            except ValueError as exc:
                raise ValueError(f"public_url {exc}") from None
            object.__setattr__(self, "public_url", normal)


def public_base_url(text: str) -> str:
    """``scheme://host[:port]`` from ``text``, or :class:`ValueError` saying what is wrong with it.

    Presigned URLs are ``{base}/_store/{key}?{signature}``, and the signature covers only the
    path the simulator serves at its root, so a base is usable only as scheme, host and port:
    a path, query or fragment would produce URLs the simulator cannot match, and credentials
    would be copied into every URL. The message names no option (the caller does) and does
    not repeat the value, which could hold a password.
    """
    if any(c.isspace() for c in text):
        raise ValueError("must not contain spaces")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("needs a host, as in http://hubsim:8787")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials")
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError("must not have a query or fragment")
    if parts.path not in ("", "/"):
        raise ValueError("must not have a path (the simulator serves upload URLs at its root)")
    return f"{parts.scheme.lower()}://{parts.netloc}"
