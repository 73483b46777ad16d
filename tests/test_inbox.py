"""The inbox: scanning, settling, routing, hostile entries and crash-safe claims, on real files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bulkd.durable import CRASHPOINT_ENV
from bulkd.errors import ConfigError
from bulkd.inbox import (
    CLAIM_HASHED,
    CLAIM_MOVED,
    CLAIM_RECORDED,
    ClaimedFile,
    Inbox,
    InboxEntry,
    InboxSettings,
    Route,
    Settler,
    Skipped,
    SkipReason,
    archive,
    claim,
    escape_name,
    forget_claim,
    make_job_id,
    recover_claims,
    report_path,
    scan,
)

REPO = Path(__file__).resolve().parents[1]
LAYOUT = b"ds1/customer_record/"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drop(root: Path, rel: bytes, data: bytes = b"id,email\n1,a@example.com\n") -> bytes:
    """Create ``root/rel`` (raw bytes path) with ``data``; return the full path as bytes."""
    path = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def only(entries: tuple[InboxEntry, ...] | list[InboxEntry]) -> InboxEntry:
    assert len(entries) == 1, entries
    return entries[0]


def claimed_ok(outcome: ClaimedFile | Skipped) -> ClaimedFile:
    assert isinstance(outcome, ClaimedFile), outcome
    return outcome


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    return tmp_path / "inbox"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def reasons(root: Path, routes: tuple[Route, ...] = (), max_depth: int = 3) -> dict[bytes, SkipReason]:
    return {s.rel: s.reason for s in scan(root, routes, max_depth).skipped}


def test_escape_name() -> None:
    assert escape_name("données.csv".encode()) == "données.csv"
    assert escape_name(b"a\nb\rc\td\x1b[31m") == "a\\x0ab\\x0dc\\x09d\\x1b[31m"
    assert escape_name(b"bad\xff\xfe.csv") == "bad\\xff\\xfe.csv"
    assert escape_name(b"back\\slash") == "back\\\\slash"
    assert escape_name("line\u2028sep\u202eltr".encode()) == "line\\u2028sep\\u202eltr"
    assert escape_name(b"\\xff") != escape_name(b"\xff"), "escaping is unambiguous"


def test_layout_routing(root: Path) -> None:
    drop(root, LAYOUT + b"a.csv")
    drop(root, b"ds2/product_record/b.parquet")
    drop(root, b"top.csv")
    drop(root, b"ds1/mid.csv")
    drop(root, b"bad name/customer_record/c.csv")
    drop(root, b"ds\xff/customer_record/d.csv")
    (root / "ds1" / "customer_record" / "subdir").mkdir()
    result = scan(root)
    routes = {e.rel: (e.route.dataset_id, e.route.record_type, e.route.profile) for e in result.entries}
    assert routes == {
        LAYOUT + b"a.csv": ("ds1", "customer_record", None),
        b"ds2/product_record/b.parquet": ("ds2", "product_record", None),
    }
    assert {s.rel: s.reason for s in result.skipped} == {
        b"top.csv": SkipReason.UNROUTED,
        b"ds1/mid.csv": SkipReason.UNROUTED,
        b"bad name/customer_record/c.csv": SkipReason.BAD_ROUTE,
        b"ds\xff/customer_record/d.csv": SkipReason.BAD_ROUTE,
        LAYOUT + b"subdir": SkipReason.DIRECTORY,
    }


def test_glob_routing_first_match_wins(root: Path) -> None:
    routes = (
        Route("crm/**/*.csv", "crm", "customer_record", profile="crm-v2"),
        Route("*.ndjson", "events", "purchase_record"),
        Route("**", "catchall", "customer_record"),
    )
    drop(root, b"crm/2026/05/a.csv")
    drop(root, b"crm/b.csv")
    drop(root, b"e.ndjson")
    drop(root, b"sub/e.ndjson")
    result = scan(root, routes, max_depth=4)
    got = {e.rel: (e.route.dataset_id, e.route.profile) for e in result.entries}
    assert got == {
        b"crm/2026/05/a.csv": ("crm", "crm-v2"),
        b"crm/b.csv": ("crm", "crm-v2"),
        b"e.ndjson": ("events", None),
        b"sub/e.ndjson": ("catchall", None),  # "*" never crosses a "/"
    }
    assert reasons(root, routes[:2], max_depth=4) == {b"sub/e.ndjson": SkipReason.UNROUTED}
    assert reasons(root, routes, max_depth=2) == {b"crm/2026": SkipReason.DIRECTORY}


def test_crash_points_are_declared() -> None:
    from bulkd import durable, ledger

    declared = durable.CRASHPOINTS
    assert {CLAIM_HASHED, CLAIM_RECORDED, CLAIM_MOVED, durable.WRITE_SYNCED, ledger.TXN_WRITTEN} <= declared


def test_route_ids_are_validated() -> None:
    with pytest.raises(ConfigError, match="dataset_id"):
        Route("*.csv", "../x", "customer_record")


def test_ignored_names_are_silent(root: Path) -> None:
    for name in (b".hidden.csv", b"a.tmp", b"b.PART", b"c.crdownload", b".d.swp", b"e.swp", b".git/x.csv"):
        drop(root, LAYOUT + name)
    drop(root, b".work/customer_record/x.csv")
    result = scan(root)
    assert result.entries == ()
    assert result.skipped == ()


def test_special_files_are_skipped(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_bytes(b"x")
    folder = root / "ds1" / "customer_record"
    folder.mkdir(parents=True)
    (folder / "to-file.csv").symlink_to(outside / "secret.csv")
    (folder / "to-dir").symlink_to(outside)
    (root / "ds1" / "linked_type").symlink_to(outside, target_is_directory=True)
    os.mkfifo(folder / "pipe.csv")
    os.link(outside / "secret.csv", folder / "hard.csv")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".") as short:  # AF_UNIX paths are length-limited
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.path.join(short, "s"))
        (Path(short) / "s").rename(folder / "sock.csv")
        result = scan(root)
        sock.close()
    assert result.entries == ()
    assert {s.rel: s.reason for s in result.skipped} == {
        LAYOUT + b"to-file.csv": SkipReason.SYMLINK,
        LAYOUT + b"to-dir": SkipReason.SYMLINK,
        b"ds1/linked_type": SkipReason.SYMLINK,
        LAYOUT + b"pipe.csv": SkipReason.NOT_REGULAR,
        LAYOUT + b"hard.csv": SkipReason.HARD_LINK,
        LAYOUT + b"sock.csv": SkipReason.NOT_REGULAR,
    }


def test_fifo_swapped_in_before_claim_does_not_block(root: Path, work: Path) -> None:
    path = drop(root, LAYOUT + b"a.csv")
    entry = only(scan(root).entries)
    os.unlink(path)
    os.mkfifo(path)
    outcome: list[ClaimedFile | Skipped] = []
    worker = threading.Thread(target=lambda: outcome.append(claim(entry, work)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "claim blocked on a FIFO"
    assert outcome == [Skipped(entry.rel, SkipReason.NOT_REGULAR)]


def test_symlink_swapped_in_before_claim_is_not_followed(root: Path, work: Path, tmp_path: Path) -> None:
    path = drop(root, LAYOUT + b"a.csv")
    entry = only(scan(root).entries)
    os.unlink(path)
    (tmp_path / "secret").write_bytes(b"x")
    os.symlink(tmp_path / "secret", path)
    assert claim(entry, work) == Skipped(entry.rel, SkipReason.SYMLINK)
    os.unlink(path)
    os.rename(root / "ds1", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", root / "ds1")  # a parent directory swapped for a symlink
    assert claim(entry, work) == Skipped(entry.rel, SkipReason.SYMLINK)
    assert list(work.iterdir()) == []


def test_settler_waits_for_unchanged_signature() -> None:
    clock = FakeClock()
    settler = Settler(5.0, clock)
    entry = InboxEntry(Path("/in"), b"a", Route("*", "d", "r"), 10, 1, 1, 1)
    assert settler.observe([entry]) == []
    clock.now += 4.9
    assert settler.observe([entry]) == []
    clock.now += 0.1
    assert settler.observe([entry]) == [entry]
    grown = InboxEntry(Path("/in"), b"a", Route("*", "d", "r"), 11, 2, 1, 1)
    assert settler.observe([grown]) == [], "a change restarts the settle period"
    clock.now += 5
    assert settler.observe([grown]) == [grown]
    assert settler.observe([]) == []
    assert settler.observe([grown]) == [], "a vanished file is forgotten"
    assert Settler(0.0, clock).observe([entry]) == [entry]


async def test_file_still_being_written_is_not_claimed(root: Path, work: Path) -> None:
    path = drop(root, LAYOUT + b"growing.csv", b"id\n")
    stop = threading.Event()

    def writer() -> None:
        with open(path, "ab") as handle:
            for i in range(40):
                handle.write(f"{i}\n".encode())
                handle.flush()
                time.sleep(0.03)
        stop.set()

    inbox = Inbox(InboxSettings(root, work, settle_seconds=1.0))
    thread = threading.Thread(target=writer)
    thread.start()
    while not stop.is_set():
        assert await inbox.poll() == [], "claimed while the writer was still appending"
        await asyncio.sleep(0.05)
    thread.join()
    deadline = time.monotonic() + 5
    ready: list[InboxEntry] = []
    while not ready and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        ready = await inbox.poll()
    claimed = claimed_ok(await inbox.claim(only(ready)) or Skipped(b"", SkipReason.VANISHED))
    expected = b"id\n" + b"".join(f"{i}\n".encode() for i in range(40))
    assert claimed.work_path.read_bytes() == expected
    assert claimed.sha256 == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize(
    "name",
    [
        b"new\nline.csv",
        b"ctl\x01\x1b\x7f.csv",
        b"latin\xe9\xff.csv",
        b"x" * 251 + b".csv",
        "日本語.csv".encode(),
    ],
)
def test_hostile_names_are_claimed_safely(root: Path, work: Path, name: bytes) -> None:
    assert len(name) <= 255
    drop(root, LAYOUT + name, b"payload")
    entry = only(scan(root).entries)
    assert entry.rel == LAYOUT + name
    claimed = claimed_ok(claim(entry, work))
    assert claimed.work_path.parent == work
    assert claimed.work_path.name.startswith(claimed.job_id)
    assert claimed.work_path.read_bytes() == b"payload"
    assert claimed.source_name == escape_name(LAYOUT + name)
    assert claimed.source_name.isprintable()
    assert ClaimedFile.from_json(claimed.to_json()) == claimed
    assert not os.path.lexists(os.path.join(os.fsencode(root), LAYOUT + name))


def test_work_name_keeps_only_safe_extensions(root: Path, work: Path) -> None:
    for name, suffix in [(b"a.CSV.GZ", ".csv.gz"), (b"b.x y.csv", ".csv"), (b"noext", ""), (b"c.\xff", "")]:
        drop(root, LAYOUT + name, name)
        entry = next(e for e in scan(root).entries if e.rel.endswith(name))
        claimed = claimed_ok(claim(entry, work))
        assert claimed.work_path.name == claimed.job_id + suffix


def test_ten_thousand_files_scan_quickly(root: Path) -> None:
    folder = os.path.join(os.fsencode(root), LAYOUT)
    os.makedirs(folder)
    for i in range(10_000):
        with open(os.path.join(folder, b"f%05d.csv" % i), "wb") as handle:
            handle.write(b"a\n1\n")
    start = time.perf_counter()
    result = scan(root)
    elapsed = time.perf_counter() - start
    assert len(result.entries) == 10_000
    assert elapsed < 5.0, f"scan of 10,000 files took {elapsed:.2f}s"
    settler = Settler(0.0)
    start = time.perf_counter()
    assert len(settler.observe(result.entries)) == 10_000
    assert time.perf_counter() - start < 1.0


def test_claim_moves_hashes_and_records(root: Path, work: Path) -> None:
    data = b"id\n" + b"x" * 3_000_000
    drop(root, LAYOUT + b"big.csv", data)
    entry = only(scan(root).entries)
    claimed = claimed_ok(claim(entry, work))
    assert claimed.sha256 == hashlib.sha256(data).hexdigest()
    assert claimed.size == len(data)
    assert (claimed.device, claimed.inode) == (entry.dev, entry.ino)
    assert claimed.job_id == make_job_id(claimed.sha256, entry.dev, entry.ino, entry.mtime_ns)
    assert claimed.job_id.startswith(claimed.sha256[:20])
    assert claimed.route.dataset_id == "ds1"
    assert scan(root).entries == ()
    assert recover_claims(work) == [claimed], "the claim record survives until the ledger has the job"
    forget_claim(work, claimed.job_id)
    assert recover_claims(work) == []
    assert sorted(p.name for p in work.iterdir()) == [claimed.work_path.name]


@pytest.mark.parametrize("change", ["replace", "append", "delete"])
def test_file_changed_between_scan_and_claim_is_not_claimed(root: Path, work: Path, change: str) -> None:
    path = drop(root, LAYOUT + b"a.csv", b"old\n")
    entry = only(scan(root).entries)
    if change == "replace":
        fresh = drop(root, LAYOUT + b".upload.tmp", b"new\n")
        os.replace(fresh, path)
    elif change == "append":
        with open(path, "ab") as handle:
            handle.write(b"more\n")
    else:
        os.unlink(path)
    outcome = claim(entry, work)
    expected = SkipReason.VANISHED if change == "delete" else SkipReason.CHANGED
    assert outcome == Skipped(entry.rel, expected)
    assert list(work.iterdir()) == [], "nothing moved, no claim record left"
    if change != "delete":
        retry = only(scan(root).entries)
        assert claimed_ok(claim(retry, work)).work_path.read_bytes() != b"old\n"


CLAIM_SCRIPT = """
    import sys, pathlib
    from bulkd.inbox import scan, claim
    root, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    (entry,) = scan(root).entries
    print(claim(entry, work), flush=True)
"""


@pytest.mark.parametrize("point", [CLAIM_HASHED, CLAIM_RECORDED, CLAIM_MOVED])
def test_claim_killed_at_each_crash_point_recovers(root: Path, work: Path, point: str) -> None:
    drop(root, LAYOUT + b"a.csv", b"content\n")
    env = {k: v for k, v in os.environ.items() if k != CRASHPOINT_ENV}
    env |= {CRASHPOINT_ENV: point, "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")}
    argv = [sys.executable, "-c", textwrap.dedent(CLAIM_SCRIPT), str(root), str(work)]
    result = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    recovered = recover_claims(work)
    if point == CLAIM_MOVED:
        (claimed,) = recovered
        assert claimed.work_path.read_bytes() == b"content\n"
        assert claimed.sha256 == hashlib.sha256(b"content\n").hexdigest()
        assert claimed.rel == LAYOUT + b"a.csv"
        assert scan(root).entries == ()
    else:
        assert recovered == []
        assert list(work.iterdir()) == [], "stale claim record and temp files removed"
        claimed_ok(claim(only(scan(root).entries), work))


def test_archive_is_durable_and_repeatable(root: Path, work: Path, tmp_path: Path) -> None:
    drop(root, LAYOUT + b"a.csv")
    claimed = claimed_ok(claim(only(scan(root).entries), work))
    done = tmp_path / "done"
    dest = archive(claimed.work_path, done, claimed.job_id)
    assert dest == done / claimed.work_path.name
    assert dest.exists()
    assert not claimed.work_path.exists()
    assert archive(claimed.work_path, done, claimed.job_id) == dest, "a redo after a crash is a no-op"
    assert report_path(done, claimed.job_id) == done / f"{claimed.job_id}.report.json"
    with pytest.raises(ValueError, match="not the work file"):
        archive(dest, done, "0" * 20 + "-deadbeef")
    with pytest.raises(ValueError, match="not the work file"):
        archive(claimed.work_path, done, "../../etc")


async def test_inbox_polls_claims_and_reports_skips_once(root: Path, work: Path) -> None:
    clock = FakeClock()
    skips: list[Skipped] = []
    inbox = Inbox(InboxSettings(root, work, settle_seconds=5), clock=clock, on_skip=skips.append)
    assert await inbox.prepare() == []
    drop(root, LAYOUT + b"a.csv")
    os.mkfifo(root / "ds1" / "customer_record" / "pipe")
    assert await inbox.poll() == []
    clock.now += 5
    (entry,) = await inbox.poll()
    await inbox.poll()
    assert [(s.rel, s.reason) for s in skips] == [(LAYOUT + b"pipe", SkipReason.NOT_REGULAR)]
    claimed = await inbox.claim(entry)
    assert claimed is not None
    assert claimed.work_path.exists()
    os.unlink(root / "ds1" / "customer_record" / "pipe")
    await inbox.poll()
    os.mkfifo(root / "ds1" / "customer_record" / "pipe")
    await inbox.poll()
    assert len(skips) == 2, "reported again after it went away and came back"
    assert await inbox.claim(entry) is None, "already moved: vanished, retried by later polls"


async def test_prepare_checks_the_work_area(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hidden directory"):
        await Inbox(InboxSettings(root, root / "work")).prepare()
    await Inbox(InboxSettings(root, root / ".work")).prepare()
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev or not os.access(shm, os.W_OK):
        pytest.skip("no second writable filesystem to test against")
    with tempfile.TemporaryDirectory(dir=shm) as other, pytest.raises(ConfigError, match="same filesystem"):
        await Inbox(InboxSettings(root, Path(other))).prepare()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file_is_skipped(root: Path, work: Path) -> None:
    path = drop(root, LAYOUT + b"a.csv")
    os.chmod(path, 0)
    assert claim(only(scan(root).entries), work) == Skipped(LAYOUT + b"a.csv", SkipReason.UNREADABLE)
