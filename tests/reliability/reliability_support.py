"""Helpers shared by the reliability suites: scenario runs, tmpfs filling, RSS measurement.

A module of its own (not conftest) so that ``from reliability_support import ...`` names one file
whatever other test directories pytest collects in the same run.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bulkd.selftest import Outcome, Scenario, run_scenario


async def run_ok(scenario: Scenario, root: Path) -> Outcome:
    """Run a scenario and fail with its full story (seed, runs, problems, log tail) if a promise broke."""
    outcome = await run_scenario(scenario, root)
    assert outcome.ok, outcome.explain()
    return outcome


Mount = Callable[..., Path]


def fill(directory: Path, leave: int) -> Path:
    """Fill the filesystem of ``directory`` with one filler file until about ``leave`` bytes are free."""
    filler = directory / "filler.bin"
    free = shutil.disk_usage(directory).free
    with filler.open("wb") as fh:
        remaining = max(0, free - leave)
        while remaining > 0:
            piece = min(remaining, 1 << 20)
            try:
                fh.write(b"\0" * piece)
                fh.flush()
            except OSError:
                break
            remaining -= piece
    return filler


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    seconds: float


def measure(argv: Sequence[str], *, timeout: float = 120.0, cwd: Path | None = None) -> Measured:
    """Run a command to completion, sampling its resident memory (psutil) every 10 ms."""
    started = time.monotonic()
    with subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, text=True
    ) as proc:
        peak = _watch_rss(proc, started + timeout)
        out, err = proc.communicate()
    return Measured(proc.returncode, out, err, peak, time.monotonic() - started)


def _watch_rss(proc: subprocess.Popen[str], deadline: float) -> int:
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{proc.args} did not finish in time")
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    return peak


async def sample_rss(pid: int, stop: asyncio.Event, interval: float = 0.02) -> list[int]:
    """Resident memory of ``pid`` every ``interval`` seconds until ``stop`` is set or it exits."""
    samples: list[int] = []
    try:
        watched = psutil.Process(pid)
        while not stop.is_set():
            samples.append(watched.memory_info().rss)
            await asyncio.sleep(interval)
    except psutil.Error:
        pass
    return samples
