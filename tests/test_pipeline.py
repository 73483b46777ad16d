"""convert_file end to end: rejects, refusals, NDJSON, gzip, empty inputs and Lexer's own examples."""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft7Validator

import bulkd.pipeline
from bulkd.pipeline import ConvertSettings, FileResult, convert_file
from bulkd.read import ReadOptions
from bulkd.schemas import load_record_type, resolve_ref

Convert = Callable[..., FileResult]
Records = Callable[[FileResult], list[dict[str, Any]]]
_SECRET = "Zanzibar-7731-secret"


def _upstream_errors(lexer_schemas: Path, record_type: str, records: list[dict[str, Any]]) -> list[str]:
    schema = json.loads((lexer_schemas / "jsonschema" / f"{record_type}.json").read_text())
    validator = Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)
    return [f"{i}: {e.message}" for i, r in enumerate(records) for e in validator.iter_errors(r)]


def test_rejects_carry_no_cell_values(
    tmp_path: Path, convert: Convert, reject_lines: Callable[[FileResult], list[dict[str, Any]]]
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "link.email,employee_flag,date_of_birth,gender\n"
        f"{_SECRET}@x,true,1990-01-01,f\n"
        f"a@b.co,{_SECRET},1990-01-01,f\n"
        f"a@b.co,true,{_SECRET},f\n"
        "a@b.co,true,1990-01-01,f\n"
    )
    result = convert(path, "customer_record")
    assert result.ok
    assert (result.rows, result.records, result.rejected) == (4, 1, 3)
    assert result.rejects_path is not None
    text = result.rejects_path.read_text()
    assert _SECRET not in text
    assert _SECRET.lower() not in text
    for reject in reject_lines(result):
        assert set(reject) == {"input", "line", "field", "rule", "message"}
        assert reject["input"] == str(path)
    assert sorted(r["line"] for r in reject_lines(result)) == [2, 3, 4]


def test_reject_ratio_fails_the_file_with_no_chunk_but_its_rejects(tmp_path: Path, convert: Convert) -> None:
    path = tmp_path / "in.csv"
    path.write_text("link.customer_id,employee_flag\na,x\nb,y\nc,true\n")
    result = convert(path, "customer_record", max_reject_ratio=0.5)
    assert not result.ok
    assert "2 of 3 rows rejected" in (result.error or "")
    assert result.chunks == ()
    assert (result.rows, result.rejected, result.rejects_by_rule) == (3, 2, {"type": 2})
    assert result.rejects_path is not None
    assert list((tmp_path / "out").iterdir()) == [result.rejects_path], "the rejects say why; no chunk"
    assert [orjson.loads(line)["line"] for line in result.rejects_path.read_bytes().splitlines()] == [2, 3]


def test_duplicate_headers_refuse_the_file(tmp_path: Path, convert: Convert) -> None:
    path = tmp_path / "dups.csv"
    path.write_text("link.email,first_name,first_name\na@b.co,A,B\n")
    result = convert(path, "customer_record")
    assert not result.ok
    assert "dups.csv" in (result.error or "")
    assert list((tmp_path / "out").iterdir()) == []


def test_ndjson_bad_line_is_one_reject(
    tmp_path: Path,
    convert: Convert,
    chunk_records: Records,
    reject_lines: Callable[[FileResult], list[dict[str, Any]]],
) -> None:
    path = tmp_path / "in.ndjson"
    path.write_text(
        '{"link": {"email": " A@B.CO "}, "first_name": "A"}\n'
        '{"link": {"email": "c@d.co"}, "first_name": \n'
        '{"link": {"customer_id": "1"}, "date_of_birth": "1990-02-31"}\n'
        "[1, 2]\n"
        '{"link": {"customer_id": "2"}, "shoe": 44}\n'
    )
    result = convert(path, "customer_record")
    assert result.ok, result.error
    assert chunk_records(result) == [
        {"link": {"email": "a@b.co"}, "first_name": "A"},
        {"link": {"customer_id": "2"}},
    ]
    assert [(r["line"], r["rule"]) for r in reject_lines(result)] == [
        (2, "json_syntax"),
        (3, "format"),
        (4, "not_an_object"),
    ]
    assert any("shoe" in w for w in result.warnings)


def test_gzip_csv_input(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(b"link.customer_id,first_name\nc1,A\nc2,B\n"))
    result = convert(path, "customer_record")
    assert result.ok, result.error
    assert [r["link"]["customer_id"] for r in chunk_records(result)] == ["c1", "c2"]


@pytest.mark.parametrize(("name", "content"), [("empty.csv", ""), ("header.csv", "link.email,first_name\n")])
def test_empty_and_header_only_files_succeed_with_zero_records(
    tmp_path: Path, convert: Convert, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = convert(path, "customer_record")
    assert result.ok, result.error
    assert (result.rows, result.records, result.rejected, result.chunks) == (0, 0, 0, ())


def test_row_of_only_empty_fields_is_accounted_for(tmp_path: Path, convert: Convert) -> None:
    path = tmp_path / "in.csv"
    path.write_text("link.customer_id,first_name\nc1,A\n,\n")
    result = convert(path, "customer_record")
    assert result.rows == 2
    assert result.rejected == 1


def test_blank_lines_are_not_rows_but_empty_rows_are_rejects(
    tmp_path: Path, convert: Convert, reject_lines: Callable[[FileResult], list[dict[str, Any]]]
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b'link.customer_id,first_name\r\n\r\nc1,"A\r\n\r\nB"\r\n"",""\r\nc2,C\r\n\r\n\r\n')
    result = convert(path, "customer_record")
    assert result.ok, result.error
    assert (result.rows, result.records, result.rejected) == (3, 2, 1)
    assert reject_lines(result) == [
        {"input": str(path), "line": 6, "field": None, "rule": "empty_row", "message": "every cell is empty"}
    ]


def test_records_bulkd_writes_validate_upstream(
    tmp_path: Path, convert: Convert, chunk_records: Records, lexer_schemas: Path
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "link.email,email,employee_flag,date_of_birth,custom_fields.a,first_name\n"
        " Jane@Example.COM ,X@Y.ORG,Yes,2000-02-29,1,Jane\n"
        "b@x.co,,no,,,\n"
        "c@x.co,,1,1999-12-31,,Ça\n"
    )
    result = convert(path, "customer_record")
    records = chunk_records(result)
    assert len(records) == 3
    assert _upstream_errors(lexer_schemas, "customer_record", records) == []


def _declared(root: dict[str, Any], node: dict[str, Any], value: Any) -> Any:
    """``value`` without the members the schema does not declare (bulkd drops those with a warning)."""
    node = resolve_ref(root, node)
    variants = node.get("anyOf") or node.get("allOf")
    if variants and isinstance(value, dict):
        merged: dict[str, Any] = {}
        for variant in variants:
            merged.update(resolve_ref(root, variant).get("properties", {}))
        node = {"properties": merged}
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_declared(root, node["items"], item) for item in value]
    props = node.get("properties")
    if not isinstance(value, dict) or not props:
        return value
    return {k: _declared(root, props[k], v) for k, v in value.items() if k in props}


def _expected(example: Path, record_type: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The example's records as written, and as bulkd keeps them (undeclared members dropped)."""
    raw = [orjson.loads(line) for line in example.read_bytes().splitlines() if line.strip()]
    schema = load_record_type(record_type).schema
    return raw, [_declared(schema, schema, r) for r in raw]


def _record_type_of(example: Path) -> str:
    name = example.stem.removeprefix("batch_")
    return name.split("_", 1)[1]


def _examples(lexer_schemas: Path) -> list[Path]:
    found = sorted((lexer_schemas / "examples" / "data").glob("*.ndjson"))
    assert len(found) == 12
    return found


def test_upstream_examples_convert_from_ndjson_unchanged(
    tmp_path: Path, convert: Convert, chunk_records: Records, lexer_schemas: Path
) -> None:
    for example in _examples(lexer_schemas):
        record_type = _record_type_of(example)
        raw, _ = _expected(example, record_type)
        declared = load_record_type(record_type).schema["properties"]
        # NDJSON documents keep their nested members; only undeclared top-level fields are dropped
        expected = [{k: v for k, v in r.items() if k in declared} for r in raw]
        result = convert(example, record_type, out=tmp_path / example.stem)
        assert result.ok, result.error
        assert result.rejected == 0, example.name
        records = chunk_records(result)
        assert records == expected, example.name
        if raw != expected:  # what was dropped is named
            assert result.warnings, example.name
        assert _upstream_errors(lexer_schemas, record_type, records) == []


def test_upstream_examples_round_trip_through_parquet(
    tmp_path: Path, convert: Convert, chunk_records: Records, lexer_schemas: Path
) -> None:
    for example in _examples(lexer_schemas):
        record_type = _record_type_of(example)
        raw, expected = _expected(example, record_type)
        parquet = tmp_path / f"{example.stem}.parquet"
        pq.write_table(pa.Table.from_pylist(raw), parquet)
        result = convert(parquet, record_type, out=tmp_path / example.stem)
        assert result.ok, f"{example.name}: {result.error}"
        assert result.rejected == 0, (
            f"{example.name}: {result.rejects_path and result.rejects_path.read_text()}"
        )
        assert chunk_records(result) == expected, example.name
        if raw != expected:
            assert result.warnings, example.name


def test_upstream_csv_example_converts_as_customer_record(
    tmp_path: Path, convert: Convert, chunk_records: Records, lexer_schemas: Path
) -> None:
    folder = lexer_schemas / "examples" / "csv_to_ndjson"
    result = convert(folder / "example.csv", "customer_record")
    assert result.ok, result.error

    def without_nulls(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_nulls(v) for k, v in value.items() if v is not None}
        return value

    expected = [
        without_nulls(orjson.loads(line))
        for line in (folder / "example.csv.ndjson").read_bytes().splitlines()
    ]
    records = chunk_records(result)
    assert records == expected
    assert len(records) > 0
    assert _upstream_errors(lexer_schemas, "customer_record", records) == []


@pytest.mark.parametrize("partition_bytes", [None, 512])
def test_grouped_rejects_come_out_once_each_in_line_order(
    tmp_path: Path,
    convert: Convert,
    reject_lines: Callable[[FileResult], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    partition_bytes: int | None,
) -> None:
    """Purchases reject whole groups as partitions fold, out of line order; the file is sorted."""
    if partition_bytes is not None:
        monkeypatch.setattr(bulkd.pipeline, "_PARTITION_INPUT_BYTES", partition_bytes)
    rng = random.Random(11)
    rows: list[tuple[str, str]] = []  # (purchase id, quantity)
    for p in range(80):
        quantities = [str(rng.randint(1, 3)) for _ in range(rng.randint(1, 4))]
        if p % 7 == 3:
            quantities[-1] = "many"  # one bad line rejects the whole purchase
        rows += [(f"P{p:03d}", q) for q in quantities]
    rows += [("", "1")] * 3 + [("", "")] * 2  # no key; all empty
    rng.shuffle(rows)
    columns = ["purchase_id", "link.email", "action_at", "type", "products.product_reference.id"]
    columns += ["products.product_reference.id_type", "products.price_paid", "products.quantity"]
    body = "".join(
        f"{pid},{pid.lower()}@x.co,2024-05-01,physical,sku{i},sku,1.50,{q}\n" if pid or q else ",,,,,,,\n"
        for i, (pid, q) in enumerate(rows)
    )
    path = tmp_path / "lines.csv"
    path.write_text(",".join(columns) + "\n" + body)
    bad = {f"P{p:03d}" for p in range(80) if p % 7 == 3}
    expected = [line for line, (pid, q) in enumerate(rows, start=2) if pid in bad or not pid]
    result = convert(path, "purchase")
    assert result.ok, result.error
    assert result.rows == len(rows) == result.rows_delivered + result.rejected
    assert [r["line"] for r in reject_lines(result)] == expected
    rules = {r["rule"] for r in reject_lines(result)}
    assert rules == {"type", "group_member_rejected", "missing_group_key", "empty_row"}


def test_units_end_at_the_row_count_or_byte_bound_whatever_the_batches() -> None:
    """Unit boundaries depend only on the rows: the same rows cut into different reader batches
    give the same units, and huge rows end a unit early so memory stays bounded."""
    import itertools

    import pyarrow as pa

    from bulkd.model import SourceBatch
    from bulkd.pipeline import _units

    cells = [("x" * (5000 if i % 7 == 0 else 10)) for i in range(100)]
    table = pa.record_batch({"a": pa.array(cells), "b": pa.array(range(100))})
    lines = pa.array(range(1, 101), pa.int64())

    def cut(points: list[int]) -> list[list[int]]:
        bounds = [0, *points, 100]
        batches = [
            SourceBatch(table.slice(lo, hi - lo), lines.slice(lo, hi - lo), (), 0)
            for lo, hi in itertools.pairwise(bounds)
        ]
        return [u.lines.to_pylist() for u in _units(iter(batches), 16, 6000)]

    reference = cut([])
    assert cut([3, 50, 51, 99]) == reference
    assert cut(list(range(1, 100))) == reference
    assert sum(len(u) for u in reference) == 100
    assert max(len(u) for u in reference) <= 16
    for unit in reference[:-1]:
        size = sum(len(cells[i - 1]) + 8 for i in unit)
        assert len(unit) == 16 or size >= 6000, "a unit ends early only at the byte bound"
        assert size - (len(cells[unit[-1] - 1]) + 8) < 6000, "and ends at the row that reached it"


def _same_rows_as_csv_and_parquet(tmp_path: Path, columns: dict[str, list[str]]) -> tuple[Path, Path]:
    """The same cells as a CSV file and as a Parquet file of dictionary-encoded string columns (as
    pandas categoricals are written) in several row groups."""
    names = list(columns)
    count = len(columns[names[0]])
    csv_path, parquet_path = tmp_path / "rows.csv", tmp_path / "rows.parquet"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        writer.writerows([columns[n][i] for n in names] for i in range(count))
    table = pa.table({n: pa.array(v, pa.string()).dictionary_encode() for n, v in columns.items()})
    pq.write_table(table, parquet_path, row_group_size=1100)
    return csv_path, parquet_path


@pytest.mark.parametrize("record_type", ["customer_record", "purchase"])
def test_dictionary_encoded_parquet_converts_as_csv_does(
    tmp_path: Path, record_type: str, reject_lines: Callable[[FileResult], list[dict[str, Any]]]
) -> None:
    """Chunks and rejects of dictionary-encoded Parquet columns are those of the same cells read
    from CSV: empty cells absent, emails trimmed and lower-cased, the same reasons and lines."""
    rng = random.Random(5)
    rows = 2600
    emails = ["a@x.co", " B@X.Co ", "c@x.co", "not-an-email", "", 'q"uote@x.co', "é@x.co"]
    pick = lambda options: [rng.choice(options) for _ in range(rows)]  # noqa: E731
    if record_type == "customer_record":
        columns = {
            "link.email": pick(emails),
            "first_name": [f"N{i}" for i in range(rows)],
            "gender": pick(["female", "male", "", "Other"]),
            "date_of_birth": pick(["1990-02-28", "1990-02-30", "", "1975-12-01"]),
            "employee_flag": pick(["true", "FALSE", "maybe", "", "1"]),
            "custom_fields.loyalty_tier": pick(["gold", "silver", ""]),
        }
    else:
        ids = [f"P{rng.randint(0, 1300):04d}" for _ in range(rows)]
        columns = {
            "purchase_id": ids,
            "link.email": pick(["a@x.co", " B@X.Co "] * 60 + emails),
            "action_at": pick(["2024-05-01", "2024-05-01T10:00:00"] * 60 + ["2024-13-01"]),
            "type": pick(["physical", "online"]),
            "products.product_reference.id": pick(["sku1", "sku2", "sku3"]),
            "products.product_reference.id_type": pick(["sku"]),
            "products.price_paid": pick(["1.50", "2"] * 60 + ["x"]),
            "products.quantity": pick(["1", "2", ""] * 40 + ["many"]),
        }
    csv_path, parquet_path = _same_rows_as_csv_and_parquet(tmp_path, columns)
    outputs = []
    for path in (csv_path, parquet_path):
        settings = ConvertSettings(  # units of 700 rows span the reader's batches of 500
            record_type=load_record_type(record_type),
            dataset_id="ds1",
            timestamp="1700000000",
            read=ReadOptions(batch_rows=500),
            work_rows=700,
        )
        out = tmp_path / path.suffix.lstrip(".")
        out.mkdir()
        result = convert_file(path, out, settings)
        assert result.ok, result.error
        assert result.rows == rows == result.rows_delivered + result.rejected
        text = b"".join(gzip.decompress(chunk.path.read_bytes()) for chunk in result.chunks)
        outputs.append((text, reject_lines(result)))
    (csv_text, csv_rejects), (parquet_text, parquet_rejects) = outputs
    assert parquet_text == csv_text
    assert len(csv_text.splitlines()) > 50  # both kinds of row
    assert len(csv_rejects) > 50

    # CSV lines count the header; Parquet lines are row numbers
    def shift(message: str) -> str:
        return re.sub(r"\(line (\d+)\)", lambda m: f"(line {int(m.group(1)) - 1})", message)

    shifted = [{**r, "input": "", "line": r["line"] - 1, "message": shift(r["message"])} for r in csv_rejects]
    assert [{**r, "input": ""} for r in parquet_rejects] == shifted
