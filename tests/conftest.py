"""Shared fixtures for the conversion-core tests."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from bulkd.chunk import ChunkLimits
from bulkd.pipeline import ConvertSettings, FileResult, convert_file
from bulkd.profile import Profile
from bulkd.schemas import load_record_type


@pytest.fixture
def lexer_schemas() -> Path:
    """The upstream Lexer schema checkout that lives beside this repository."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "lexer-schemas"
    if not path.exists():
        pytest.skip("../shared/lexer-schemas is absent (reference data lives beside the checkout)")
    return path


Convert = Callable[..., FileResult]


@pytest.fixture
def convert(tmp_path: Path) -> Convert:
    """Convert one file with fixed settings into ``tmp_path/out`` (or ``out=``)."""

    def run(
        path: Path,
        record_type: str,
        *,
        out: Path | None = None,
        profile: Profile | None = None,
        limits: ChunkLimits | None = None,
        max_reject_ratio: float | None = None,
    ) -> FileResult:
        out_dir = out or tmp_path / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = ConvertSettings(
            record_type=load_record_type(record_type),
            dataset_id="ds1",
            timestamp="1700000000",
            profile=profile or Profile(),
            limits=limits or ChunkLimits(),
            max_reject_ratio=max_reject_ratio,
        )
        return convert_file(path, out_dir, settings)

    return run


def read_chunks(result: FileResult) -> list[dict[str, object]]:
    """Every record of a result's chunks, in chunk order."""
    records: list[dict[str, object]] = []
    for chunk in result.chunks:
        with gzip.open(chunk.path, "rb") as fh:
            records.extend(orjson.loads(line) for line in fh)
    return records


@pytest.fixture
def chunk_records() -> Callable[[FileResult], list[dict[str, object]]]:
    return read_chunks


def read_rejects(result: FileResult) -> list[dict[str, object]]:
    if result.rejects_path is None:
        return []
    return [orjson.loads(line) for line in result.rejects_path.read_bytes().splitlines()]


@pytest.fixture
def reject_lines() -> Callable[[FileResult], list[dict[str, object]]]:
    return read_rejects
