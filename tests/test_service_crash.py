"""Kill the daemon with SIGKILL at named crash points, restart it, and demand the same end state.

The simulator runs in the test process, so it outlives each killed daemon and remembers every
object it stored. After the restart (``--once``, no crash point) the oracle must hold: the
datasets hold exactly the valid records, rejects hold exactly the invalid rows (each once), every
source is archived with a report, no temp file is left anywhere under the data directory and the
ledger passes ``PRAGMA integrity_check``.

One big CSV (two read batches, several chunks) goes in first; two more files arrive once it is
claimed, so the crash points fire mid-way through a realistic run rather than at its edges.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import (
    Daemon,
    InputFile,
    SimThread,
    check_end_state,
    customer_csv,
    customer_parquet,
    email_ndjson,
    killed_by_sigkill,
    wait_until,
)

BIG_ROWS = 70_000
"""More than one read batch (65,536 rows), so ``job.convert.batch:2`` falls inside the file."""

CRASHES = [
    pytest.param("inbox.claim.moved", id="after-claim"),
    pytest.param("job.convert.batch:2", id="mid-conversion"),
    pytest.param("chunk.renamed:3", id="after-chunk-renamed"),
    pytest.param("upload.created:2", id="after-post"),
    pytest.param("upload.put.body:2", id="mid-put"),
    pytest.param("upload.put.done:2", id="after-put-before-commit"),
    pytest.param("job.archive.before", id="before-archive"),
    pytest.param("durable.write.synced:1", id="temp-synced-not-renamed"),
    pytest.param("ledger.txn.written:5", id="txn-written-5"),
    pytest.param("ledger.txn.committed:1", id="txn-committed-1"),
    pytest.param("ledger.txn.committed:7", id="txn-committed-7"),
    pytest.param("ledger.txn.committed:33", id="txn-committed-33"),
]

STORED_ONCE = {
    "inbox.claim.recorded",
    "inbox.claim.moved",
    "job.convert.batch",
    "chunk.renamed",
    "upload.created",
    "upload.put.body",
}
"""Crash points where no PUT can be in doubt: they fire before the first delivery (the big file's
claim and conversion) or hold the only upload slot themselves. Elsewhere the store may already
hold a chunk whose delivery the ledger never heard of (the PUT in flight when the process died,
or the one of ``upload.put.done``), so the restart sends the same bytes again under a fresh
upload id: the protocol offers no way to ask whether an upload arrived."""


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimThread]:
    with SimThread(tmp_path / "hubsim") as running:
        yield running


def crash_inputs() -> tuple[InputFile, list[InputFile]]:
    big = customer_csv("dsbig/customer_record/big.csv", BIG_ROWS, bad_every=97)
    later = [
        customer_parquet("dspq/customer_record/p.parquet", 400),
        email_ndjson("dsev/email_send/e.ndjson", 300),
    ]
    return big, later


@pytest.mark.parametrize("crashpoint", CRASHES)
def test_sigkill_at_crash_point_then_restart(tmp_path: Path, sim: SimThread, crashpoint: str) -> None:
    daemon = Daemon.create(
        tmp_path,
        sim,
        # One upload at a time: only the crash point itself can leave a PUT in doubt.
        {"convert": {"chunk_max_records": 10_000}, "upload": {"concurrency": 1}},
    )
    big, later = crash_inputs()
    big.write(daemon.inbox)
    with daemon.start("--once", crashpoint=crashpoint) as running:
        wait_until(
            lambda: not (daemon.inbox / big.rel).exists() or running.proc.poll() is not None,
            60,
            "the big file to be claimed",
        )
        for f in later:
            f.write(daemon.inbox)
        code = running.wait(90)
    killed_by_sigkill(code, crashpoint)
    name = crashpoint.partition(":")[0]
    assert f"crash point {name!r} reached" in daemon.logs[-1]

    proc = daemon.run("--once")
    assert proc.returncode == 0, proc.stderr[-3000:]

    check_end_state(daemon, sim, [big, *later], reput_ok=name not in STORED_ONCE)


def test_sigkill_while_writing_a_report_leaves_no_temp_file(tmp_path: Path, sim: SimThread) -> None:
    daemon = Daemon.create(tmp_path, sim)
    only = customer_csv("dsrep/customer_record/a.csv", 50)
    only.write(daemon.inbox)
    # Write 1 is the claim record, write 2 the report.
    killed_by_sigkill(daemon.run("--once", crashpoint="durable.write.synced:2"), "durable.write.synced:2")
    assert daemon.run("--once").returncode == 0
    check_end_state(daemon, sim, [only])
