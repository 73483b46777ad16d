"""The pure parts of the status server: job documents, reject grouping, uploader state, throughput."""

from __future__ import annotations

import orjson

from bulkd.jobs import LiveJob
from bulkd.ledger import ChunkState, JobRecord, JobState, JobSummary
from bulkd.status.throughput import Reading, Throughput
from bulkd.status.views import group_rejects, job_view, rejects_by_rule_text, uploader_view
from bulkd.upload import UploaderStats


def record(state: JobState, **fields: object) -> JobRecord:
    values: dict[str, object] = {
        "job_id": "job1",
        "state": state,
        "source_name": "ds/customer_record/a.csv",
        "dataset_id": "ds",
        "record_type": "customer_record",
        "profile": None,
        "content_sha256": "0" * 64,
        "size": 1000,
        "device": 1,
        "inode": 2,
        "claimed_path": "work/job1.csv",
        "created_at": 100.0,
        "updated_at": 110.0,
        "rows": None,
        "records": None,
        "rejected": None,
        "error": None,
        "report_path": None,
        "rejects_by_rule": {},
        "warnings": (),
        "mtime_ns": 0,
    }
    values.update(fields)
    return JobRecord(**values)  # type: ignore[arg-type]


def summary(job: JobRecord, delivered: int = 0, total: int = 0) -> JobSummary:
    counts = dict.fromkeys(ChunkState, 0)
    counts[ChunkState.DELIVERED] = delivered
    counts[ChunkState.WRITTEN] = total - delivered
    return JobSummary(job, counts, total, 10 * total, 100 * total, 10 * delivered, 100 * delivered)


def test_a_converting_job_shows_bytes_read_and_live_rate() -> None:
    live = LiveJob("job1", "a.csv", "ds", "customer_record", 1000, JobState.CONVERTING)
    live.rows, live.bytes_read = 40, 250
    doc = job_view(summary(record(JobState.CONVERTING)), live, now=105.0)
    assert doc["state"] == "converting"
    assert doc["rows"] == 40
    assert doc["progress"] == {"stage": "converting", "fraction": 0.25, "bytes_read": 250}
    assert doc["timings"] == {"created_at": 100.0, "updated_at": 110.0, "seconds": 5.0}


def test_a_delivering_job_counts_chunks() -> None:
    job = record(JobState.DELIVERING, rows=30, records=30, rejected=0)
    doc = job_view(summary(job, delivered=3, total=4), now=110.0)
    assert doc["progress"] == {"stage": "delivering", "fraction": 0.75, "chunks": [3, 4]}
    assert doc["chunks"] == {"total": 4, "delivered": 3, "failed": 0}
    assert doc["rows_per_second"] == 3.0


def test_finished_jobs_are_complete_and_keep_their_error() -> None:
    failed = job_view(summary(record(JobState.FAILED, error="refused")))
    assert failed["progress"] == {"stage": "failed", "fraction": 1.0}
    assert failed["error"] == "refused"
    archived = job_view(summary(record(JobState.ARCHIVED, rows=20), delivered=1, total=1), now=500.0)
    assert archived["progress"]["fraction"] == 1.0
    assert archived["rows_per_second"] == 2.0  # over the job's life (10 s), not until now


def test_rejects_group_by_field_and_rule_most_frequent_first() -> None:
    lines = [
        orjson.dumps({"input": "a", "line": n, "field": "email", "rule": "format", "message": "bad email"})
        for n in range(2, 8)
    ]
    lines.append(orjson.dumps({"input": "a", "line": 9, "field": None, "rule": "ragged_row", "message": "m"}))
    lines += [b"", b"not json", b'{"line": "x"}']
    doc = group_rejects(lines, max_lines=4)
    assert doc["total"] == 7
    assert doc["unreadable"] == 2
    first, second = doc["groups"]  # type: ignore[misc]
    assert first == {
        "field": "email",
        "rule": "format",
        "message": "bad email",
        "count": 6,
        "lines": [2, 3, 4, 5],
        "lines_truncated": True,
    }
    assert (second["field"], second["rule"], second["lines"]) == (None, "ragged_row", [9])


def test_uploader_state_in_one_word() -> None:
    def state(stats: UploaderStats, paused: bool, recent_retries: int) -> object:
        view = uploader_view(stats, paused=paused, concurrency=8, recent_retries=recent_retries, target="t")
        return view["state"]

    busy = UploaderStats(in_flight=2)
    assert state(busy, False, 0) == "uploading"
    assert state(busy, False, 3) == "retrying"
    assert state(busy, True, 3) == "paused"
    assert state(UploaderStats(), False, 0) == "idle"


def test_rejects_by_rule_text_orders_by_count() -> None:
    assert rejects_by_rule_text({"required": 1, "format": 3}) == "format 3, required 1"


def test_throughput_counts_rows_once_across_the_hand_over() -> None:
    clock = [0.0]
    reading = [Reading(rows=0, records_delivered=0, bytes_delivered=0, retries=0)]
    meter = Throughput(lambda: reading[0], interval=2.0, window_seconds=6.0, clock=lambda: clock[0])
    steps = [(100, 0, 0), (60, 0, 0), (160, 50, 1), (160, 90, 1)]  # the dip: a job changing hands
    for rows, records, retries in steps:
        clock[0] += 2.0
        reading[0] = Reading(rows, records_delivered=records, bytes_delivered=10 * records, retries=retries)
        meter.tick()
    rates = [(s.rows_per_second, s.records_per_second) for s in meter.samples]
    assert rates == [(0.0, 0.0), (30.0, 25.0), (0.0, 20.0)]  # the window keeps 3 samples
    assert sum(s.retries for s in meter.samples) == 1
    assert meter.recent_retries(60) == 1
