"""Crash-safe file helpers and crash points, exercised with real files and real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bulkd import durable
from bulkd.durable import (
    CRASHPOINT_ENV,
    declare_crashpoint,
    fsync_dir,
    probe_writable,
    remove_stale_probes,
    remove_temp_files,
    rename_durable,
    write_atomic,
)
from bulkd.errors import StorageError

REPO = Path(__file__).resolve().parents[1]

LOOP_SCRIPT = textwrap.dedent(
    """
    from bulkd.durable import crashpoint, declare_crashpoint
    POINT = declare_crashpoint("test.loop")
    for i in range(5):
        print(i, flush=True)
        crashpoint(POINT)
    print("done", flush=True)
    """
)


def run_python(script: str, crash: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter with ``BULKD_CRASHPOINT`` set (or removed)."""
    env = {k: v for k, v in os.environ.items() if k != CRASHPOINT_ENV}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if crash is not None:
        env[CRASHPOINT_ENV] = crash
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_crashpoint_kills_at_first_pass() -> None:
    result = run_python(LOOP_SCRIPT, "test.loop")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["0"]
    assert "test.loop" in result.stderr


def test_crashpoint_kills_at_nth_pass() -> None:
    result = run_python(LOOP_SCRIPT, "test.loop:3")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["0", "1", "2"]


@pytest.mark.parametrize("crash", [None, "", "some.other.point", "test.loop:6"])
def test_crashpoint_inert_unless_named(crash: str | None) -> None:
    result = run_python(LOOP_SCRIPT, crash)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "1", "2", "3", "4", "done"]


@pytest.mark.parametrize("spec", ["test.loop:0", "test.loop:x", ":2"])
def test_malformed_crashpoint_spec_is_refused(spec: str) -> None:
    result = run_python(LOOP_SCRIPT, spec)
    assert result.returncode == 1
    assert CRASHPOINT_ENV in result.stderr
    assert result.stdout == ""


def test_declared_crashpoints_are_listed() -> None:
    name = declare_crashpoint("test.declared")
    assert name == "test.declared"
    assert name in durable.CRASHPOINTS
    assert durable.WRITE_SYNCED in durable.CRASHPOINTS
    assert isinstance(durable.CRASHPOINTS, frozenset)


@pytest.mark.parametrize("bad", ["", "a:b", " padded"])
def test_declare_refuses_bad_names(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid crash point"):
        declare_crashpoint(bad)


def test_crashpoint_is_cheap_when_inert() -> None:
    """The hot path is one comparison: 200,000 calls take milliseconds (bound leaves room for load)."""
    import time

    start = time.perf_counter()
    for _ in range(200_000):
        durable.crashpoint("chunk.renamed")
    assert time.perf_counter() - start < 1.0


def test_write_atomic_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"one")
    assert target.read_bytes() == b"one"
    write_atomic(target, b"two" * 100_000)
    assert target.read_bytes() == b"two" * 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_atomic_failure_leaves_no_temp(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot write"):
        write_atomic(tmp_path / "missing-dir" / "x", b"data")
    target_dir = tmp_path / "dir"
    target_dir.mkdir()
    # Renaming a file over a non-empty directory fails after the temp file was written.
    (target_dir / "x").mkdir()
    (target_dir / "x" / "keep").write_bytes(b"")
    with pytest.raises(StorageError):
        write_atomic(target_dir / "x", b"data")
    assert sorted(p.name for p in target_dir.iterdir()) == ["x"]


def test_write_atomic_killed_before_rename_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    script = "import sys, pathlib; from bulkd.durable import write_atomic\n"
    script += "write_atomic(pathlib.Path(sys.argv[1]), b'new')\n"
    result = run_python(script, durable.WRITE_SYNCED, str(target))
    assert result.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"old"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1
    assert leftovers[0].read_bytes() == b"new"
    assert remove_temp_files(tmp_path) == leftovers
    assert list(tmp_path.iterdir()) == [target]


def test_rename_durable_across_directories(tmp_path: Path) -> None:
    src_dir, dst_dir = tmp_path / "a", tmp_path / "b"
    src_dir.mkdir()
    dst_dir.mkdir()
    (src_dir / "f").write_bytes(b"x")
    rename_durable(src_dir / "f", dst_dir / "g")
    assert (dst_dir / "g").read_bytes() == b"x"
    assert not (src_dir / "f").exists()
    with pytest.raises(StorageError, match="cannot rename"):
        rename_durable(src_dir / "f", dst_dir / "h")


def test_remove_temp_files_only_touches_matching_regular_files(tmp_path: Path) -> None:
    (tmp_path / ".a.123.tmp").write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")
    (tmp_path / ".dir.tmp").mkdir()
    (tmp_path / ".link.tmp").symlink_to(tmp_path / "keep.tmp")
    removed = remove_temp_files(tmp_path)
    assert removed == [tmp_path / ".a.123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dir.tmp", ".link.tmp", "keep.tmp"]
    assert remove_temp_files(tmp_path / "absent") == []


def test_fsync_dir_reports_storage_error(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(StorageError):
        fsync_dir(tmp_path / "absent")


def test_move_durable_moves_and_leaves_no_temp(tmp_path: Path) -> None:
    from bulkd.durable import move_durable

    src_dir, dst_dir = tmp_path / "a", tmp_path / "b"
    src_dir.mkdir()
    dst_dir.mkdir()
    (src_dir / "f").write_bytes(b"x" * 100)
    move_durable(src_dir / "f", dst_dir / "g")
    assert (dst_dir / "g").read_bytes() == b"x" * 100
    assert list(src_dir.iterdir()) == []
    assert list(dst_dir.iterdir()) == [dst_dir / "g"]
    with pytest.raises(StorageError, match="cannot move"):
        move_durable(src_dir / "missing", dst_dir / "h")


def test_probe_writable_leaves_no_entry_behind(tmp_path: Path) -> None:
    probe_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_probe_writable_raises_for_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        probe_writable(tmp_path / "absent")


def test_remove_stale_probes_takes_only_probe_names(tmp_path: Path) -> None:
    (tmp_path / ".bulkd-probe-7.tmp").write_bytes(b"")
    (tmp_path / ".other.tmp").write_bytes(b"")
    assert remove_stale_probes(tmp_path) == [tmp_path / ".bulkd-probe-7.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == [".other.tmp"]
