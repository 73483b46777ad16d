"""A finished job's report JSON, built from real ledger rows: keys, accounting, stability, secrecy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bulkd.ledger import ChunkState, JobState, Ledger
from bulkd.report import build_report, write_report

REPORT_KEYS = {
    "job_id",
    "state",
    "source",
    "dataset_id",
    "record_type",
    "profile",
    "content_sha256",
    "size",
    "rows",
    "records",
    "rejected",
    "rejects_by_rule",
    "rejects_file",
    "records_delivered",
    "chunks_maybe_loaded_twice",
    "chunks",
    "timings",
    "error",
    "warnings",
    "bulkd_version",
}
CHUNK_KEYS = {
    "index",
    "filename",
    "state",
    "records",
    "bytes",
    "md5",
    "sha256",
    "upload_id",
    "upload_ids",
    "may_be_loaded_twice",
    "attempts",
    "error",
}


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "state")
    yield led
    led.close()


JOB = "0123456789abcdef0123-89abcdef"


def add_job(ledger: Ledger, **fields: object) -> None:
    """Record job ``JOB`` and start converting it."""
    values: dict[str, object] = {
        "job_id": JOB,
        "source_name": "crm/customer_record/export.csv",
        "dataset_id": "crm",
        "record_type": "customer_record",
        "profile": None,
        "content_sha256": "c" * 64,
        "size": 4096,
        "device": 1,
        "inode": 2,
        "claimed_path": f"work/{JOB}.csv",
    }
    ledger.add_job(**(values | fields))
    ledger.transition_job(JOB, JobState.CONVERTING)


def delivered_job(ledger: Ledger, *, lost_reply: bool = False) -> None:
    """A job of 100 rows: 2 chunks of 45 records delivered, 10 rows rejected by two rules."""
    add_job(ledger)
    for index in (1, 2):
        ledger.add_chunk(
            JOB,
            index,
            filename=f"crm_customer_record_20240101T000000Z_{index:05d}.ndjson.gz",
            path=f"/var/spool/{JOB}/{index}.ndjson.gz",
            records=45,
            bytes=1000 + index,
            md5=f"{index}" * 32,
            sha256=f"{index}" * 64,
        )
    rules = {"format": 6, "type": 4}
    ledger.transition_job(JOB, JobState.CONVERTED, rows=100, records=90, rejected=10, rejects_by_rule=rules)
    ledger.transition_job(JOB, JobState.DELIVERING)
    for index in (1, 2):
        ledger.transition_chunk(JOB, index, ChunkState.CREATING)
        ledger.transition_chunk(JOB, index, ChunkState.CREATED, upload_id=f"{index}001")
        if lost_reply and index == 2:  # the PUT's answer was lost: a second upload for the same bytes
            ledger.transition_chunk(JOB, index, ChunkState.CREATING)
            ledger.transition_chunk(JOB, index, ChunkState.CREATED, upload_id=f"{index}002")
        ledger.transition_chunk(JOB, index, ChunkState.DELIVERED)
    ledger.transition_job(JOB, JobState.DELIVERED)


def report_of(ledger: Ledger, rejects: Path | None = None) -> dict[str, object]:
    job = ledger.get_job(JOB)
    raw = build_report(job, ledger.chunks_of(JOB), ledger.upload_ids(JOB), rejects)
    doc: dict[str, object] = orjson.loads(raw)
    return doc


def test_a_delivered_job_reports_every_row_and_chunk(ledger: Ledger, tmp_path: Path) -> None:
    delivered_job(ledger, lost_reply=True)
    doc = report_of(ledger, tmp_path / f"{JOB}.rejects.ndjson")
    assert set(doc) == REPORT_KEYS
    assert doc["state"] == "archived"  # written just before the job is recorded as archived
    assert (doc["rows"], doc["records"], doc["rejected"], doc["records_delivered"]) == (100, 90, 10, 90)
    assert doc["rejects_by_rule"] == {"format": 6, "type": 4}
    assert doc["rejects_file"] == f"{JOB}.rejects.ndjson"
    assert (doc["source"], doc["dataset_id"], doc["record_type"]) == (
        "crm/customer_record/export.csv",
        "crm",
        "customer_record",
    )
    chunks = doc["chunks"]
    assert isinstance(chunks, list)
    assert [set(c) for c in chunks] == [CHUNK_KEYS, CHUNK_KEYS]
    assert [(c["index"], c["state"], c["upload_id"]) for c in chunks] == [
        (1, "delivered", "1001"),
        (2, "delivered", "2002"),
    ]
    assert [c["upload_ids"] for c in chunks] == [["1001"], ["2001", "2002"]]
    assert [c["may_be_loaded_twice"] for c in chunks] == [False, True]
    assert doc["chunks_maybe_loaded_twice"] == 1
    assert [c["attempts"] for c in chunks] == [1, 2]
    timings = doc["timings"]
    assert isinstance(timings, dict)
    assert timings["finished_at"] >= timings["claimed_at"]
    assert timings["seconds"] == round(timings["finished_at"] - timings["claimed_at"], 3)
    assert doc["error"] is None


def test_reports_are_byte_stable(ledger: Ledger) -> None:
    delivered_job(ledger)
    job = ledger.get_job(JOB)
    first = build_report(job, ledger.chunks_of(JOB), ledger.upload_ids(JOB), None)
    second = build_report(job, list(ledger.chunks_of(JOB)), dict(ledger.upload_ids(JOB)), None)
    assert first == second
    assert first.endswith(b"\n")
    assert orjson.loads(first)["rejects_file"] is None


def test_a_failed_job_reports_its_error_and_undelivered_chunks(ledger: Ledger) -> None:
    add_job(ledger, record_type="product", profile="profiles/p.toml")
    ledger.add_chunk(
        JOB, 1, filename="f.ndjson.gz", path="/s/f", records=5, bytes=50, md5="0" * 32, sha256="0" * 64
    )
    ledger.transition_job(JOB, JobState.CONVERTED, rows=5, records=5, rejected=0)
    ledger.transition_job(JOB, JobState.DELIVERING)
    ledger.transition_chunk(JOB, 1, ChunkState.FAILED, error="object PUT: HTTP 413: too large")
    ledger.transition_job(JOB, JobState.FAILED, error="a chunk was refused by the API")
    doc = report_of(ledger)
    assert (doc["state"], doc["error"], doc["profile"]) == (
        "failed",
        "a chunk was refused by the API",
        "profiles/p.toml",
    )
    assert doc["records_delivered"] == 0
    chunks = doc["chunks"]
    assert isinstance(chunks, list)
    assert (chunks[0]["state"], chunks[0]["error"], chunks[0]["upload_ids"]) == (
        "failed",
        "object PUT: HTTP 413: too large",
        [],
    )


def test_write_report_replaces_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "done" / f"{JOB}.report.json"
    write_report(target, b'{"old": true}\n')
    write_report(target, b'{"new": true}\n')
    assert target.read_bytes() == b'{"new": true}\n'
    assert os.listdir(target.parent) == [target.name]
