"""``bulkd convert`` and ``bulkd validate``: exit codes and the --json summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bulkd.cli import main

_SUMMARY_KEYS = {"rows", "records", "rejected", "chunks", "rejects", "errors", "warnings"}


def _convert(tmp_path: Path, src: Path, *extra: str) -> list[str]:
    return [
        "convert",
        str(src),
        "--record-type",
        "customer_record",
        "--dataset-id",
        "ds1",
        "--out",
        str(tmp_path / "out"),
        "--json",
        *extra,
    ]


def _summary(out: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return doc


def test_convert_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_text("link.customer_id,employee_flag,shoe\nc1,yes,4\nc2,maybe,5\nc3,no,6\n")
    assert main(_convert(tmp_path, src)) == 0
    summary = _summary(capsys.readouterr().out)
    assert set(summary) == _SUMMARY_KEYS
    assert (summary["rows"], summary["records"], summary["rejected"]) == (3, 2, 1)
    chunks = summary["chunks"]
    assert isinstance(chunks, list)
    assert len(chunks) == 1
    assert set(chunks[0]) == {"path", "records", "bytes", "sha256"}
    assert chunks[0]["records"] == 2
    assert Path(chunks[0]["path"]).stat().st_size == chunks[0]["bytes"]
    assert summary["rejects"] is not None
    assert Path(str(summary["rejects"])).exists()
    assert summary["errors"] == []
    warnings = summary["warnings"]
    assert isinstance(warnings, list)
    assert any("shoe" in w for w in warnings)


def test_max_reject_ratio_exits_1_with_no_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_text("link.customer_id,employee_flag\nc1,maybe\nc2,perhaps\nc3,no\n")
    assert main(_convert(tmp_path, src, "--max-reject-ratio", "0.1")) == 1
    summary = _summary(capsys.readouterr().out)
    assert summary["chunks"] == []
    errors = summary["errors"]
    assert isinstance(errors, list)
    assert errors[0]["input"] == str(src)
    assert not list((tmp_path / "out").glob("*.ndjson.gz"))


def test_duplicate_headers_error_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "dup.csv"
    src.write_text("link.customer_id,a,a\nc1,1,2\n")
    assert main(_convert(tmp_path, src)) == 1
    captured = capsys.readouterr()
    summary = _summary(captured.out)
    assert "dup.csv" in str(summary["errors"])
    assert "dup.csv" in captured.err
    assert not list((tmp_path / "out").glob("*.ndjson.gz"))


def test_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.ndjson"
    good.write_text('{"link": {"email": "a@b.co"}}\n')
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"link": {"email": "a@b.co"}}\n{"link": {"email": "not-an-email"}}\n')
    assert main(["validate", str(good), "--record-type", "customer_record"]) == 0
    assert main(["validate", str(bad), "--record-type", "customer_record"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2 [link]" in err
    assert not list(tmp_path.glob("*.gz"))


def test_validate_upstream_examples(lexer_schemas: Path) -> None:
    examples = sorted((lexer_schemas / "examples" / "data").glob("*.ndjson"))
    assert len(examples) == 12
    for example in examples:
        record_type = example.stem.removeprefix("batch_").split("_", 1)[1]
        assert main(["validate", str(example), "--record-type", record_type]) == 0, example.name


def test_module_entry_point_in_a_subprocess(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "bulkd", *_convert(tmp_path, src)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["rows"], summary["records"], summary["chunks"]) == (0, 0, [])
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert manifest["inputs"][0]["records"] == 0
