"""One job's state machine (:class:`bulkd.jobs.JobRunner`) in process, with the real ledger, the real
uploader and the real simulator on loopback: resuming, regenerating lost chunks, refusing changed
bytes, cancelling a conversion, listeners."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from daemon_helpers import TOKEN, InputFile, base_settings, canonical, customer_csv, dump_toml, merge

import bulkd.jobs
from bulkd.config import Config, load_config
from bulkd.hubsim import Faults, RunningSimulator, SimulatorConfig, start_simulator
from bulkd.inbox import make_job_id
from bulkd.jobs import DeliveryDeferred, JobEvent, JobRunner, chunk_timestamp, sweep_spool
from bulkd.ledger import AsyncLedger, ChunkState, JobState, Ledger
from bulkd.secret import Secret
from bulkd.upload import Uploader, UploadSettings

STOPPED: tuple[type[Exception], ...] = tuple(
    getattr(bulkd.jobs, name)
    for name in ("JobInterrupted", "ConversionCancelled")
    if hasattr(bulkd.jobs, name)
)
"""What ``JobRunner.run`` raises when the daemon is stopping (the class was being renamed)."""


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[RunningSimulator]:
    async with await start_simulator(SimulatorConfig(Secret(TOKEN), tmp_path / "hubsim")) as running:
        yield running


@dataclass
class Parts:
    config: Config
    ledger: AsyncLedger
    uploader: Uploader
    runner: JobRunner
    events: list[JobEvent]


@pytest.fixture
async def parts(tmp_path: Path, sim: RunningSimulator) -> AsyncIterator[Parts]:
    overrides = {"convert": {"chunk_max_records": 20}}
    path = tmp_path / "bulkd.toml"
    path.write_text(dump_toml(merge(base_settings(tmp_path / "data", sim.base_url), overrides)))
    config = load_config(path, {"BULKD_API_TOKEN": TOKEN})
    for directory in (config.work_dir, config.done_dir, config.failed_dir, config.spool_dir):
        directory.mkdir(parents=True)
    # One upload at a time, one attempt each: fault draws decide each chunk's fate in order.
    settings = UploadSettings(
        sim.base_url, Secret(TOKEN), concurrency=1, max_attempts=1, backoff_base=0.01, require_https=False
    )
    ledger = await AsyncLedger.open(config.state_dir)
    try:
        async with Uploader(settings) as uploader:
            runner = JobRunner(config, ledger, uploader, stopping=threading.Event())
            events: list[JobEvent] = []
            runner.listeners.append(events.append)
            yield Parts(config, ledger, uploader, runner, events)
    finally:
        await ledger.close()


async def claim(parts: Parts, f: InputFile) -> str:
    """Put ``f`` in the work area and record it, as the service does after a claim."""
    staging = parts.config.work_dir / "staging"
    staging.write_bytes(f.data)
    st = os.stat(staging)
    job_id = make_job_id(f.sha256, st.st_dev, st.st_ino, st.st_mtime_ns)
    work = parts.config.work_dir / f"{job_id}.csv"
    staging.rename(work)
    await parts.ledger.run(
        Ledger.add_job,
        job_id=job_id,
        source_name=f.rel,
        dataset_id=f.dataset_id,
        record_type=f.record_type,
        profile=None,
        content_sha256=f.sha256,
        size=len(f.data),
        device=st.st_dev,
        inode=st.st_ino,
        claimed_path=str(work),
    )
    return job_id


async def stored(sim: RunningSimulator) -> dict[str, bytes]:
    """Stored objects by the sha256 of their bytes."""
    await sim.drain()
    objects = sorted((sim.config.store_dir / "objects").iterdir())
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.read_bytes() for p in objects}


async def test_a_job_goes_from_claimed_to_archived(parts: Parts, sim: RunningSimulator) -> None:
    f = customer_csv("dsjob/customer_record/a.csv", 90)
    job_id = await claim(parts, f)
    job = await parts.runner.run(job_id)
    assert job.state is JobState.ARCHIVED
    assert job.report_path == str(parts.config.done_dir / f"{job_id}.report.json")
    assert (parts.config.done_dir / f"{job_id}.csv").read_bytes() == f.data
    assert not parts.runner.spool_dir(job_id).exists()
    assert parts.runner.live == {}

    job_states = [e.state for e in parts.events if e.kind == "job"]
    assert job_states == ["converting", "converted", "delivering", "delivered", "archived"]
    chunks = await parts.ledger.run(Ledger.chunks_of, job_id)
    delivered = [e for e in parts.events if e.kind == "chunk" and e.state == "delivered"]
    assert sorted(e.chunk_index or 0 for e in delivered) == [c.chunk_index for c in chunks]
    assert all(e.state == "delivered" and e.seconds is not None for e in delivered)
    assert sum(e.records for e in delivered) == len(f.valid)
    assert all(c.filename.endswith(f"_{chunk_timestamp(job)}_{c.chunk_index:05d}.ndjson.gz") for c in chunks)

    records = await sim.records(f.dataset_id)
    assert sorted(canonical(r) for r in records) == sorted(canonical(r) for r in f.valid)


async def test_lost_and_damaged_chunk_files_are_regenerated_with_the_same_bytes(
    parts: Parts, sim: RunningSimulator
) -> None:
    f = customer_csv("dsregen/customer_record/a.csv", 100)
    job_id = await claim(parts, f)
    sim.set_faults(Faults(post_errors={503: 1.0}, retry_after_seconds=0))
    with pytest.raises(DeliveryDeferred):
        await parts.runner.run(job_id)
    job = await parts.ledger.run(Ledger.get_job, job_id)
    assert job.state is JobState.DELIVERING
    chunks = await parts.ledger.run(Ledger.chunks_of, job_id)
    assert len(chunks) >= 3
    files = sorted(parts.runner.spool_dir(job_id).glob("*.ndjson.gz"))
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:-5] + b"xxxxx")

    sim.set_faults(Faults())
    job = await parts.runner.run(job_id)
    assert job.state is JobState.ARCHIVED
    assert set(await stored(sim)) == {c.sha256 for c in chunks}


async def test_changed_bytes_for_a_delivered_chunk_fail_the_job(parts: Parts, sim: RunningSimulator) -> None:
    f = customer_csv("dschanged/customer_record/a.csv", 100)
    job_id = await claim(parts, f)
    # One upload at a time and one attempt each: the seeded draws deliver some chunks, not all.
    sim.set_faults(Faults(post_errors={503: 0.5}, retry_after_seconds=0, seed=3))
    with pytest.raises(DeliveryDeferred):
        await parts.runner.run(job_id)
    states = [c.state for c in await parts.ledger.run(Ledger.chunks_of, job_id)]
    assert ChunkState.DELIVERED in states
    assert {s for s in states if s is not ChunkState.DELIVERED}, "every chunk was delivered"

    # The work file changes under bulkd (and the spool is lost): regenerated chunks cannot match.
    work = Path((await parts.ledger.run(Ledger.get_job, job_id)).claimed_path)
    work.write_bytes(work.read_bytes().replace(b"-1@example.com", b"-1@example.org"))
    for chunk in parts.runner.spool_dir(job_id).glob("*.ndjson.gz"):
        chunk.unlink()
    sim.set_faults(Faults())
    job = await parts.runner.run(job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert "differ" in job.error
    report = orjson.loads((parts.config.failed_dir / f"{job_id}.report.json").read_bytes())
    assert report["state"] == "failed"
    assert [c["state"] for c in report["chunks"]] == [s.value for s in states]


async def test_a_stop_interrupts_the_job_and_leaves_no_partial_output(parts: Parts) -> None:
    f = customer_csv("dsstop/customer_record/a.csv", 60)
    job_id = await claim(parts, f)
    parts.runner.stopping.set()
    with pytest.raises(STOPPED):
        await parts.runner.run(job_id)
    job = await parts.ledger.run(Ledger.get_job, job_id)
    assert job.state in (JobState.CLAIMED, JobState.CONVERTING)
    spool = parts.runner.spool_dir(job_id)
    assert not spool.exists() or list(spool.iterdir()) == []
    assert await parts.ledger.run(Ledger.chunks_of, job_id) == []

    parts.runner.stopping.clear()
    assert (await parts.runner.run(job_id)).state is JobState.ARCHIVED


async def test_a_failing_listener_never_stops_a_job(parts: Parts, caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: JobEvent) -> None:
        raise RuntimeError("listener bug")

    parts.runner.listeners.insert(0, broken)
    f = customer_csv("dslisten/customer_record/a.csv", 30)
    with caplog.at_level(logging.ERROR, logger="bulkd.jobs"):
        job = await parts.runner.run(await claim(parts, f))
    assert job.state is JobState.ARCHIVED
    assert "a job event listener failed" in caplog.text
    assert [e.state for e in parts.events if e.kind == "job"][-1] == "archived"


async def test_a_refused_file_fails_with_its_reason(parts: Parts) -> None:
    f = InputFile("dsbad/customer_record/a.csv", bytes(range(256)) * 8, (), ())
    job_id = await claim(parts, f)
    job = await parts.runner.run(job_id)
    assert job.state is JobState.FAILED
    assert job.error
    assert (parts.config.failed_dir / f"{job_id}.csv").read_bytes() == f.data
    assert (parts.config.failed_dir / f"{job_id}.report.json").exists()


def test_sweep_spool_keeps_live_jobs_minus_their_temp_files(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    live, orphan = spool / "live-job", spool / "orphan-job"
    for directory in (live, orphan):
        directory.mkdir(parents=True)
        (directory / "ds_customer_record_1_00001.ndjson.gz").write_bytes(gzip.compress(b"{}\n"))
        (directory / ".ds_customer_record_1_00002.ndjson.gz.abc123.tmp").write_bytes(b"partial")
    (spool / "stray-file").write_bytes(b"x")
    sweep_spool(spool, {"live-job"})
    assert sorted(p.name for p in spool.iterdir()) == ["live-job", "stray-file"]
    assert [p.name for p in live.iterdir()] == ["ds_customer_record_1_00001.ndjson.gz"]
    sweep_spool(tmp_path / "absent", set())
