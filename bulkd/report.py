"""A finished job's report: the JSON file written beside the archived source.

It is what an operator (or a script) reads to learn what became of a file without opening the
ledger: rows in, records out, rejects by rule, every chunk with all its upload ids, timings and
the error. It holds no token, no URL and no cell value, only counts, names and hashes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from bulkd import __version__
from bulkd.durable import write_atomic
from bulkd.ledger import ChunkRecord, ChunkState, JobRecord, JobState

__all__ = ["build_report", "write_report"]


def build_report(
    job: JobRecord,
    chunks: Sequence[ChunkRecord],
    upload_ids: Mapping[int, list[str]],
    rejects_file: Path | None,
) -> bytes:
    """The report's bytes (stable key order, so equal jobs give equal reports)."""
    delivered = [c for c in chunks if c.state is ChunkState.DELIVERED]
    state = JobState.ARCHIVED if job.state is JobState.DELIVERED else job.state
    doc = {
        "job_id": job.job_id,
        "state": state.value,
        "source": job.source_name,
        "dataset_id": job.dataset_id,
        "record_type": job.record_type,
        "profile": job.profile,
        "content_sha256": job.content_sha256,
        "size": job.size,
        "rows": job.rows,
        "records": job.records,
        "rejected": job.rejected,
        "rejects_by_rule": dict(job.rejects_by_rule),
        "rejects_file": rejects_file.name if rejects_file is not None else None,
        "records_delivered": sum(c.records for c in delivered),
        "chunks_maybe_loaded_twice": sum(len(upload_ids.get(c.chunk_index, [])) > 1 for c in chunks),
        "chunks": [
            {
                "index": c.chunk_index,
                "filename": c.filename,
                "state": c.state.value,
                "records": c.records,
                "bytes": c.bytes,
                "md5": c.md5,
                "sha256": c.sha256,
                "upload_id": c.upload_id,
                "upload_ids": upload_ids.get(c.chunk_index, []),
                # More than one upload: an earlier PUT may have been stored before its answer was
                # lost, so Lexer may have loaded these records twice. The protocol cannot tell.
                "may_be_loaded_twice": len(upload_ids.get(c.chunk_index, [])) > 1,
                "attempts": c.attempts,
                "error": c.error,
            }
            for c in chunks
        ],
        "timings": {
            "claimed_at": job.created_at,
            "finished_at": job.updated_at,
            "seconds": round(job.updated_at - job.created_at, 3),
        },
        "error": job.error,
        "warnings": list(job.warnings),
        "bulkd_version": __version__,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_report(path: Path, report: bytes) -> None:
    """Write the report durably (temp file, fsync, rename), replacing an earlier one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, report)
