"""Fixtures for the status server tests: one finished end-to-end run shared by the read-only checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from running import FILES, Daemon, set_simulator_faults, start_daemon

RUN_CONFIG = """
[convert]
chunk_max_records = 100
max_reject_ratio = 0.5

[upload]
concurrency = 2
backoff_base = 0.01
backoff_cap = 0.05
retry_delivery_after = 1
"""


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon that ran three files and a duplicate, with 30 % of PUTs answered 503 (so retried)."""
    daemon = start_daemon(tmp_path_factory.mktemp("run"), config_extra=RUN_CONFIG)
    try:
        set_simulator_faults(daemon, {"put_errors": {"503": 0.3}, "seed": 3})
        for name, content in FILES.items():
            daemon.drop(name, content)
        daemon.wait_finished(len(FILES))
        daemon.drop("alpha-again.csv", FILES["alpha.csv"])
        daemon.wait_finished(len(FILES) + 1)
        yield daemon
    finally:
        daemon.stop()
