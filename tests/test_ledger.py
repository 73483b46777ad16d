"""The SQLite ledger: state machine, queries, durability under SIGKILL, single-instance lock, and the
read-only view that ``bulkd status`` opens beside a daemon."""

from __future__ import annotations

import itertools
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkd.durable import CRASHPOINT_ENV
from bulkd.errors import LedgerError
from bulkd.ledger import (
    CHUNK_TRANSITIONS,
    DB_NAME,
    JOB_TRANSITIONS,
    SCHEMA_VERSION,
    TXN_COMMITTED,
    TXN_WRITTEN,
    AsyncLedger,
    ChunkState,
    JobState,
    Ledger,
    ReadOnlyLedger,
)

REPO = Path(__file__).resolve().parents[1]
J, C = JobState, ChunkState

# The shortest legal walk from "claimed" to each job state, and from "written" to each chunk state.
JOB_PATHS: dict[JobState, tuple[JobState, ...]] = {
    J.CLAIMED: (),
    J.CONVERTING: (J.CONVERTING,),
    J.CONVERTED: (J.CONVERTING, J.CONVERTED),
    J.DELIVERING: (J.CONVERTING, J.CONVERTED, J.DELIVERING),
    J.DELIVERED: (J.CONVERTING, J.CONVERTED, J.DELIVERING, J.DELIVERED),
    J.ARCHIVED: (J.CONVERTING, J.CONVERTED, J.DELIVERING, J.DELIVERED, J.ARCHIVED),
    J.FAILED: (J.FAILED,),
    J.DUPLICATE: (J.DUPLICATE,),
}
CHUNK_PATHS: dict[ChunkState, tuple[ChunkState, ...]] = {
    C.WRITTEN: (),
    C.CREATING: (C.CREATING,),
    C.CREATED: (C.CREATING, C.CREATED),
    C.DELIVERED: (C.CREATING, C.CREATED, C.DELIVERED),
    C.FAILED: (C.FAILED,),
}


class FakeClock:
    """A wall clock that advances one second per reading, so orderings are deterministic."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "state", clock=FakeClock())
    yield led
    led.close()


def add_job(led: Ledger, job_id: str = "job-1", sha: str = "a" * 64) -> None:
    led.add_job(
        job_id=job_id,
        source_name="crm/customers.csv",
        dataset_id="ds1",
        record_type="customer_record",
        profile=None,
        content_sha256=sha,
        size=123,
        device=1,
        inode=2,
        claimed_path=f"work/{job_id}.csv",
    )


def add_chunk(led: Ledger, job_id: str, index: int, sha: str = "c" * 64) -> None:
    led.add_chunk(
        job_id,
        index,
        filename=f"{job_id}-{index:05d}.ndjson.gz",
        path=f"/spool/{job_id}-{index:05d}.ndjson.gz",
        records=10,
        bytes=100,
        md5="m" * 32,
        sha256=sha,
    )


def walk_chunk(led: Ledger, job_id: str, index: int, target: ChunkState) -> None:
    for step in CHUNK_PATHS[target]:
        upload_id = "up-1" if step is C.CREATED else None
        led.transition_chunk(job_id, index, step, upload_id=upload_id)


def python_command(script: str, *args: str, crash: str | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment to run ``script`` against this checkout, crashing at ``crash`` if given."""
    env = {k: v for k, v in os.environ.items() if k != CRASHPOINT_ENV}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if crash:
        env[CRASHPOINT_ENV] = crash
    return [sys.executable, "-c", textwrap.dedent(script), *args], env


def run_python(script: str, *args: str, crash: str | None = None) -> subprocess.CompletedProcess[str]:
    argv, env = python_command(script, *args, crash=crash)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_fresh_ledger_is_healthy(ledger: Ledger, tmp_path: Path) -> None:
    assert ledger.integrity_check() == []
    raw = sqlite3.connect(tmp_path / "state" / DB_NAME)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


def test_full_lifecycle(ledger: Ledger) -> None:
    add_job(ledger)
    job = ledger.get_job("job-1")
    assert (job.state, job.source_name, job.profile, job.rows) == (J.CLAIMED, "crm/customers.csv", None, None)
    ledger.transition_job("job-1", J.CONVERTING)
    for index in range(3):
        add_chunk(ledger, "job-1", index)
    done = ledger.transition_job("job-1", J.CONVERTED, rows=31, records=30, rejected=1)
    assert (done.rows, done.records, done.rejected) == (31, 30, 1)
    assert done.updated_at > job.updated_at
    ledger.transition_job("job-1", J.DELIVERING)
    for index in range(3):
        walk_chunk(ledger, "job-1", index, C.DELIVERED)
    ledger.transition_job("job-1", J.DELIVERED)
    final = ledger.transition_job("job-1", J.ARCHIVED, report_path="/done/job-1.report.json")
    assert final.state is J.ARCHIVED
    assert final.report_path == "/done/job-1.report.json"
    assert final.rows == 31, "fields not passed keep their value"
    assert ledger.get_chunk("job-1", 2).upload_id == "up-1"


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(JobState, JobState)))
def test_job_transition_table(ledger: Ledger, src: JobState, dst: JobState) -> None:
    add_job(ledger)
    for step in JOB_PATHS[src]:
        ledger.transition_job("job-1", step)
    if dst in JOB_TRANSITIONS[src]:
        assert ledger.transition_job("job-1", dst).state is dst
    else:
        with pytest.raises(LedgerError, match="illegal transition"):
            ledger.transition_job("job-1", dst, error="nope")
        job = ledger.get_job("job-1")
        assert job.state is src
        assert job.error is None, "a refused transition changes nothing"


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(ChunkState, ChunkState)))
def test_chunk_transition_table(ledger: Ledger, src: ChunkState, dst: ChunkState) -> None:
    add_job(ledger)
    add_chunk(ledger, "job-1", 0)
    walk_chunk(ledger, "job-1", 0, src)
    upload_id = "up-2" if dst is C.CREATED else None
    if dst in CHUNK_TRANSITIONS[src]:
        assert ledger.transition_chunk("job-1", 0, dst, upload_id=upload_id).state is dst
    else:
        with pytest.raises(LedgerError, match="illegal transition"):
            ledger.transition_chunk("job-1", 0, dst, upload_id=upload_id)
        assert ledger.get_chunk("job-1", 0).state is src


def test_unknown_rows_are_ledger_errors(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="unknown job nope"):
        ledger.transition_job("nope", J.CONVERTING)
    with pytest.raises(LedgerError, match="unknown job"):
        ledger.get_job("nope")
    assert ledger.find_job("nope") is None
    add_job(ledger)
    with pytest.raises(LedgerError, match="unknown chunk 4"):
        ledger.transition_chunk("job-1", 4, C.CREATING)
    with pytest.raises(LedgerError, match="FOREIGN KEY"):
        add_chunk(ledger, "other-job", 0)  # foreign_keys=ON: the job must exist


def test_job_cannot_be_delivered_before_its_chunks(ledger: Ledger) -> None:
    add_job(ledger)
    for step in JOB_PATHS[J.DELIVERING]:
        ledger.transition_job("job-1", step)
    add_chunk(ledger, "job-1", 0)
    add_chunk(ledger, "job-1", 1)
    walk_chunk(ledger, "job-1", 0, C.DELIVERED)
    walk_chunk(ledger, "job-1", 1, C.CREATED)
    with pytest.raises(LedgerError, match="1 chunk"):
        ledger.transition_job("job-1", J.DELIVERED)
    ledger.transition_chunk("job-1", 1, C.DELIVERED)
    assert ledger.transition_job("job-1", J.DELIVERED).state is J.DELIVERED


def test_created_needs_upload_id_and_attempts_count(ledger: Ledger) -> None:
    add_job(ledger)
    add_chunk(ledger, "job-1", 0)
    ledger.transition_chunk("job-1", 0, C.CREATING)
    with pytest.raises(LedgerError, match="upload id"):
        ledger.transition_chunk("job-1", 0, C.CREATED)
    ledger.transition_chunk("job-1", 0, C.CREATED, upload_id="u1")
    again = ledger.transition_chunk("job-1", 0, C.CREATING, error="presigned URL expired")
    assert (again.attempts, again.upload_id, again.error) == (2, "u1", "presigned URL expired")
    assert ledger.transition_chunk("job-1", 0, C.CREATED, upload_id="u2").upload_id == "u2"


def test_add_job_refuses_duplicates_and_bad_ids(ledger: Ledger) -> None:
    add_job(ledger)
    with pytest.raises(LedgerError, match="already recorded"):
        add_job(ledger)
    for bad in ("", "../etc", "a/b", "x" * 65, "-lead"):
        with pytest.raises(LedgerError, match="invalid job id"):
            add_job(ledger, job_id=bad)


def test_add_chunk_is_idempotent_until_sent(ledger: Ledger) -> None:
    add_job(ledger)
    add_chunk(ledger, "job-1", 0)
    add_chunk(ledger, "job-1", 0)  # a regenerated, identical chunk
    add_chunk(ledger, "job-1", 0, sha="d" * 64)  # never sent: replaced
    assert ledger.get_chunk("job-1", 0).sha256 == "d" * 64
    ledger.transition_chunk("job-1", 0, C.CREATING)
    add_chunk(ledger, "job-1", 0, sha="d" * 64)
    with pytest.raises(LedgerError, match="content changed after creating"):
        add_chunk(ledger, "job-1", 0, sha="e" * 64)
    assert len(ledger.chunks_of("job-1")) == 1


def test_resume_queries(ledger: Ledger) -> None:
    for name, target in [("j-a", J.CONVERTING), ("j-b", J.CLAIMED), ("j-c", J.DELIVERING), ("j-d", J.FAILED)]:
        add_job(ledger, job_id=name)
        for step in JOB_PATHS[target]:
            ledger.transition_job(name, step)
    resumable = ledger.jobs_in_state(J.CLAIMED, J.CONVERTING, J.DELIVERING)
    assert [j.job_id for j in resumable] == ["j-a", "j-b", "j-c"], "oldest first"
    assert ledger.jobs_in_state() == []
    for index, chunk_target in enumerate([C.WRITTEN, C.CREATED, C.DELIVERED, C.CREATING]):
        add_chunk(ledger, "j-c", index)
        walk_chunk(ledger, "j-c", index, chunk_target)
    pending = ledger.chunks_of("j-c", C.WRITTEN, C.CREATING, C.CREATED)
    assert [c.chunk_index for c in pending] == [0, 1, 3]
    assert [c.chunk_index for c in ledger.chunks_of("j-c")] == [0, 1, 2, 3]
    assert ledger.chunks_of("j-a") == []


def test_list_jobs_newest_first_with_filter_and_paging(ledger: Ledger) -> None:
    for name in ("j-1", "j-2", "j-3"):
        add_job(ledger, job_id=name)
    ledger.transition_job("j-1", J.FAILED, error="bad header")
    assert [j.job_id for j in ledger.list_jobs()] == ["j-1", "j-3", "j-2"]
    assert [j.job_id for j in ledger.list_jobs(limit=1, offset=1)] == ["j-3"]
    failed = ledger.list_jobs(states=(J.FAILED,))
    assert [(j.job_id, j.error) for j in failed] == [("j-1", "bad header")]


def test_duplicate_detection(ledger: Ledger) -> None:
    sha = "f" * 64
    add_job(ledger, job_id="a-first", sha=sha)
    assert ledger.original_of("a-first") is None
    add_job(ledger, job_id="b-again", sha=sha)
    original = ledger.original_of("b-again")
    assert original is not None, "a job still on its way counts as the original"
    assert original.job_id == "a-first"
    for step in JOB_PATHS[J.DELIVERED]:
        ledger.transition_job("a-first", step)
    ledger.transition_job("a-first", J.ARCHIVED)
    assert ledger.original_of("b-again") == ledger.get_job("a-first")
    assert ledger.transition_job("b-again", J.DUPLICATE).state is J.DUPLICATE
    add_job(ledger, job_id="c-failed", sha="0" * 64)
    ledger.transition_job("c-failed", J.FAILED)
    add_job(ledger, job_id="d-retry", sha="0" * 64)
    assert ledger.original_of("d-retry") is None, "a failed job is no original"


def test_job_summary(ledger: Ledger) -> None:
    add_job(ledger)
    for index, target in enumerate([C.DELIVERED, C.DELIVERED, C.CREATED]):
        add_chunk(ledger, "job-1", index)
        walk_chunk(ledger, "job-1", index, target)
    summary = ledger.job_summary("job-1")
    assert summary.job.job_id == "job-1"
    assert summary.chunks == 3
    assert summary.chunk_counts[C.DELIVERED] == 2
    assert summary.chunk_counts[C.WRITTEN] == 0
    assert (summary.records, summary.bytes) == (30, 300)
    assert (summary.delivered_records, summary.delivered_bytes) == (20, 200)


def test_reopen_keeps_data_and_refuses_newer_schema(tmp_path: Path) -> None:
    state = tmp_path / "state"
    led = Ledger(state)
    add_job(led)
    led.close()
    led = Ledger(state)
    assert led.get_job("job-1").state is J.CLAIMED
    led.close()
    raw = sqlite3.connect(state / DB_NAME)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(LedgerError, match="newer than this bulkd"):
        Ledger(state)
    # The refused open released the instance lock: fix the version and open again.
    raw = sqlite3.connect(state / DB_NAME)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    raw.close()
    Ledger(state).close()


OPEN_SCRIPT = """
    import sys, pathlib
    from bulkd.errors import LedgerError
    from bulkd.ledger import Ledger
    try:
        Ledger(pathlib.Path(sys.argv[1])).close()
    except LedgerError as exc:
        print(exc)
        sys.exit(3)
    print("opened")
"""


def test_second_instance_in_another_process_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    led = Ledger(state)
    try:
        result = run_python(OPEN_SCRIPT, str(state))
        assert result.returncode == 3, result.stderr
        assert result.stdout.strip() == f"another bulkd instance is using {state}"
        with pytest.raises(LedgerError, match="another bulkd instance"):
            Ledger(state)
    finally:
        led.close()
    assert run_python(OPEN_SCRIPT, str(state)).stdout.strip() == "opened"


TRANSITION_SCRIPT = """
    import sys, pathlib
    from bulkd.ledger import Ledger, JobState
    led = Ledger(pathlib.Path(sys.argv[1]))
    led.transition_job("job-1", JobState.CONVERTING, rows=5)
    print("committed", flush=True)
"""


@pytest.mark.parametrize(("crash", "expected"), [(TXN_WRITTEN, J.CLAIMED), (TXN_COMMITTED, J.CONVERTING)])
def test_sigkill_around_commit(tmp_path: Path, crash: str, expected: JobState) -> None:
    state = tmp_path / "state"
    led = Ledger(state)
    add_job(led)
    led.close()
    result = run_python(TRANSITION_SCRIPT, str(state), crash=crash)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "committed" not in result.stdout
    led = Ledger(state)  # the kernel released the dead process's lock
    try:
        assert led.get_job("job-1").state is expected
        assert led.get_job("job-1").rows == (5 if expected is J.CONVERTING else None)
        assert led.integrity_check() == []
    finally:
        led.close()


BULK_SCRIPT = """
    import sys, pathlib
    from bulkd.ledger import Ledger
    led = Ledger(pathlib.Path(sys.argv[1]))
    for i in range(500):
        led.add_chunk("job-1", i, filename=f"c{i}", path=f"/s/c{i}", records=1000, bytes=4096,
                      md5="m" * 32, sha256="%064x" % i)
"""


def test_sigkill_mid_stream_keeps_every_committed_chunk(tmp_path: Path) -> None:
    state = tmp_path / "state"
    led = Ledger(state)
    add_job(led)
    led.close()
    result = run_python(BULK_SCRIPT, str(state), crash=f"{TXN_WRITTEN}:300")
    assert result.returncode == -signal.SIGKILL, result.stderr
    led = Ledger(state)
    try:
        indices = [c.chunk_index for c in led.chunks_of("job-1")]
        assert indices == list(range(299)), "exactly the committed transactions survive"
        assert led.integrity_check() == []
    finally:
        led.close()


async def test_async_ledger_runs_on_one_dedicated_thread(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with await AsyncLedger.open(state) as led:
        await led.run(add_job)
        names = {await led.run(lambda _: threading.current_thread().name) for _ in range(20)}
        assert len(names) == 1
        assert names.pop().startswith("bulkd-ledger")
        assert (await led.transition_job("job-1", J.CONVERTING)).state is J.CONVERTING
        assert await led.run(Ledger.original_of, "job-1") is None
        with pytest.raises(LedgerError, match="another bulkd instance"):
            await AsyncLedger.open(state)
        await led.run(add_chunk, "job-1", 0)
        chunk = await led.transition_chunk("job-1", 0, C.CREATING)
        assert chunk.attempts == 1
    reopened = await AsyncLedger.open(state)  # close() released the lock
    await reopened.close()


def test_every_upload_id_and_reject_tally_is_kept(ledger: Ledger) -> None:
    add_job(ledger)
    add_chunk(ledger, "job-1", 0)
    ledger.transition_chunk("job-1", 0, C.CREATING)
    ledger.transition_chunk("job-1", 0, C.CREATING)  # a crash after the POST: create again
    ledger.transition_chunk("job-1", 0, C.CREATED, upload_id="u1")
    ledger.transition_chunk("job-1", 0, C.CREATING, error="presigned URL expired")
    ledger.transition_chunk("job-1", 0, C.CREATED, upload_id="u2")
    assert ledger.upload_ids("job-1") == {0: ["u1", "u2"]}
    assert ledger.get_chunk("job-1", 0).attempts == 3
    ledger.transition_job("job-1", J.CONVERTING)
    job = ledger.transition_job("job-1", J.CONVERTED, rejects_by_rule={"format": 2, "required": 1})
    assert job.rejects_by_rule == {"format": 2, "required": 1}
    assert ledger.upload_ids("job-2") == {}


def test_conversion_warnings_are_kept_for_the_report(ledger: Ledger) -> None:
    add_job(ledger)
    ledger.transition_job("job-1", J.CONVERTING)
    job = ledger.transition_job("job-1", J.CONVERTED, warnings=["column 'x' is not in the schema"])
    assert job.warnings == ("column 'x' is not in the schema",)
    assert ledger.transition_job("job-1", J.DELIVERING).warnings == job.warnings, "kept by later moves"


# -- the read-only ledger ---------------------------------------------------------------------

HOLD_SCRIPT = """
    import sys, pathlib
    from bulkd.ledger import Ledger, JobState
    led = Ledger(pathlib.Path(sys.argv[1]))
    print("locked", flush=True)
    sys.stdin.readline()
    led.transition_job("job-1", JobState.CONVERTING, rows=7)
    print("moved", flush=True)
    sys.stdin.readline()
    led.close()
"""


def hold_python(script: str, *args: str) -> subprocess.Popen[str]:
    """A Python process driven line by line through its stdin (for interleaving with the test)."""
    argv, env = python_command(script, *args)
    return subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def step(proc: subprocess.Popen[str], expect: str | None = None) -> None:
    """Send one line (when ``expect`` is None) or read one line and check it."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    if expect is None:
        proc.stdin.write("\n")
        proc.stdin.flush()
        return
    line = proc.stdout.readline().strip()
    assert line == expect, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A state directory whose ledger holds job-1 with one delivered and one written chunk."""
    state = tmp_path / "state"
    led = Ledger(state)
    add_job(led)
    add_chunk(led, "job-1", 0)
    add_chunk(led, "job-1", 1)
    walk_chunk(led, "job-1", 0, C.DELIVERED)
    led.close()
    return state


def test_read_only_ledger_reads_while_another_process_holds_the_lock_and_writes(recorded: Path) -> None:
    writer = hold_python(HOLD_SCRIPT, str(recorded))
    try:
        step(writer, "locked")
        with pytest.raises(LedgerError, match="another bulkd instance"):
            Ledger(recorded)  # the writer really holds the instance lock
        reader = ReadOnlyLedger(recorded)
        try:
            summary = reader.job_summary("job-1")  # the same queries as the daemon's ledger
            assert [j.job_id for j in reader.list_jobs()] == ["job-1"]
            assert (summary.chunks, summary.chunk_counts[C.DELIVERED]) == (2, 1)
            assert summary.delivered_records == 10
            assert reader.upload_ids("job-1") == {0: ["up-1"]}
            with reader.snapshot():
                assert reader.get_job("job-1").state is J.CLAIMED
                step(writer)
                step(writer, "moved")  # committed while our read transaction is open (WAL)
                assert reader.get_job("job-1").state is J.CLAIMED, "a snapshot keeps one moment"
            job = reader.get_job("job-1")
            assert (job.state, job.rows) == (J.CONVERTING, 7)
            assert reader.integrity_check() == []
        finally:
            reader.close()
        step(writer)
        assert writer.wait(60) == 0
    finally:
        writer.kill()
        writer.wait()


def test_a_daemon_ledger_opens_and_writes_while_a_reader_is_open(recorded: Path) -> None:
    reader = ReadOnlyLedger(recorded)
    try:
        with reader.snapshot():
            assert reader.get_job("job-1").state is J.CLAIMED
            opened = run_python(OPEN_SCRIPT, str(recorded))
            assert (opened.returncode, opened.stdout.strip()) == (0, "opened"), opened.stderr
            moved = run_python(TRANSITION_SCRIPT, str(recorded))
            assert moved.returncode == 0, moved.stderr
            assert moved.stdout.strip() == "committed"
        assert reader.get_job("job-1").state is J.CONVERTING
    finally:
        reader.close()


@pytest.mark.parametrize(
    "write",
    [
        lambda led: add_job(led, "job-2"),
        lambda led: led.transition_job("job-1", J.CONVERTING),
        lambda led: led.transition_chunk("job-1", 1, C.CREATING),
    ],
    ids=["add_job", "transition_job", "transition_chunk"],
)
def test_read_only_ledger_refuses_every_write_in_sqlite(recorded: Path, write: Any) -> None:
    before = (recorded / DB_NAME).read_bytes()
    reader = ReadOnlyLedger(recorded)
    try:
        with pytest.raises(LedgerError, match="readonly") as refused:
            write(reader)
        cause = refused.value.__cause__
        assert isinstance(cause, sqlite3.OperationalError)
        assert cause.sqlite_errorname == "SQLITE_READONLY"
        assert reader.get_job("job-1").state is J.CLAIMED
    finally:
        reader.close()
    assert (recorded / DB_NAME).read_bytes() == before
    led = Ledger(recorded)
    try:
        assert [j.job_id for j in led.list_jobs()] == ["job-1"]
        assert led.get_chunk("job-1", 1).state is C.WRITTEN
    finally:
        led.close()


def test_read_only_ledger_names_a_missing_state_directory_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "state"
    with pytest.raises(LedgerError, match=f"state directory {re.escape(str(missing))} does not exist"):
        ReadOnlyLedger(missing)
    assert not (tmp_path / "nowhere").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LedgerError, match=f"{re.escape(str(empty))} holds no {DB_NAME}"):
        ReadOnlyLedger(empty)
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize(
    ("version", "fragment"),
    [(0, "not set up yet"), (1, "older than this bulkd"), (SCHEMA_VERSION + 1, "newer than this bulkd")],
)
def test_read_only_ledger_never_migrates(recorded: Path, version: int, fragment: str) -> None:
    raw = sqlite3.connect(recorded / DB_NAME)
    raw.execute(f"PRAGMA user_version={version}")
    raw.close()
    with pytest.raises(LedgerError, match=fragment):
        ReadOnlyLedger(recorded)
    raw = sqlite3.connect(recorded / DB_NAME)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == version
    raw.close()
