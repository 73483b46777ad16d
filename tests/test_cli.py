"""``bulkd convert`` and ``bulkd validate``: exit codes and the --json summary."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkd.cli import main

_SUMMARY_KEYS = {"rows", "records", "rejected", "chunks", "rejects", "errors", "warnings"}


def _convert(tmp_path: Path, src: Path, *extra: str) -> list[str]:
    return _convert_all(tmp_path, [src], *extra)


def _convert_all(
    tmp_path: Path, srcs: list[Path], *extra: str, record_type: str = "customer_record"
) -> list[str]:
    return [
        "convert",
        *map(str, srcs),
        "--record-type",
        record_type,
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
    (rejects,) = summary["rejects"]
    assert Path(rejects).exists()
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


def test_validate_writes_rejects_into_the_rejects_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text(
        "link.customer_id,employee_flag,date_of_birth\n"
        "c1,yes,1990-01-01\n"
        "c2,maybe,1990-01-01\n"
        "c3,no,1990-02-31\n"
        ",,\n"
        "c5,no,\n"
    )
    rejects_dir = tmp_path / "reports" / "rejects"
    argv = ["validate", str(src), "--record-type", "customer_record", "--rejects", str(rejects_dir), "--json"]
    assert main(argv) == 1  # any reject fails validate when no --max-reject-ratio is given
    captured = capsys.readouterr()
    summary = _summary(captured.out)
    (reject_file,) = rejects_dir.iterdir()
    assert reject_file.name.endswith(".rejects.ndjson")
    assert summary["rejects"] == [str(reject_file)]
    assert f"rejects in {reject_file}" in captured.err
    assert (summary["rows"], summary["rejected"], summary["chunks"]) == (5, 3, [])
    text = reject_file.read_text()
    assert "maybe" not in text
    assert "1990-02-31" not in text
    rejects = [orjson.loads(line) for line in text.splitlines()]
    assert [(r["input"], r["line"], r["field"], r["rule"]) for r in rejects] == [
        (str(src), 3, "employee_flag", "type"),
        (str(src), 4, "date_of_birth", "format"),
        (str(src), 5, None, "empty_row"),
    ]
    assert all(set(r) == {"input", "line", "field", "rule", "message"} and r["message"] for r in rejects)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [Path("in.csv"), reject_file.relative_to(tmp_path)]  # no chunks, no manifest


def test_validate_with_rejects_directory_writes_nothing_for_a_clean_file(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("link.customer_id\nc1\n")
    rejects_dir = tmp_path / "rejects"
    assert (
        main(["validate", str(src), "--record-type", "customer_record", "--rejects", str(rejects_dir)]) == 0
    )
    assert list(rejects_dir.iterdir()) == []


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


def _chunk_records(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh]


def test_convert_several_inputs_in_one_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a" / "in.csv", tmp_path / "b" / "in.csv"  # the same file name twice
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_text(
        "link.customer_id,employee_flag\n" + "".join(f"a{i},yes\n" for i in range(5)) + "a5,maybe\n"
    )
    second.write_text("link.customer_id,employee_flag\nb0,no\nb1,perhaps\nb2,\n,\nb4,1\n")
    third = tmp_path / "c.ndjson"
    third.write_text('{"link": {"customer_id": "c0"}}\n{"link": {"customer_id": "c1"}}\n')
    assert main(_convert_all(tmp_path, [first, second, third], "--max-records", "2")) == 0
    summary = _summary(capsys.readouterr().out)
    assert (summary["rows"], summary["records"], summary["rejected"]) == (6 + 5 + 2, 5 + 3 + 2, 1 + 2 + 0)
    chunks = summary["chunks"]
    assert isinstance(chunks, list)
    names = [Path(c["path"]).name for c in chunks]
    assert len(set(names)) == len(names) == 3 + 2 + 1
    assert sum(c["records"] for c in chunks) == summary["records"]
    ids: dict[str, list[str]] = {}
    for chunk in chunks:
        match = re.fullmatch(
            r"ds1_customer_record_\d+_(f\d{4})-(\d{5})\.ndjson\.gz", Path(chunk["path"]).name
        )
        assert match, chunk["path"]
        records = _chunk_records(Path(chunk["path"]))
        assert len(records) == chunk["records"]
        ids.setdefault(match[1], []).extend(r["link"]["customer_id"] for r in records)
    assert ids == {
        "f0001": ["a0", "a1", "a2", "a3", "a4"],
        "f0002": ["b0", "b2", "b4"],
        "f0003": ["c0", "c1"],
    }
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    inputs = manifest["inputs"]
    assert [i["input"] for i in inputs] == [str(first), str(second), str(third)]
    assert [i["rejected"] for i in inputs] == [1, 2, 0]
    assert [len(i["chunks"]) for i in inputs] == [3, 2, 1]
    reject_files = [i["rejects"] for i in inputs]
    assert reject_files[2] is None
    assert summary["rejects"] == reject_files[:2]  # every input's reject file, not the first only
    assert reject_files[0] != reject_files[1]
    assert [
        [r["line"] for r in map(orjson.loads, Path(f).read_bytes().splitlines())] for f in reject_files[:2]
    ] == [
        [7],
        [3, 5],
    ]
    on_disk = {p.name for p in (tmp_path / "out").iterdir()}
    assert on_disk == {*names, "manifest.json", *(Path(f).name for f in reject_files[:2])}


def test_profile_list_separator_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "products.csv"
    src.write_text(
        "product_id,name,pictures\n"
        "p1,Mug,https://x.example/1.jpg|https://x.example/2.jpg\n"
        "p2,Cup,\n"
        'p3,Jug,"[""https://x.example/j.jpg""]"\n'
        "p4,Pot,https://x.example/p.jpg||https://x.example/q.jpg|\n"
        "p5,Pan,https://x.example/ok.jpg|not a uri\n"
    )
    profile = tmp_path / "profile.toml"
    profile.write_text('list_separator = "|"\n\n[columns]\n"pictures" = "images"\n')
    argv = _convert_all(tmp_path, [src], "--profile", str(profile), record_type="product")
    assert main(argv) == 0
    summary = _summary(capsys.readouterr().out)
    assert (summary["rows"], summary["records"], summary["rejected"]) == (5, 4, 1)
    chunks = summary["chunks"]
    assert isinstance(chunks, list)
    assert _chunk_records(Path(chunks[0]["path"])) == [
        {"product_id": "p1", "name": "Mug", "images": ["https://x.example/1.jpg", "https://x.example/2.jpg"]},
        {"product_id": "p2", "name": "Cup"},
        {"product_id": "p3", "name": "Jug", "images": ["https://x.example/j.jpg"]},
        {"product_id": "p4", "name": "Pot", "images": ["https://x.example/p.jpg", "https://x.example/q.jpg"]},
    ]
    (rejects,) = summary["rejects"]
    (reject,) = map(orjson.loads, Path(rejects).read_bytes().splitlines())
    assert (reject["line"], reject["field"], reject["rule"]) == (
        6,
        "images.1",
        "format",
    )  # the split's 2nd item
