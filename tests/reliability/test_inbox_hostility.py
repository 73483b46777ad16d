"""Issue 6, part 4: a hostile inbox, through the real daemon.

Anyone who can write to the inbox is untrusted: symlinks to files and directories outside it,
FIFOs (which must not block the daemon), hard links to outside files, files replaced or truncated
while bulkd reads them, names with newlines, control characters, invalid UTF-8 and 255 bytes, and
thousands of files at once. The legitimate files beside them must still be delivered exactly once
(the full oracle), and nothing outside the inbox may be read, moved or changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import threading
import time
from pathlib import Path

import orjson
import pytest
from reliability_support import run_ok

from bulkd.inbox import escape_name
from bulkd.selftest import (
    InputFile,
    InputSet,
    LiveDaemon,
    Rig,
    Scenario,
    Tuning,
    drop_into_inbox,
    generate_inputs,
    run_daemon,
    tally,
    wait_until,
)


def _json_lines(rig: Rig) -> list[dict[str, object]]:
    """Every line the daemon logged must be one JSON object: a name cannot inject a line."""
    lines = rig.ws.log_text().decode("utf-8", "strict").splitlines()
    return [orjson.loads(line) for line in lines if not line.startswith("bulkd: crash point")]


def _outside_file(directory: Path, seed: int) -> InputFile:
    """A valid export outside the inbox: none of its records may reach the simulator."""
    item = generate_inputs(random.Random(seed), dataset_id="outside", files=1, formats=("csv",)).files[0]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "secret.csv").write_bytes(item.data)
    return item


async def test_symlinks_fifos_and_hard_links_are_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    secret = _outside_file(outside / "email_open", 1)
    hard = outside / "hard.csv"
    hard.write_bytes(secret.data)
    async with await Rig.start(tmp_path / "rig") as rig:
        inputs = generate_inputs(random.Random(2), dataset_id="dshost", files=2)
        drop_into_inbox(rig.ws.inbox, inputs.files)
        folder = rig.ws.inbox / "dshost" / "email_open"
        hostile = {
            folder / "link-to-file.csv": "symbolic link",
            folder / "link-to-dir": "symbolic link",
            rig.ws.inbox / "dslinked": "symbolic link",
            rig.ws.inbox / "dsrt" / "email_open": "symbolic link",
            folder / "pipe.csv": "not a regular file",
            folder / "hard.csv": "hard link",
        }
        (folder / "link-to-file.csv").symlink_to(outside / "email_open" / "secret.csv")
        (folder / "link-to-dir").symlink_to(outside / "email_open", target_is_directory=True)
        (rig.ws.inbox / "dslinked").symlink_to(outside, target_is_directory=True)
        (rig.ws.inbox / "dsrt").mkdir()
        (rig.ws.inbox / "dsrt" / "email_open").symlink_to(outside / "email_open", target_is_directory=True)
        os.mkfifo(folder / "pipe.csv")
        os.link(hard, folder / "hard.csv")
        before = {p: (p.read_bytes(), p.stat().st_nlink) for p in outside.rglob("*") if p.is_file()}
        run = await run_daemon(rig.ws, timeout=60)
        assert run.exit_code == 0, run.log.read_text()[-2000:]
        problems = await rig.final_problems(inputs)
        assert not problems, problems
        assert rig.sim.stats("outside").uploads == 0
        skipped = [line["message"] for line in _json_lines(rig) if "skipped" in str(line["message"])]
    for path, reason in hostile.items():
        assert os.path.lexists(path), f"{path} was moved out of the inbox"
        name = path.relative_to(rig.ws.inbox).as_posix()
        assert any(name in m and reason in m for m in skipped), (name, reason, skipped)
    after = {p: (p.read_bytes(), p.stat().st_nlink) for p in outside.rglob("*") if p.is_file()}
    assert after == before, "a file outside the inbox was changed"


def _replace_repeatedly(target: Path, versions: tuple[InputFile, ...], interval: float) -> threading.Thread:
    """Replace ``target`` by each version in turn (written aside, renamed over it), ``interval`` apart."""

    def writer() -> None:
        for number, version in enumerate(versions):
            partial = target.with_name(f"{target.name}.{number}.part")
            partial.write_bytes(version.data)
            os.replace(partial, target)
            time.sleep(interval)

    thread = threading.Thread(target=writer, name="replacer", daemon=True)
    thread.start()
    return thread


async def test_a_file_replaced_again_and_again_is_delivered_whole_never_mixed(tmp_path: Path) -> None:
    """Each version bulkd claims is delivered completely and once; the last one always is."""
    async with await Rig.start(tmp_path / "rig") as rig:
        versions = generate_inputs(
            random.Random(7), dataset_id="dsrep", files=8, rows=(6000, 6000), formats=("csv",)
        )
        target = rig.ws.inbox / "dsrep" / "email_open" / "export.csv"
        target.parent.mkdir(parents=True)
        daemon = LiveDaemon(rig.ws)
        await daemon.wait_started()
        writer = _replace_repeatedly(target, versions.files, interval=0.12)
        await asyncio.to_thread(writer.join, 60)
        await wait_until(
            lambda: not target.exists() and _all_finished(daemon), 90, "the last version to finish"
        )
        run = await daemon.stop()
        assert run.exit_code == 0
        objects = await rig.objects("dsrep")
        assert await rig.progress_problems(dataclasses.replace(versions, files=())) == []
    delivered = []
    for version in versions.files:
        counts = tally(InputSet("dsrep", (version,), ()), objects)
        assert counts.delivered in (0, counts.records_in), f"a version was delivered in part: {counts}"
        delivered.append(counts.delivered > 0)
    assert delivered[-1], "the final version was not delivered"
    everything = tally(versions, objects)
    assert (everything.duplicates, everything.unexpected, everything.resent) == (0, 0, 0), everything
    assert not rig.ws.failed.exists() or not any(rig.ws.failed.iterdir())


def _all_finished(daemon: LiveDaemon) -> bool:
    log = daemon.log
    return log.count(b" as job ") == log.count(b" finished: ") > 0


@pytest.mark.parametrize("change", ["truncate", "append"])
async def test_a_file_changed_after_its_claim_is_not_archived_as_delivered(
    tmp_path: Path, change: str
) -> None:
    """The victim is claimed while a big file holds the only conversion slot, then changed through a
    descriptor its writer kept: bulkd must not deliver the changed content as if it were the claimed one."""
    async with await Rig.start(
        tmp_path / "rig", tuning=Tuning(parallel_files=1, chunk_max_records=20_000)
    ) as rig:
        inputs = generate_inputs(
            random.Random(11), dataset_id="dschg", files=2, rows=(2000, 2000), formats=("csv",)
        )
        blocker = generate_inputs(random.Random(12), dataset_id="dsblock", files=1, rows=(40000, 40000))
        drop_into_inbox(rig.ws.inbox, blocker.files)
        daemon = LiveDaemon(rig.ws)
        await wait_until(lambda: daemon.log.count(b" as job ") == 1, 30, "the blocker's claim")
        victim, other = inputs.files
        drop_into_inbox(rig.ws.inbox, [victim])
        fd = os.open(rig.ws.inbox / victim.rel, os.O_WRONLY | os.O_APPEND)  # its writer still holds it
        try:
            await wait_until(lambda: daemon.log.count(b" as job ") == 2, 30, "the victim's claim")
            if change == "truncate":
                os.ftruncate(fd, len(victim.data) // 2)
            else:
                os.write(fd, other.data.split(b"\n", 1)[1])  # rows the claim never saw
        finally:
            os.close(fd)
        await wait_until(lambda: daemon.log.count(b" finished: ") == 2, 90, "both jobs to end")
        await daemon.stop()
        stored = await rig.objects("dschg")
        failed = [orjson.loads(p.read_bytes()) for p in rig.ws.failed.glob("*.report.json")]
        blocker_done = len(list(rig.ws.done.glob("*.report.json")))
    # Exactly the claimed content can no longer arrive, so the job must not end as a success: it
    # fails, naming the change, and sends nothing (neither what is left nor what was added).
    assert stored == [], f"{sum(len(o.records) for o in stored)} records of a changed file were delivered"
    assert [r["source"] for r in failed] == [victim.rel]
    assert "changed after it was claimed" in failed[0]["error"], failed[0]["error"]
    assert blocker_done == 1


HEADER_ONLY = b"link.email,action_at,email_id,campaign_id\n"
HOSTILE_NAMES = [
    pytest.param(b"new\nline.csv", id="newline"),
    pytest.param(b"ctl\x01\x1b[31mred\x7f.csv", id="control-chars"),
    pytest.param(b"bad\xff\xfeutf8.csv", id="non-utf8"),
    pytest.param(b"a" * 251 + b".csv", id="255-bytes"),
    pytest.param("rtl\u202eosc.csv".encode(), id="bidi-override"),
    pytest.param(b"-x --json $(id) `id`;.csv", id="shell-meta"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_hostile_file_names_are_delivered_and_logged_escaped(tmp_path: Path, name: bytes) -> None:
    async with await Rig.start(tmp_path / "rig") as rig:
        inputs = generate_inputs(random.Random(len(name)), dataset_id="dsname", files=1, formats=("csv",))
        rel = os.fsdecode(b"dsname/email_open/" + name)
        inputs = dataclasses.replace(inputs, files=(dataclasses.replace(inputs.files[0], rel=rel),))
        drop_into_inbox(rig.ws.inbox, inputs.files)
        (rig.ws.inbox / "bad\nds" / "email_open").mkdir(parents=True)
        (rig.ws.inbox / "bad\nds" / "email_open" / "x.csv").write_bytes(HEADER_ONLY)
        run = await run_daemon(rig.ws, timeout=60)
        assert run.exit_code == 0
        problems = await rig.final_problems(inputs)
        assert not problems, problems
        lines = _json_lines(rig)
        reports = [orjson.loads(p.read_bytes()) for p in rig.ws.done.glob("*.report.json")]
    messages = [str(line["message"]) for line in lines]
    assert any("bad\\x0ads/email_open" in m and "skipped" in m for m in messages), (
        "unroutable directory not reported"
    )
    shown = escape_name(b"dsname/email_open/" + name)
    assert [r["source"] for r in reports] == [shown]
    assert any(shown in m for m in messages)


async def test_a_thousand_small_files_at_once(tmp_path: Path) -> None:
    await _many_files(tmp_path, 1000, seconds=150)


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_ten_thousand_small_files_at_once(tmp_path: Path) -> None:
    await _many_files(tmp_path, 10_000, seconds=900)


async def _many_files(tmp_path: Path, count: int, seconds: float) -> None:
    scenario = Scenario(
        f"{count} small files",
        count,
        files=count,
        rows=(1, 4),
        formats=("csv", "ndjson"),
        tuning=Tuning(upload_concurrency=16, extra={"inbox": {"poll_interval": 0.2}}),
        run_timeout=seconds,
        max_runs=1,
    )
    started = time.monotonic()
    outcome = await run_ok(scenario, tmp_path)
    assert len(outcome.runs) == 1
    assert time.monotonic() - started < seconds
