"""The manifest: one JSON file listing every chunk of a conversion with its size and digests.

It lets a user (or a later upload step) check that the chunks on disk are exactly those that
were written, and records the settings that decide their bytes.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from bulkd import __version__
from bulkd.durable import write_atomic
from bulkd.pipeline import ConvertSettings, FileResult
from bulkd.schemas import LEXER_SCHEMA_VERSION

__all__ = ["MANIFEST_NAME", "write_manifest"]

MANIFEST_NAME = "manifest.json"


def write_manifest(out_dir: Path, settings: ConvertSettings, results: list[FileResult]) -> Path:
    """Write ``manifest.json`` atomically beside the chunks and return its path."""
    doc = {
        "bulkd_version": __version__,
        "lexer_schema_version": LEXER_SCHEMA_VERSION,
        "dataset_id": settings.dataset_id,
        "record_type": settings.record_type.name,
        "schema": settings.record_type.source,
        "gzip_level": settings.limits.gzip_level,
        "inputs": [
            {
                "input": r.input,
                "rows": r.rows,
                "records": r.records,
                "rows_delivered": r.rows_delivered,
                "rejected": r.rejected,
                "rejects": str(r.rejects_path) if r.rejects_path else None,
                "error": r.error,
                "chunks": [c.as_json() for c in r.chunks],
            }
            for r in results
        ],
    }
    path = out_dir / MANIFEST_NAME
    write_atomic(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return path
