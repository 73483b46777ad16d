"""Issue 6, part 3: local faults. Disk full while writing a chunk, fsync failing, the ledger's disk
full, a read-only spool at start, a spool on another filesystem, and memory on a file larger than
the bound.

Disk trouble is real where the machine allows it: a small tmpfs (``mount -t tmpfs -o size=…``,
root only; the tests skip with the reason otherwise) filled by a filler file that is deleted to
"return the space". Failing ``fsync`` cannot be produced by a tmpfs, so it comes through an
injectable seam in the test, not in the product: a ``sitecustomize`` on the daemon's
``PYTHONPATH`` wraps ``os.fsync`` to raise ``ENOSPC`` for matching paths while a flag file exists.

What must hold: intake pauses, nothing acknowledged is lost (the oracle between runs), and work
resumes and drains when the space returns.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
from reliability_support import Mount, fill, sample_rss

from bulkd.selftest import (
    InputSet,
    LiveDaemon,
    Rig,
    Scenario,
    Tuning,
    drop_into_inbox,
    generate_inputs,
    run_daemon,
    run_scenario,
    wait_until,
)


def _inputs(seed: int, files: int, rows: tuple[int, int]) -> InputSet:
    return generate_inputs(random.Random(seed), dataset_id=f"lf{seed}", files=files, rows=rows)


def _failed_sources(rig: Rig) -> list[str]:
    failed = rig.ws.failed
    return sorted(p.name for p in failed.glob("*.report.json")) if failed.exists() else []


def _done_reports(rig: Rig) -> int:
    return len(list(rig.ws.done.glob("*.report.json"))) if rig.ws.done.exists() else 0


async def _recover_and_check(rig: Rig, daemon: LiveDaemon, inputs: InputSet) -> None:
    """After the fault cleared: the daemon drains by itself, stops cleanly, and the oracle holds."""
    await wait_until(lambda: _done_reports(rig) == len(inputs.files), 60, "every source archived")
    run = await daemon.stop()
    assert run.exit_code == 0
    problems = await rig.final_problems(inputs)
    assert not problems, problems


async def test_disk_full_while_writing_chunks_pauses_then_resumes(tmp_path: Path, tmpfs: Mount) -> None:
    small = tmpfs(tmp_path / "small", "4m")  # inbox, work, spool, done: one filesystem, as bulkd requires
    tuning = Tuning(extra={"state": {"dir": str(tmp_path / "state")}})
    async with await Rig.start(tmp_path / "rig", tuning=tuning, data=small / "var") as rig:
        inputs = _inputs(31, files=3, rows=(2500, 3000))
        drop_into_inbox(rig.ws.inbox, inputs.files)
        filler = fill(small, leave=100_000)  # room to claim and start, not for every chunk
        daemon = LiveDaemon(rig.ws)
        await wait_until(lambda: b"No space left on device" in daemon.log, 30, "the daemon to hit ENOSPC")
        await asyncio.sleep(1.0)
        assert _failed_sources(rig) == [], "a full disk failed jobs instead of pausing them"
        assert daemon.running
        filler.unlink()
        await _recover_and_check(rig, daemon, inputs)


_FSYNC_SEAM = """
import errno, os
_flag, _match = os.environ.get("RELIABILITY_FSYNC_FLAG"), os.environ.get("RELIABILITY_FSYNC_MATCH", "")
if _flag:
    _real_fsync = os.fsync

    def _fsync(fd):
        if os.path.exists(_flag):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if _match in target:
                raise OSError(errno.ENOSPC, "No space left on device (injected at fsync)")
        return _real_fsync(fd)

    os.fsync = _fsync
"""


@pytest.mark.parametrize(
    ("target", "match"),
    [
        pytest.param("claim records", ".claim.json.", id="claim-record"),
        pytest.param("chunk files", ".ndjson.gz.", id="chunk"),
    ],
)
async def test_fsync_failure_pauses_then_resumes(tmp_path: Path, target: str, match: str) -> None:
    seam = tmp_path / "seam"
    seam.mkdir()
    (seam / "sitecustomize.py").write_text(_FSYNC_SEAM)
    flag = tmp_path / "fsync-fails"
    flag.touch()
    env = {"PYTHONPATH": str(seam), "RELIABILITY_FSYNC_FLAG": str(flag), "RELIABILITY_FSYNC_MATCH": match}
    async with await Rig.start(tmp_path / "rig") as rig:
        inputs = _inputs(37, files=3, rows=(200, 400))
        drop_into_inbox(rig.ws.inbox, inputs.files)
        daemon = LiveDaemon(rig.ws, extra_env=env)
        await wait_until(lambda: b"injected at fsync" in daemon.log, 30, f"fsync of {target} to fail")
        await asyncio.sleep(1.0)
        assert _failed_sources(rig) == [], f"a failed fsync of {target} failed jobs instead of pausing them"
        assert _done_reports(rig) < len(inputs.files), "the fault did not hold anything up"
        flag.unlink()
        await _recover_and_check(rig, daemon, inputs)


async def test_ledger_disk_full_stops_the_daemon_and_a_restart_drains(tmp_path: Path, tmpfs: Mount) -> None:
    """SQLite cannot commit (SQLITE_FULL): bulkd stops rather than guess its state (exit status not 0),
    nothing it acknowledged is lost, and a restart once the space is back delivers the rest."""
    state = tmpfs(tmp_path / "state", "16m")
    async with await Rig.start(tmp_path / "rig", tuning=Tuning(extra={"state": {"dir": str(state)}})) as rig:
        inputs = _inputs(41, files=6, rows=(200, 500))
        drop_into_inbox(rig.ws.inbox, inputs.files[:2])
        daemon = LiveDaemon(rig.ws)
        await wait_until(lambda: _done_reports(rig) == 2, 30, "the first two sources archived")
        filler = fill(state, leave=0)
        drop_into_inbox(rig.ws.inbox, inputs.files[2:])
        await wait_until(lambda: not daemon.running, 30, "the daemon to stop on a full ledger disk")
        run = await daemon.stop()
        assert run.exit_code != 0, "bulkd stopped on a ledger failure but reported success"
        assert b"disk is full" in run.log.read_bytes()
        filler.unlink()
        assert await rig.progress_problems(inputs) == []
        again = await run_daemon(rig.ws)
        assert again.exit_code == 0
        problems = await rig.final_problems(inputs)
        assert not problems, problems


async def test_read_only_spool_is_refused_at_start(tmp_path: Path, tmpfs: Mount) -> None:
    spool = tmpfs(tmp_path / "spool", "1m", readonly=True)
    async with await Rig.start(tmp_path / "rig", tuning=Tuning(extra={"spool": {"dir": str(spool)}})) as rig:
        run = await run_daemon(rig.ws, timeout=30)
        log = run.log.read_text()
        assert run.exit_code == 2, log
        assert "spool.dir" in log, log
        assert "writable" in log, log


async def test_spool_on_another_filesystem_still_finishes_jobs(tmp_path: Path, tmpfs: Mount) -> None:
    spool = tmpfs(tmp_path / "spool", "64m")
    scenario = Scenario(
        "spool on its own filesystem", 43, tuning=Tuning(extra={"spool": {"dir": str(spool)}}), max_runs=3
    )
    outcome = await run_scenario(scenario, tmp_path / "run")
    assert outcome.ok, outcome.explain()


BIG_FILE_BYTES = 128 << 20
RSS_GROWTH_BOUND = 96 << 20
"""Smaller than the file: the daemon streams it rather than holding it."""


def _wide_csv(path: Path, total: int, cell: int = 512 * 1024) -> int:
    """A CSV of ``total`` bytes in rows with one ``cell``-byte value each; returns the row count."""
    rng = random.Random(5)
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789"
    block = bytes(rng.choice(alphabet) for _ in range(cell + 4096))
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with path.open("wb") as fh:
        fh.write(b"link.email,action_at,email_id,campaign_id\n")
        while fh.tell() < total:
            offset = rows % 4096
            fh.write(
                b"w%d@example.com,2024-01-02T03:04:05Z,w%d,%s\n" % (rows, rows, block[offset : offset + cell])
            )
            rows += 1
    return rows


async def _peak_rss(rig: Rig) -> tuple[int, int]:
    """Run the daemon once over what the inbox holds; (exit status, peak RSS in bytes)."""
    stop = asyncio.Event()
    sampler: list[asyncio.Task[list[int]]] = []
    run = await run_daemon(
        rig.ws, timeout=240, on_start=lambda pid: sampler.append(asyncio.create_task(sample_rss(pid, stop)))
    )
    stop.set()
    samples = await sampler[0]
    return run.exit_code, max(samples, default=0)


async def test_memory_stays_bounded_on_a_file_larger_than_the_bound(tmp_path: Path) -> None:
    async with await Rig.start(tmp_path / "rig", tuning=Tuning(chunk_max_records=16)) as rig:
        folder = rig.ws.inbox / "mem" / "email_open"
        small_rows = _wide_csv(folder / "small.csv", 1 << 20)
        code, baseline = await _peak_rss(rig)
        assert code == 0
        big_rows = _wide_csv(folder / "big.csv.part", BIG_FILE_BYTES)
        os.rename(folder / "big.csv.part", folder / "big.csv")
        code, peak = await _peak_rss(rig)
        assert code == 0
        await rig.sim.drain()
        assert rig.sim.stats("mem").loaded == small_rows + big_rows
    growth = peak - baseline
    print(f"RSS baseline {baseline >> 20} MiB, peak {peak >> 20} MiB on a {BIG_FILE_BYTES >> 20} MiB file")
    assert growth < RSS_GROWTH_BOUND, (
        f"converting a {BIG_FILE_BYTES >> 20} MiB file grew the daemon's RSS by {growth >> 20} MiB "
        f"(baseline {baseline >> 20} MiB, peak {peak >> 20} MiB)"
    )
