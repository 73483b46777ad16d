"""Fixtures for the reliability suites (issue 6): tmpfs mounts, RSS measurement, slow-test gating.

The suites drive the real daemon through :mod:`bulkd.selftest`. Tests marked ``slow`` (the long
soak, the big-file runs) are skipped unless ``BULKD_SLOW=1`` is set or ``-m slow`` selects them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from bulkd.selftest import Outcome, Scenario, run_scenario


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = os.environ.get("BULKD_SLOW") == "1" or "slow" in (config.option.markexpr or "")
    if wanted:
        return
    skip = pytest.mark.skip(reason="slow: set BULKD_SLOW=1 or select with -m slow")
    here = Path(__file__).parent
    for item in items:
        if "slow" in item.keywords and here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


async def run_ok(scenario: Scenario, root: Path) -> Outcome:
    """Run a scenario and fail with its full story (seed, runs, problems, log tail) if a promise broke."""
    outcome = await run_scenario(scenario, root)
    assert outcome.ok, outcome.explain()
    return outcome


Mount = Callable[..., Path]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``mount(path, size="2m", readonly=False)``: a small tmpfs there, unmounted afterwards.

    Skips the test when mounting is not permitted (not root, or no CAP_SYS_ADMIN in a container).
    """
    mounted: list[Path] = []

    def mount(path: Path, size: str = "2m", *, readonly: bool = False) -> Path:
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


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
