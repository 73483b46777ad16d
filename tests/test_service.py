"""``bulkd run`` end to end, as a real subprocess against the real simulator on loopback.

Each test drops real files into the inbox, runs the daemon, and checks the end state with the
oracle of :mod:`daemon_helpers`: the simulator holds exactly the valid records once, rejects and
reports account for every other row, sources are archived, nothing temporary is left, the ledger
is healthy, and no output holds the token or a URL signature.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pytest
from daemon_helpers import (
    SIDE_FILES,
    Daemon,
    InputFile,
    SimThread,
    assert_no_secrets,
    canonical,
    check_clean,
    check_end_state,
    check_store,
    customer_csv,
    customer_parquet,
    email_ndjson,
    json_log_lines,
    load_reports,
    wait_until,
    write_slowly,
)

from bulkd.hubsim import Faults


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimThread]:
    with SimThread(tmp_path / "hubsim") as running:
        yield running


def claims_of(daemon: Daemon, source: str) -> int:
    return sum(1 for line in json_log_lines(daemon) if line["message"].startswith(f"claimed {source} as job"))


def test_inbox_to_datasets_end_to_end(tmp_path: Path, sim: SimThread) -> None:
    """CSV, Parquet, .csv.gz and NDJSON, one of them still being written when the daemon starts."""
    daemon = Daemon.create(
        tmp_path,
        sim,
        {
            "inbox": {"settle_seconds": 1.0},
            "convert": {"chunk_max_records": 60},
            "upload": {"concurrency": 4},
        },
    )
    files = [
        customer_csv("dscsv/customer_record/customers.csv", 300),
        customer_parquet("dspq/customer_record/customers.parquet", 200),
        customer_csv("dsgz/customer_record/more.csv.gz", 250, bad_every=11),
        email_ndjson("dsev/email_send/sends.ndjson", 150),
    ]
    for f in files:
        f.write(daemon.inbox)
    slow = customer_csv("dscsv/customer_record/slow.csv", 400, bad_every=13)
    writer, finished = write_slowly(daemon.inbox / slow.rel, slow.data, pieces=25, interval=0.1)

    proc = daemon.run("--once")
    writer.join()
    assert proc.returncode == 0, proc.stderr[-3000:]

    everything = [*files, slow]
    reports = check_end_state(daemon, sim, everything)
    # The file being written was taken only after its last write, whole: not truncated.
    assert reports[slow.rel]["timings"]["claimed_at"] >= finished[0]
    assert all(claims_of(daemon, f.rel) == 1 for f in everything)
    assert sum(len(r["chunks"]) for r in reports.values()) > len(everything)  # several chunks per file


def test_duplicate_content_is_reported_not_uploaded_again(tmp_path: Path, sim: SimThread) -> None:
    daemon = Daemon.create(tmp_path, sim)
    original = customer_csv("dsdup/customer_record/a.csv", 120)
    original.write(daemon.inbox)
    (daemon.inbox / "dsdup/customer_record/copy.csv").write_bytes(original.data)
    assert daemon.run("--once").returncode == 0

    reports = load_reports(daemon.done)
    assert sorted(r["state"] for r in reports.values()) == ["archived", "duplicate"]
    first = next(r for r in reports.values() if r["state"] == "archived")
    posts = [e for e in sim.requests() if e.method == "POST"]
    assert len(posts) == len(first["chunks"])

    # The same content again, in a later run: a duplicate too, and nothing is sent.
    (daemon.inbox / "dsdup/customer_record/again.csv").write_bytes(original.data)
    assert daemon.run("--once").returncode == 0
    reports = load_reports(daemon.done)
    duplicates = [r for r in reports.values() if r["state"] == "duplicate"]
    assert sorted(r["source"] for r in duplicates) == sorted(set(reports) - {first["source"]})
    assert len(duplicates) == 2
    for dup in duplicates:
        assert first["job_id"] in dup["error"], dup["error"]
        assert dup["chunks"] == []
        assert dup["records_delivered"] == 0
        assert (daemon.done / f"{dup['job_id']}.csv").read_bytes() == original.data
    assert len([e for e in sim.requests() if e.method == "POST"]) == len(posts)
    check_store(sim, [original], {first["source"]: first}, reput_ok=False)
    check_clean(daemon)


def test_same_content_for_two_datasets_reaches_both(tmp_path: Path, sim: SimThread) -> None:
    daemon = Daemon.create(tmp_path, sim)
    first = customer_csv("dsone/customer_record/a.csv", 50, tag="shared")
    second = customer_csv("dstwo/customer_record/a.csv", 50, tag="shared")
    assert first.data == second.data
    first.write(daemon.inbox)
    assert daemon.run("--once").returncode == 0
    second.write(daemon.inbox)
    assert daemon.run("--once").returncode == 0
    check_end_state(daemon, sim, [first, second])


def test_refused_files_go_to_failed_with_a_report(tmp_path: Path, sim: SimThread) -> None:
    daemon = Daemon.create(tmp_path, sim, {"convert": {"max_reject_ratio": 0.3}})
    good = customer_csv("dsok/customer_record/good.csv", 100)
    mostly_bad = customer_csv("dsbad/customer_record/mostly-bad.csv", 100, bad_every=2)
    good.write(daemon.inbox)
    mostly_bad.write(daemon.inbox)
    garbage = bytes(range(256)) * 40 + b"\x00\xff\xfe" * 100
    (daemon.inbox / "dsbad/customer_record/garbage.csv").write_bytes(garbage)
    (daemon.inbox / "dsbad/customer_record/broken.parquet").write_bytes(b"PAR1" + garbage)

    proc = daemon.run("--once")
    assert proc.returncode == 1, "--once exits 1 when a job failed"

    check_end_state(daemon, sim, [good])
    assert set(load_reports(daemon.done)) == {good.rel}
    failed = load_reports(daemon.failed)
    assert set(failed) == {
        mostly_bad.rel,
        "dsbad/customer_record/garbage.csv",
        "dsbad/customer_record/broken.parquet",
    }
    for source, report in failed.items():
        assert report["state"] == "failed"
        assert report["error"], source
        assert report["chunks"] == []
        assert report["records_delivered"] == 0
        kept = [p for p in daemon.failed.glob(f"{report['job_id']}.*") if not p.name.endswith(SIDE_FILES)]
        assert len(kept) == 1, f"the source of {source} is not in failed/"
    assert "above the allowed ratio 0.3" in failed[mostly_bad.rel]["error"]
    assert failed[mostly_bad.rel]["rows"] == mostly_bad.rows
    assert (
        daemon.failed / f"{failed['dsbad/customer_record/garbage.csv']['job_id']}.csv"
    ).read_bytes() == garbage
    assert sim.stats("dsbad").uploads == 0


def test_rejects_and_errors_name_the_source_not_the_work_file(tmp_path: Path, sim: SimThread) -> None:
    daemon = Daemon.create(tmp_path, sim)
    f = customer_csv("dsname/customer_record/export.csv", 30)
    f.write(daemon.inbox)
    (daemon.inbox / "dsname/customer_record/garbage.csv").write_bytes(bytes(range(256)) * 8)
    assert daemon.run("--once").returncode == 1

    report = load_reports(daemon.done)[f.rel]
    archived = daemon.done / f"{report['job_id']}.csv"
    text = (daemon.done / report["rejects_file"]).read_text()
    named = {orjson.loads(line)["input"] for line in text.splitlines()}
    assert named <= {f.rel, archived.name, str(archived)}, named
    failed = load_reports(daemon.failed)["dsname/customer_record/garbage.csv"]
    assert str(daemon.work) not in failed["error"], failed["error"]


def test_hostile_and_unroutable_entries_are_skipped(tmp_path: Path, sim: SimThread) -> None:
    daemon = Daemon.create(tmp_path, sim)
    good = customer_csv("dsh/customer_record/good.csv", 40)
    good.write(daemon.inbox)
    odd_name = customer_csv("dsh/customer_record/line\nbreak\x1b[31m.csv", 30, tag="oddname")
    odd_name = replace(odd_name, shown="dsh/customer_record/line\\x0abreak\\x1b[31m.csv")
    odd_name.write(daemon.inbox)
    layout = daemon.inbox / "dsh/customer_record"
    outside = tmp_path / "outside.csv"
    outside.write_bytes(customer_csv("x/customer_record/outside.csv", 10, tag="outside").data)
    before = outside.read_bytes()
    (layout / "link.csv").symlink_to(outside)
    os.link(outside, layout / "hard.csv")
    os.mkfifo(layout / "pipe.csv")
    (layout / "dir.csv").mkdir()
    (layout / ".hidden.csv").write_bytes(before)
    (layout / "upload.csv.part").write_bytes(before)
    (daemon.inbox / "stray.csv").write_bytes(before)
    (daemon.inbox / "bad id!" / "customer_record").mkdir(parents=True)
    (daemon.inbox / "bad id!" / "customer_record" / "x.csv").write_bytes(before)
    (daemon.inbox / "dslink").symlink_to(layout.parent, target_is_directory=True)

    proc = daemon.run("--once", timeout=60)  # a FIFO must never block the daemon
    assert proc.returncode == 0, proc.stderr[-3000:]

    left = [
        "bad id!/customer_record/x.csv",
        "dsh/customer_record/.hidden.csv",
        "dsh/customer_record/hard.csv",
        "dsh/customer_record/link.csv",
        "dsh/customer_record/pipe.csv",
        "dsh/customer_record/upload.csv.part",
        "dslink",
        "stray.csv",
    ]
    check_end_state(daemon, sim, [good, odd_name], inbox_left=left)
    assert outside.read_bytes() == before
    assert os.stat(outside).st_nlink == 2
    assert (layout / "dir.csv").is_dir()
    warnings = " ".join(line["message"] for line in json_log_lines(daemon) if line["level"] == "warning")
    for name, reason in (
        ("link.csv", "symbolic link"),
        ("hard.csv", "hard link"),
        ("pipe.csv", "not a regular file"),
        ("stray.csv", "no route"),
        ("x.csv", "not a valid identifier"),
    ):
        assert name in warnings, name
        assert reason in warnings, reason
    # The odd name reaches reports and logs escaped (json_log_lines parsed every line as one object).
    assert not any("\x1b" in line["message"] for line in json_log_lines(daemon))


def test_second_instance_on_the_same_state_dir_refuses(tmp_path: Path) -> None:
    daemon = Daemon.create(tmp_path)
    with daemon.start() as first:
        first.wait_for_log("bulkd running")
        second = daemon.run("--once")
        assert second.returncode == 2
        assert second.stderr.startswith("bulkd: "), second.stderr
        assert f"another bulkd instance is using {daemon.state}" in second.stderr
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0


def _stop_mid_delivery(tmp_path: Path, sim: SimThread, grace: float, *signals: int) -> Stopped:
    """Start a slow delivery (every request takes 0.25 s), send ``signals`` 0.3 s apart once chunks
    are arriving, and wait for the daemon to exit."""
    daemon = Daemon.create(
        tmp_path,
        sim,
        {
            "convert": {"chunk_max_records": 40},
            "upload": {"concurrency": 2},
            "service": {"shutdown_grace_seconds": grace},
        },
    )
    files = [
        customer_csv("dsterm/customer_record/a.csv", 400),
        email_ndjson("dstermev/email_send/b.ndjson", 300),
    ]
    for f in files:
        f.write(daemon.inbox)
    sim.set_faults(Faults(latency_seconds=0.25))
    with daemon.start() as running:
        wait_until(lambda: _puts_done(sim) >= 2, 60, "the first deliveries")
        signalled = time.time()
        for number, signum in enumerate(signals):
            time.sleep(0.3 if number else 0)
            running.signal(signum)
        started = time.monotonic()
        code = running.wait(30)
    assert len(load_reports(daemon.done)) < len(files), "the stop came too late to interrupt anything"
    return Stopped(daemon, files, code, time.monotonic() - started, signalled)


@dataclass
class Stopped:
    daemon: Daemon
    files: list[InputFile]
    code: int
    seconds: float
    """From the last signal to the exit."""
    signalled: float
    """Wall-clock time of the first signal."""

    def restart_finishes(self, sim: SimThread, *, reput_ok: bool) -> None:
        sim.set_faults(Faults())
        proc = self.daemon.run("--once")
        assert proc.returncode == 0, proc.stderr[-3000:]
        check_end_state(self.daemon, sim, self.files, reput_ok=reput_ok)


def _puts_done(sim: SimThread) -> int:
    return sum(1 for e in sim.requests() if e.method == "PUT" and e.status == 200)


def test_sigterm_lets_uploads_under_way_finish_and_a_restart_finishes(tmp_path: Path, sim: SimThread) -> None:
    stopped = _stop_mid_delivery(tmp_path, sim, 3.0, signal.SIGTERM)
    assert stopped.code == 0
    assert stopped.seconds < 10
    assert "SIGTERM: stopping intake" in stopped.daemon.logs[-1]
    late = [e for e in sim.requests() if e.method == "POST" and e.started_at > stopped.signalled + 0.1]
    assert late == [], f"{len(late)} uploads created after SIGTERM"
    # Uploads under way finished within the grace period, so none is sent twice.
    stopped.restart_finishes(sim, reput_ok=False)


def test_a_second_signal_exits_at_once_and_a_restart_finishes(tmp_path: Path, sim: SimThread) -> None:
    stopped = _stop_mid_delivery(tmp_path, sim, 60.0, signal.SIGTERM, signal.SIGINT)
    assert stopped.code == 130
    assert stopped.seconds < 5
    # Exiting at once can cut an upload after the store took it and before the daemon heard back.
    stopped.restart_finishes(sim, reput_ok=True)


def test_named_probes_left_by_a_kill_are_swept_at_start(tmp_path: Path) -> None:
    """On filesystems without O_TMPFILE the writability probe has a name; a process killed while
    probing leaves it, and the next start removes it (only bulkd's own probe names)."""
    daemon = Daemon.create(tmp_path)
    stale = [d / ".bulkd-probe-4242.tmp" for d in (daemon.inbox, daemon.state, daemon.done)]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    other = daemon.inbox / ".someone-else.tmp"
    other.write_bytes(b"")
    proc = daemon.run("--once")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p for p in stale if p.exists()] == []
    assert other.exists()


def test_sample_with_the_embedded_simulator(tmp_path: Path) -> None:
    daemon = Daemon.create(tmp_path)
    proc = daemon.run("--once", "--sample")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = load_reports(daemon.done)
    assert len(reports) == 1
    ((source, report),) = reports.items()
    assert source.startswith("demo/customer_record/customers-")
    assert source.endswith(".csv")
    assert (report["state"], report["rows"], report["records"], report["rejected"]) == ("archived", 40, 37, 3)
    assert "dry run: simulated dataset demo now holds 37 records from 1 upload(s)" in proc.stderr
    assert "C NDJSON writer was not built" not in proc.stderr
    objects = sorted((daemon.data_dir / "hubsim" / "objects").iterdir())
    assert [p.name for p in objects] == [f"{c['upload_id']}-{c['filename']}" for c in report["chunks"]]
    with gzip.open(io.BytesIO(objects[0].read_bytes())) as fh:
        records = [orjson.loads(line) for line in fh]
    assert len({canonical(r) for r in records}) == 37
    assert all(r["link"]["email"] == r["link"]["email"].strip().lower() for r in records)
    rejects = (daemon.done / report["rejects_file"]).read_text().splitlines()
    assert sorted(orjson.loads(line)["line"] for line in rejects) == [14, 27, 33]
    check_clean(daemon)
    assert_no_secrets(daemon)


def test_without_the_c_extensions_the_daemon_warns_and_delivers_the_same(tmp_path: Path) -> None:
    """An install without a C compiler: Arrow kernels encode and match, and the start-up log says so."""
    daemon = Daemon.create(tmp_path)
    blocked = (
        "import sys; sys.modules['bulkd._jsonl'] = sys.modules['bulkd._match'] = None; "
        "from bulkd.__main__ import run; run()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", blocked, "run", "--config", str(daemon.config_path), "--once", "--sample"],
        env=daemon.env(),
        cwd=daemon.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "C NDJSON writer and scans of cell bytes were not built" in proc.stderr
    [report] = load_reports(daemon.done).values()
    assert (report["state"], report["records"], report["rejected"]) == ("archived", 37, 3)
