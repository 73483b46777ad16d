"""Settings for one simulator instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bulkd.hubsim.faults import Faults
from bulkd.secret import Secret

__all__ = ["DEFAULT_MAX_OBJECT_BYTES", "SimulatorConfig"]

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

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the simulator needs a non-empty token")
        if self.url_ttl_seconds < 0 or self.max_object_bytes <= 0 or self.load_workers < 1:
            raise ValueError("url_ttl_seconds, max_object_bytes and load_workers must be positive")
