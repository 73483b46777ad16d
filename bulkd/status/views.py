"""What the status API shows: plain JSON documents built from ledger records and live progress.

Pure functions only (no I/O), shared by the HTTP API and ``bulkd status``'s ledger fallback so
both show the same facts. A document never holds a token, a URL or a cell value: jobs carry
counts, names, states and hashes; rejects carry line numbers, fields, rules and the validator's
value-free messages. (The server also scrubs every response body as a last line of defence.)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from bulkd.jobs import LiveJob
from bulkd.ledger import ChunkRecord, ChunkState, JobState, JobSummary
from bulkd.upload import UploaderStats

__all__ = ["chunk_view", "group_rejects", "job_view", "rejects_by_rule_text", "uploader_view"]

Doc = dict[str, object]

_CONVERTING = (JobState.CLAIMED, JobState.CONVERTING)
_DONE = (JobState.DELIVERED, JobState.ARCHIVED, JobState.DUPLICATE)


def job_view(summary: JobSummary, live: LiveJob | None = None, now: float | None = None) -> Doc:
    """One job as the jobs table shows it: counts, progress, rate, timings and error."""
    job = summary.job
    now = time.time() if now is None else now
    phase = live.phase if live is not None else job.state
    finished = job.state not in (*_CONVERTING, JobState.CONVERTED, JobState.DELIVERING)
    elapsed = (job.updated_at if finished else now) - job.created_at
    rows = live.rows if live is not None and phase in _CONVERTING else job.rows
    return {
        "job_id": job.job_id,
        "source": job.source_name,
        "dataset_id": job.dataset_id,
        "record_type": job.record_type,
        "state": phase.value,
        "size": job.size,
        "rows": rows,
        "records": job.records,
        "rejected": job.rejected,
        "rejects_by_rule": dict(job.rejects_by_rule),
        "chunks": {
            "total": live.chunks_total if live is not None and live.chunks_total else summary.chunks,
            "delivered": summary.chunk_counts.get(ChunkState.DELIVERED, 0),
            "failed": summary.chunk_counts.get(ChunkState.FAILED, 0),
        },
        "records_delivered": summary.delivered_records,
        "bytes": summary.bytes,
        "bytes_delivered": summary.delivered_bytes,
        "progress": _progress(summary, live, phase),
        "rows_per_second": _rate(live, rows, elapsed, phase),
        "timings": {
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "seconds": round(max(elapsed, 0.0), 3),
        },
        "error": job.error,
        "report": job.report_path,
    }


def _progress(summary: JobSummary, live: LiveJob | None, phase: JobState) -> Doc:
    """How far the job is in its current stage, as a fraction of 1 with the stage named."""
    if phase in _DONE:
        return {"stage": "done", "fraction": 1.0}
    if phase is JobState.FAILED:
        return {"stage": "failed", "fraction": 1.0}
    if phase in _CONVERTING:
        read = live.bytes_read if live is not None else 0
        size = live.size if live is not None else summary.job.size
        fraction = min(read / size, 1.0) if size > 0 else 0.0
        return {"stage": "converting", "fraction": round(fraction, 4), "bytes_read": read}
    total = live.chunks_total if live is not None and live.chunks_total else summary.chunks
    delivered = summary.chunk_counts.get(ChunkState.DELIVERED, 0)
    if live is not None:
        delivered = max(delivered, live.chunks_delivered)
    fraction = delivered / total if total else 0.0
    return {"stage": "delivering", "fraction": round(fraction, 4), "chunks": [delivered, total]}


def _rate(live: LiveJob | None, rows: int | None, elapsed: float, phase: JobState) -> float:
    """Rows per second: live while converting, else over the job's whole life so far."""
    if live is not None and phase in _CONVERTING:
        return round(live.rows_per_second, 1)
    if not rows or elapsed <= 0:
        return 0.0
    return round(rows / elapsed, 1)


def chunk_view(chunk: ChunkRecord, upload_ids: Sequence[str]) -> Doc:
    """One chunk of a job's detail: its file name, state, size, attempts and every upload id."""
    return {
        "index": chunk.chunk_index,
        "filename": chunk.filename,
        "state": chunk.state.value,
        "records": chunk.records,
        "bytes": chunk.bytes,
        "attempts": chunk.attempts,
        "upload_ids": list(upload_ids),
        "error": chunk.error,
    }


def uploader_view(
    stats: UploaderStats, *, paused: bool, concurrency: int, recent_retries: int, target: str
) -> Doc:
    """The uploader's state in one word plus its counters."""
    if paused:
        state = "paused"
    elif recent_retries:
        state = "retrying"
    elif stats.in_flight:
        state = "uploading"
    else:
        state = "idle"
    return {
        "state": state,
        "paused": paused,
        "target": target,
        "in_flight": stats.in_flight,
        "concurrency": concurrency,
        "delivered": stats.delivered,
        "failed": stats.failed,
        "requests": stats.attempts,
        "bytes_sent": stats.bytes_sent,
        "retries": dict(sorted(stats.retries.items())),
        "retries_total": sum(stats.retries.values()),
        "retries_recent": recent_retries,
        "retries_denied": stats.retries_denied,
    }


@dataclass(slots=True)
class _Group:
    path: str | None
    rule: str
    message: str
    count: int = 0
    lines: list[int] = field(default_factory=list)


def group_rejects(lines: Iterable[bytes], max_lines: int = 100) -> Doc:
    """Reasons grouped by field and rule, most frequent first, with up to ``max_lines`` line numbers each.

    Lines that are not reject objects are counted as ``unreadable``, never shown.
    """
    groups: dict[tuple[str | None, str], _Group] = {}
    total = unreadable = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
            key = (_text_or_none(item.get("field")), str(item["rule"]))
            number = int(item["line"])
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            unreadable += 1
            continue
        total += 1
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(key[0], key[1], str(item.get("message", "")))
        group.count += 1
        if len(group.lines) < max_lines:
            group.lines.append(number)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.rule, g.path or ""))
    return {"total": total, "unreadable": unreadable, "groups": [_group_json(g) for g in ordered]}


def _group_json(group: _Group) -> Doc:
    return {
        "field": group.path,
        "rule": group.rule,
        "message": group.message,
        "count": group.count,
        "lines": group.lines,
        "lines_truncated": group.count > len(group.lines),
    }


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def rejects_by_rule_text(by_rule: Mapping[str, int]) -> str:
    """``format 3, required 1``: a compact summary for tables."""
    return ", ".join(f"{rule} {count}" for rule, count in sorted(by_rule.items(), key=lambda kv: -kv[1]))
