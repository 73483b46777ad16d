"""Run the real daemon (``python -m bulkd run --once``) as a subprocess, and kill it on purpose.

A :class:`Workspace` is one daemon's world: its directories, its config file (written from a
:class:`Tuning`) and the log of every run. :func:`run_daemon` starts one process, optionally
armed with a crash point (``BULKD_CRASHPOINT``) or a SIGKILL after a delay, and reports how it
ended. The simulator the daemon talks to runs in the caller's event loop, so waiting here is
always asynchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bulkd.durable import CRASHPOINT_ENV
from bulkd.secret import Secret

__all__ = ["LiveDaemon", "RunRecord", "Tuning", "Workspace", "run_daemon", "wait_until"]

_CRASH_LINE = re.compile(rb"bulkd: crash point '([^']+)' reached, SIGKILL")
TomlValue = str | int | float | bool | list[str]


@dataclass(frozen=True, slots=True)
class Tuning:
    """Daemon settings for a test run: small chunks (many crash windows), fast retries, no status server."""

    chunk_max_records: int = 40
    upload_concurrency: int = 4
    max_attempts: int = 6
    retry_budget: int = 1000
    parallel_files: int = 1
    backoff_cap: float = 0.2
    extra: Mapping[str, Mapping[str, TomlValue]] = field(default_factory=dict)
    """More keys by section (``{"spool": {"max_bytes": 1 << 20}}``); they win over the above."""

    def sections(self, api_url: str) -> dict[str, dict[str, TomlValue]]:
        doc: dict[str, dict[str, TomlValue]] = {
            "inbox": {"settle_seconds": 0.0, "poll_interval": 0.05},
            "convert": {"chunk_max_records": self.chunk_max_records, "parallel_files": self.parallel_files},
            "upload": {
                "api_url": api_url,
                "require_https": False,
                "concurrency": self.upload_concurrency,
                "requests_per_second": 1000.0,
                "max_attempts": self.max_attempts,
                "backoff_base": 0.01,
                "backoff_cap": self.backoff_cap,
                "retry_budget": self.retry_budget,
                "retry_after_cap": 0.05,
                "url_refresh_limit": 6,
                "connect_timeout": 5.0,
                "read_timeout": 20.0,
                "retry_delivery_after": 0.5,
            },
            "status": {"enabled": False},
            "service": {"shutdown_grace_seconds": 2.0, "log_format": "json", "log_level": "info"},
        }
        for section, keys in self.extra.items():
            doc.setdefault(section, {}).update(keys)
        return doc


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a JSON string or list of strings is valid TOML


class Workspace:
    """One daemon's directories and config; ``root`` must be empty or absent."""

    def __init__(
        self,
        root: Path,
        *,
        api_url: str,
        token: Secret,
        tuning: Tuning | None = None,
        data: Path | None = None,
    ) -> None:
        self.root = root
        self.api_url = api_url
        self.token = token
        self.tuning = tuning or Tuning()
        self.data = data or root / "var"
        """``data_dir``: every directory the tuning does not place elsewhere lives under it."""
        self.logs = root / "logs"
        self.config_path = root / "bulkd.toml"
        self.runs: list[RunRecord] = []

    @property
    def inbox(self) -> Path:
        return self.dir("inbox", "dir", "inbox")

    @property
    def work(self) -> Path:
        return self.dir("inbox", "work_dir", "work")

    @property
    def done(self) -> Path:
        return self.dir("inbox", "done_dir", "done")

    @property
    def failed(self) -> Path:
        return self.dir("inbox", "failed_dir", "failed")

    @property
    def spool(self) -> Path:
        return self.dir("spool", "dir", "spool")

    @property
    def state(self) -> Path:
        return self.dir("state", "dir", "state")

    def dir(self, section: str, key: str, default: str) -> Path:
        """A directory as the daemon resolves it: the configured one, else under ``data_dir``."""
        value = self.tuning.extra.get(section, {}).get(key)
        return Path(str(value)) if value is not None else self.data / default

    def prepare(self) -> None:
        """Create the inbox and write the config file."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.inbox.mkdir(parents=True, exist_ok=True)
        lines = [f"data_dir = {_toml_value(str(self.data))}"]
        for section, keys in self.tuning.sections(self.api_url).items():
            lines.append(f"\n[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def env(self, crashpoint: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The daemon's environment: ours without any ``BULKD_*``, plus the token and the crash point."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULKD_")}
        env["BULKD_API_TOKEN"] = self.token.reveal()
        env["PYTHONUNBUFFERED"] = "1"
        if crashpoint is not None:
            env[CRASHPOINT_ENV] = crashpoint
        env.update(extra or {})
        return env

    def log_text(self) -> bytes:
        """Everything every run wrote to stdout and stderr."""
        return b"".join(run.log.read_bytes() for run in self.runs if run.log.exists())


@dataclass(frozen=True, slots=True)
class RunRecord:
    """How one daemon process ended."""

    number: int
    exit_code: int
    """The process status; ``-9`` when it was SIGKILLed (by a crash point or by us)."""
    seconds: float
    log: Path
    crashpoint: str | None = None
    """The crash point it was armed with."""
    crashed_at: str | None = None
    """The crash point it reported reaching before it died."""
    killed_after: float | None = None
    """Set when the harness SIGKILLed it after this many seconds."""
    timed_out: bool = False

    @property
    def killed(self) -> bool:
        return self.exit_code == -signal.SIGKILL


def _sigkill(pid: int) -> None:
    """SIGKILL without ``Popen.kill()``: its ``poll()`` would reap an exiting child behind asyncio's
    watcher, which then reports exit status 255 instead of the real one."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def run_daemon(
    ws: Workspace,
    *,
    crashpoint: str | None = None,
    kill_after: float | None = None,
    timeout: float = 120.0,
    once: bool = True,
    extra_env: Mapping[str, str] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunRecord:
    """Run the daemon until it exits (``--once``), dies at ``crashpoint``, or is killed by us.

    ``on_start`` is given the process id as soon as it exists (to watch its memory, say).
    """
    number = len(ws.runs) + 1
    log_path = ws.logs / f"run-{number:03d}.log"
    argv = [sys.executable, "-m", "bulkd", "run", "--config", str(ws.config_path)]
    if once:
        argv.append("--once")
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=ws.env(crashpoint, extra_env),
            cwd=ws.root,
        )
        if on_start is not None:
            on_start(proc.pid)
        limit = timeout if kill_after is None else min(timeout, kill_after)
        killed_after: float | None = None
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            _sigkill(proc.pid)
            await proc.wait()
            if kill_after is not None and kill_after <= timeout:
                killed_after = kill_after if proc.returncode == -signal.SIGKILL else None
            else:
                timed_out = True
        except BaseException:
            _sigkill(proc.pid)
            await proc.wait()
            raise
    found = _CRASH_LINE.search(log_path.read_bytes())
    record = RunRecord(
        number=number,
        exit_code=proc.returncode if proc.returncode is not None else -1,
        seconds=time.monotonic() - started,
        log=log_path,
        crashpoint=crashpoint,
        crashed_at=found.group(1).decode() if found else None,
        killed_after=killed_after,
        timed_out=timed_out,
    )
    ws.runs.append(record)
    return record


class LiveDaemon:
    """A daemon serving without ``--once`` until :meth:`stop` sends SIGTERM (a graceful stop)."""

    def __init__(
        self, ws: Workspace, *, timeout: float = 300.0, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.ws = ws
        self.pid: int | None = None
        self._started = asyncio.Event()
        self._task = asyncio.create_task(
            run_daemon(ws, once=False, timeout=timeout, extra_env=extra_env, on_start=self._on_start)
        )

    def _on_start(self, pid: int) -> None:
        self.pid = pid
        self._started.set()

    @property
    def log(self) -> bytes:
        """What this run has written so far."""
        path = self.ws.logs / f"run-{len(self.ws.runs) + 1:03d}.log"
        return path.read_bytes() if path.exists() else b""

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def wait_started(self) -> int:
        await self._started.wait()
        assert self.pid is not None
        return self.pid

    async def stop(self, signum: int = signal.SIGTERM) -> RunRecord:
        """Signal the daemon (if it still runs) and wait for it to exit."""
        await self._started.wait()
        if not self._task.done() and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
        return await self._task


async def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
