"""A real ``bulkd run`` in a subprocess, with its status server, logs and directories at hand.

The daemon runs exactly as an operator starts it (console script, TOML config, ``BULKD_*``
environment, JSON logs on stderr); the tests talk to it over loopback only.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BULKD = Path(sys.executable).with_name("bulkd")
API_TOKEN = "lexer-api-token-9f3c1d2e7b"
STATUS_TOKEN = "status-token-4a8b6c0d2e"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Daemon:
    """A running ``bulkd run``; ``logs`` fills as it writes."""

    proc: subprocess.Popen[bytes]
    data: Path
    config: Path
    logs: list[str] = field(default_factory=list)
    url: str = ""
    simulator_url: str = ""
    token: str | None = None
    responses: list[Response] = field(default_factory=list)
    """Every response this helper received, for the leak scan."""

    @property
    def inbox(self) -> Path:
        return self.data / "inbox" / "ds1" / "customer_record"

    def drop(self, name: str, content: bytes) -> Path:
        """Write a file the careful way (temp name, then rename), as producers should."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        partial = self.inbox / f".{name}.part"
        partial.write_bytes(content)
        partial.rename(self.inbox / name)
        return self.inbox / name

    def get(self, path: str, *, token: str | None = "default", method: str = "GET") -> Response:
        """Request ``path`` from the status server (with the status token unless told otherwise)."""
        use = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {use}"} if use else {}
        request = urllib.request.Request(self.url + path, headers=headers, method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as answer:
                response = Response(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as exc:
            response = Response(exc.code, dict(exc.headers), exc.read())
        self.responses.append(response)
        return response

    def jobs(self) -> list[dict[str, Any]]:
        doc = self.get("/api/jobs?limit=500").json()
        jobs: list[dict[str, Any]] = doc["jobs"]
        return jobs

    def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"bulkd exited ({self.proc.returncode}):\n" + "\n".join(self.logs[-30:]))
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or condition}:\n" + "\n".join(self.logs[-30:]))

    def wait_finished(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``count`` jobs reached an end state with their report written."""
        ended = ("archived", "failed", "duplicate")

        def done() -> bool:
            jobs = self.jobs()
            return len(jobs) >= count and all(j["state"] in ended and j["report"] for j in jobs)

        self.wait_until(done, timeout, f"{count} finished jobs")
        return self.jobs()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_events(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.logs if line.startswith("{")]


def write_config(tmp: Path, extra: str = "") -> Path:
    """A TOML config for a fast test daemon under ``tmp/data`` (free ports chosen by the OS)."""
    config = tmp / "bulkd.toml"
    config.write_text(
        f"""
data_dir = "{tmp / "data"}"

[inbox]
settle_seconds = 0.2
poll_interval = 0.1

[simulator]
port = 0

[status]
port = 0

[service]
log_format = "json"
shutdown_grace_seconds = 5
{extra}
""",
        encoding="utf-8",
    )
    return config


def start_daemon(
    tmp: Path, *, config_extra: str = "", status_token: str | None = STATUS_TOKEN, timeout: float = 30.0
) -> Daemon:
    """Start ``bulkd run`` and wait until its status server listens."""
    config = write_config(tmp, config_extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKD_")}
    env["BULKD_API_TOKEN"] = API_TOKEN
    if status_token is not None:
        env["BULKD_STATUS_TOKEN"] = status_token
    proc = subprocess.Popen(
        [str(BULKD), "run", "--config", str(config)],
        cwd=tmp,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    daemon = Daemon(proc, tmp / "data", config, token=status_token)
    threading.Thread(target=_collect, args=(proc, daemon.logs), daemon=True).start()
    daemon.wait_until(lambda: _find_urls(daemon), timeout, "the status server to listen")
    return daemon


def _collect(proc: subprocess.Popen[bytes], logs: list[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        logs.append(raw.decode("utf-8", "replace").rstrip("\n"))


def _find_urls(daemon: Daemon) -> bool:
    for line in list(daemon.logs):
        if not line.startswith("{"):
            continue
        event = orjson.loads(line)
        if event.get("event") == "status" and event.get("state") == "listening":
            daemon.url = event["url"]
        elif event.get("message", "").startswith("hub simulator listening on "):
            daemon.simulator_url = event["message"].split()[4]
    return bool(daemon.url and daemon.simulator_url)


def customers_csv(rows: int, *, bad_every: int = 0, seed: int = 7) -> bytes:
    """A customer_record CSV; every ``bad_every``-th row has an impossible date of birth."""
    rng = random.Random(seed)
    lines = ["link.email,first_name,last_name,date_of_birth,employee_flag,city,custom_fields.points"]
    for n in range(1, rows + 1):
        day = 31 if bad_every and n % bad_every == 0 else rng.randint(1, 28)
        month = 2 if day == 31 else rng.randint(1, 12)
        lines.append(
            f"person{n}.{seed}@example.com,Ann{n},Lee,19{rng.randint(40, 99)}-{month:02d}-{day:02d},"
            f"{rng.choice(['yes', 'no'])},Carlton,{rng.randint(0, 9999)}"
        )
    return ("\n".join(lines) + "\n").encode()


def set_simulator_faults(daemon: Daemon, faults: Mapping[str, object]) -> None:
    """Replace the embedded simulator's fault knobs (latency, errors) through its API."""
    request = urllib.request.Request(
        daemon.simulator_url + "/v1/_sim/faults",
        data=orjson.dumps(faults),
        headers={"Auth-Api-Token": API_TOKEN, "Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        assert answer.status == 200


FILES = {
    "alpha.csv": customers_csv(1000, bad_every=40),
    "beta.csv": customers_csv(450, seed=8),
    "mostly-bad.csv": customers_csv(30, bad_every=1, seed=9),
}
"""alpha: 25 rejects, 10 chunks; beta: clean, 5 chunks; mostly-bad: fails on the reject ratio."""
