"""Issue 6, part 1: SIGKILL at every declared crash point (and at later passes of a few), restart, drain.

The list is not written here: it is every name :func:`bulkd.durable.declare_crashpoint` registered
once the daemon's modules are imported, so a crash point added to the code is tested without
touching this file. Each case runs three seeded files (CSV, CSV.gz, NDJSON, NDJSON.gz or Parquet;
small chunks, so every boundary is crossed several times) against the in-process simulator, kills
the first run at the crash point, restarts once, and checks the full oracle of
:mod:`bulkd.selftest.oracle`.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from reliability_support import run_ok

from bulkd.selftest import Scenario, all_crashpoints
from bulkd.selftest.matrix import NTH_PASSES

CRASHPOINTS = all_crashpoints()

ISSUE_3_BOUNDARIES = {
    "inbox.claim.moved",  # after claim
    "job.convert.batch",  # mid-conversion
    "chunk.renamed",  # after a chunk is renamed
    "upload.created",  # after POST
    "upload.put.body",  # mid-PUT
    "upload.put.done",  # after PUT, before the ledger commit
    "job.archive.before",  # before archiving
}


def test_every_boundary_the_issues_name_has_a_crash_point() -> None:
    assert set(CRASHPOINTS) >= ISSUE_3_BOUNDARIES
    assert set(CRASHPOINTS) >= {p.partition(":")[0] for p in NTH_PASSES}


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


@pytest.mark.parametrize("crashpoint", [*CRASHPOINTS, *NTH_PASSES])
async def test_sigkill_at_crash_point_then_restart(tmp_path: Path, crashpoint: str) -> None:
    scenario = Scenario(f"crash point {crashpoint}", _seed(crashpoint), crashpoint=crashpoint)
    outcome = await run_ok(scenario, tmp_path)
    first, *rest = outcome.runs
    assert first.killed
    assert first.crashed_at == crashpoint.partition(":")[0]
    # One restart finishes the job: nothing waits for a retry timer or a second start.
    assert [run.exit_code for run in rest] == [0], outcome.explain()
    assert outcome.tally.delivered == outcome.tally.records_in > 0


@pytest.mark.parametrize("crashpoint", ["job.convert.batch", "chunk.renamed:2", "upload.put.done"])
async def test_purchases_fold_the_same_after_a_crash(tmp_path: Path, crashpoint: str) -> None:
    """Order lines interleaved across the file fold into one record per order, spilling through
    partitions in the spool; a crash mid-way must not split, drop or double an order."""
    scenario = Scenario(
        f"purchases, crash point {crashpoint}",
        _seed(f"purchase {crashpoint}"),
        crashpoint=crashpoint,
        record_type="purchase",
        rows=(150, 400),
    )
    outcome = await run_ok(scenario, tmp_path)
    assert [run.exit_code for run in outcome.runs] == [-9, 0], outcome.explain()
