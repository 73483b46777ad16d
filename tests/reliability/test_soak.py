"""Issue 6, part 2: a seeded randomised soak: random inputs × random simulator faults × random kills.

Each case comes from :func:`bulkd.selftest.random_scenario` (one or two of: 500/503, 429 with
Retry-After, resets mid-body, resets after the object was stored, expiring URLs; up to three
SIGKILLs at random times or a random crash point at a random pass; late files; random chunk
size, concurrency and parallel conversions). A failure prints the case's seed; replay it with
``BULKD_SOAK_SEED=<seed> BULKD_SOAK_CASES=1``.

CI runs cases for ``BULKD_SOAK_SECONDS`` (default 25 s) from a fixed seed; the ``slow`` variant
runs for ``BULKD_SOAK_LONG_SECONDS`` (default 15 minutes) from a seed taken from the clock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from reliability_support import run_ok

from bulkd.selftest import all_crashpoints, random_scenario

DEFAULT_SEED = 6_0601


async def _soak(tmp_path: Path, seed: int, seconds: float, max_cases: int) -> int:
    crashpoints = all_crashpoints()
    deadline = time.monotonic() + seconds
    cases = 0
    while cases < max_cases and (cases == 0 or time.monotonic() < deadline):
        scenario = random_scenario(seed + cases, crashpoints)
        print(f"soak case seed={scenario.seed}: {scenario.name}")
        await run_ok(scenario, tmp_path / f"case{cases:04d}")
        cases += 1
    return cases


async def test_soak_bounded(tmp_path: Path) -> None:
    seed = int(os.environ.get("BULKD_SOAK_SEED", str(DEFAULT_SEED)))
    seconds = float(os.environ.get("BULKD_SOAK_SECONDS", "25"))
    cases = await _soak(tmp_path, seed, seconds, int(os.environ.get("BULKD_SOAK_CASES", "1000")))
    assert cases >= 1


@pytest.mark.slow
@pytest.mark.timeout(0)
async def test_soak_long(tmp_path: Path) -> None:
    seed = int(os.environ.get("BULKD_SOAK_SEED", str(int(time.time()) % 1_000_000 * 1000)))
    seconds = float(os.environ.get("BULKD_SOAK_LONG_SECONDS", "900"))
    await _soak(tmp_path, seed, seconds, 1_000_000)
