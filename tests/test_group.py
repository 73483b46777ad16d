"""Order lines become one purchase per purchase_id, whatever the row order and partitioning."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

import pytest

import bulkd.pipeline
from bulkd.chunk import ChunkLimits
from bulkd.pipeline import ConvertSettings, FileResult, convert_file
from bulkd.schemas import load_record_type

Convert = Callable[..., FileResult]
Records = Callable[[FileResult], list[dict[str, object]]]

_HEADER = [
    "purchase_id",
    "link.email",
    "action_at",
    "type",
    "store.name",
    "store.type",
    "products.product_reference.id",
    "products.product_reference.id_type",
    "products.quantity",
    "products.price_paid",
]


def _order_lines(tmp_path: Path, purchases: int, seed: int = 7) -> tuple[Path, dict[str, list[str]]]:
    """A CSV with 1-5 lines per purchase, lines of all purchases shuffled together."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    expected: dict[str, list[str]] = {}
    for p in range(purchases):
        pid = f"P{p:04d}"
        skus = [f"{pid}-sku{i}" for i in range(rng.randint(1, 5))]
        expected[pid] = skus
        for sku in skus:
            rows.append(
                [
                    *(pid, f"c{p}@example.com", "2024-05-01 10:00", "physical", "Main St", "outlet"),
                    *(sku, "sku", str(rng.randint(1, 4)), f"{rng.randint(0, 9999) / 100}"),
                ]
            )
    rng.shuffle(rows)
    path = tmp_path / "lines.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_HEADER)
        writer.writerows(rows)
    return path, expected


def _by_purchase(records: list[dict[str, object]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for record in records:
        products = record["products"]
        assert isinstance(products, list)
        out[str(record["purchase_id"])] = sorted(p["product_reference"]["id"] for p in products)
    return out


def _check_grouped(
    result: FileResult, expected: dict[str, list[str]], records: list[dict[str, object]]
) -> None:
    assert result.ok, result.error
    assert result.rejected == 0
    assert result.rows == sum(len(v) for v in expected.values())
    assert result.rows == result.rows_delivered + result.rejected
    assert result.records == len(expected) == len(records)
    assert _by_purchase(records) == {k: sorted(v) for k, v in expected.items()}
    first = records[0]
    assert first["store"] == {"name": "Main St", "type": "outlet"}
    assert first["action_at"] == "2024-05-01T10:00:00Z"


def test_scattered_lines_group_in_memory(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    path, expected = _order_lines(tmp_path, 60)
    result = convert(path, "purchase")
    _check_grouped(result, expected, chunk_records(result))


def test_scattered_lines_group_through_disk_partitions(
    tmp_path: Path, convert: Convert, chunk_records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, expected = _order_lines(tmp_path, 60)
    monkeypatch.setattr(bulkd.pipeline, "_PARTITION_INPUT_BYTES", 512)
    assert path.stat().st_size > 512 * 8  # many partitions
    result = convert(path, "purchase")
    _check_grouped(result, expected, chunk_records(result))
    out = tmp_path / "out"
    assert not [p for p in out.rglob("*") if "partition" in p.name or p.name.startswith("bulkd-groups-")]


def test_purchase_chunks_do_not_depend_on_threads_or_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grouped records are numbered into units in order, so each unit's codec (level 3 mixes two)
    and the chunk bytes are the same on any number of threads, across spill partitions."""
    path, expected = _order_lines(tmp_path, 400)
    monkeypatch.setattr(bulkd.pipeline, "_PARTITION_INPUT_BYTES", path.stat().st_size // 3)
    digests = []
    for workers in (0, 1, 3):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        settings = ConvertSettings(
            record_type=load_record_type("purchase"),
            dataset_id="ds1",
            timestamp="1",
            limits=ChunkLimits(max_records=150, gzip_level=3),
            workers=workers,
            work_rows=32,
        )
        result = convert_file(path, out, settings)
        assert result.records == len(expected)
        digests.append([c.sha256_hex for c in result.chunks])
    assert len(digests[0]) == 3
    assert digests[0] == digests[1] == digests[2]


def test_one_bad_line_rejects_its_whole_purchase(
    tmp_path: Path,
    convert: Convert,
    chunk_records: Records,
    reject_lines: Callable[[FileResult], list[dict[str, object]]],
) -> None:
    path = tmp_path / "lines.csv"
    path.write_text(
        ",".join(_HEADER) + "\n"
        "A,a@x.co,2024-05-01,physical,S,outlet,s1,sku,1,1.00\n"
        "B,b@x.co,2024-05-01,physical,S,outlet,s2,sku,1,1.00\n"
        "A,a@x.co,2024-05-01,physical,S,outlet,s3,sku,many,1.00\n"
        "B,b@x.co,2024-05-01,physical,S,outlet,s4,sku,2,2.00\n"
        "A,a@x.co,2024-05-01,physical,S,outlet,s5,sku,1,1.00\n"
        ",c@x.co,2024-05-01,physical,S,outlet,s6,sku,1,1.00\n"
        "C,c@x.co,2024-05-01,physical,S,outlet,s7,sku,0,1.00\n"
    )
    result = convert(path, "purchase")
    assert result.ok, result.error
    assert _by_purchase(chunk_records(result)) == {"B": ["s2", "s4"]}
    rejects = {r["line"]: r for r in reject_lines(result)}
    assert sorted(rejects) == [2, 4, 6, 7, 8]
    assert rejects[4]["field"] == "products.quantity"
    assert rejects[2]["rule"] == "group_member_rejected"
    assert rejects[6]["rule"] == "group_member_rejected"
    assert rejects[7]["rule"] == "missing_group_key"
    assert rejects[8]["rule"] == "minimum"  # quantity 0: refused by the schema, for the whole group
    assert result.rows == 7
    assert result.rows == result.rows_delivered + result.rejected


def test_key_hashes_read_large_strings_as_they_read_strings() -> None:
    import pyarrow as pa

    from bulkd.group import _key_hash

    keys = pa.array(["P1", "", "P22", None, "abc"] * 3).slice(2)
    assert _key_hash(keys).tolist() == _key_hash(keys.cast(pa.large_string())).tolist()
    assert len(set(_key_hash(pa.array(["P1", "P2", "1P"])).tolist())) == 3
