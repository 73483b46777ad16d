"""Chunks: bounded, safely named, byte-identical across runs, and listed truthfully in the manifest."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import itertools
import re
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bulkd.chunk import Block, ChunkInfo, ChunkLimits, ChunkNaming, ChunkWriter, codec_for, codec_name
from bulkd.cli import main
from bulkd.encode import EncodedRows
from bulkd.errors import ConfigError
from bulkd.pipeline import ConvertSettings, FileResult, convert_file
from bulkd.read import ReadOptions
from bulkd.schemas import load_record_type

Convert = Callable[..., FileResult]
Records = Callable[[FileResult], list[dict[str, object]]]
_NAME = re.compile(r"^[A-Za-z0-9_-]+\.ndjson\.gz$")


def _customers(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "customers.csv"
    lines = ["link.customer_id,first_name,custom_fields.note"]
    lines += [f"c{i},Name{i},{'x' * (i % 37)}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_record_limit(tmp_path: Path, convert: Convert, chunk_records: Records) -> None:
    result = convert(_customers(tmp_path, 25), "customer_record", limits=ChunkLimits(max_records=10))
    assert [c.records for c in result.chunks] == [10, 10, 5]
    assert [r["link"] for r in chunk_records(result)] == [{"customer_id": f"c{i}"} for i in range(25)]


def test_byte_limit(tmp_path: Path, convert: Convert) -> None:
    result = convert(_customers(tmp_path, 300), "customer_record", limits=ChunkLimits(max_ndjson_bytes=2048))
    assert len(result.chunks) > 3
    assert sum(c.records for c in result.chunks) == 300
    for chunk in result.chunks:
        raw = gzip.decompress(chunk.path.read_bytes())
        assert len(raw) <= 2048
        assert raw.endswith(b"\n")


def test_names_are_safe_and_ordered(tmp_path: Path, convert: Convert) -> None:
    result = convert(_customers(tmp_path, 25), "customer_record", limits=ChunkLimits(max_records=10))
    names = [c.path.name for c in result.chunks]
    assert names == [f"ds1_customer_record_1700000000_{i:05d}.ndjson.gz" for i in (1, 2, 3)]
    assert all(_NAME.match(n) for n in names)
    assert ChunkNaming("ds", "purchase", "1", "f0002").filename(3) == "ds_purchase_1_f0002-00003.ndjson.gz"
    with pytest.raises(ConfigError):
        ChunkNaming("ds/../x", "purchase", "1")
    with pytest.raises(ConfigError):
        ChunkNaming("ds", "purchase", "1 2")


def test_same_input_gives_byte_identical_chunks(tmp_path: Path, convert: Convert) -> None:
    src = _customers(tmp_path, 500)
    limits = ChunkLimits(max_records=120)
    first = convert(src, "customer_record", out=tmp_path / "a", limits=limits)
    second = convert(src, "customer_record", out=tmp_path / "b", limits=limits)
    digests = [hashlib.sha256(c.path.read_bytes()).hexdigest() for c in first.chunks]
    assert digests == [hashlib.sha256(c.path.read_bytes()).hexdigest() for c in second.chunks]
    assert digests == [c.sha256_hex for c in first.chunks]
    assert len(digests) == 5


def test_manifest_matches_files_and_no_temp_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _customers(tmp_path, 50)
    out = tmp_path / "out"
    code = main(
        [
            *("convert", str(src), "--record-type", "customer_record"),
            *("--dataset-id", "ds9", "--out", str(out), "--max-records", "20"),
        ]
    )
    assert code == 0
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    (entry,) = manifest["inputs"]
    assert entry["records"] == 50
    assert manifest["dataset_id"] == "ds9"
    assert manifest["record_type"] == "customer_record"
    chunks = entry["chunks"]
    assert [c["records"] for c in chunks] == [20, 20, 10]
    for chunk in chunks:
        data = Path(chunk["path"]).read_bytes()
        assert chunk["bytes"] == len(data)
        assert chunk["md5"] == hashlib.md5(data).hexdigest()
        assert chunk["sha256"] == hashlib.sha256(data).hexdigest()
        assert _NAME.match(chunk["filename"])
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == sorted([c["filename"] for c in chunks] + ["manifest.json"])
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigError):
        ChunkLimits(max_records=0)
    with pytest.raises(ConfigError):
        ChunkLimits(max_ndjson_bytes=10)
    with pytest.raises(ConfigError):
        ChunkLimits(gzip_level=9)


def test_record_larger_than_the_byte_limit_gets_its_own_chunk(
    tmp_path: Path, convert: Convert, chunk_records: Records
) -> None:
    path = tmp_path / "big.csv"
    rows = [f"c{i},{'y' * 1500 if i == 5 else 'n'}" for i in range(12)]
    path.write_text("link.customer_id,first_name\n" + "\n".join(rows) + "\n")
    result = convert(path, "customer_record", limits=ChunkLimits(max_ndjson_bytes=1024))
    sizes = [len(gzip.decompress(c.path.read_bytes())) for c in result.chunks]
    big = [s for s in sizes if s > 1024]
    assert len(big) == 1
    assert result.chunks[sizes.index(big[0])].records == 1
    assert len(chunk_records(result)) == 12


def _settings(workers: int, limits: ChunkLimits) -> ConvertSettings:
    return ConvertSettings(
        record_type=load_record_type("customer_record"),
        dataset_id="ds1",
        timestamp="1700000000",
        limits=limits,
        workers=workers,
        work_rows=700,
    )


def _mixed_customers(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "mixed.csv"
    lines = ["link.email,first_name,date_of_birth,employee_flag"]
    for i in range(n):
        dob = "1990-02-31" if i % 97 == 0 else f"19{50 + i % 40}-0{1 + i % 9}-1{i % 9}"
        flag = "maybe" if i % 101 == 0 else ("yes", "no", "")[i % 3]
        lines.append(f'u{i}@example.com,"Name, {i} ""q""",{dob},{flag}')
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ndjson_chunk_bytes_do_not_depend_on_threads(tmp_path: Path) -> None:
    """NDJSON batches are deflated on the pool while the next batch is mapped: same bytes, same order."""
    src = tmp_path / "docs.ndjson"
    lines = []
    for i in range(3000):
        email = f"  U{i}@Example.com " if i % 7 == 0 else f"u{i}@example.com"
        doc: dict[str, object] = {"link": {"email": email}, "first_name": f"N{i}"}
        if i % 101 == 0:
            doc["date_of_birth"] = "1990-02-31"
        lines.append(orjson.dumps(doc).decode() if i % 211 else "{not json")
    src.write_text("\n".join(lines) + "\n")
    limits = ChunkLimits(max_records=1100)
    results = []
    for workers in (0, 1, 3):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        settings = dataclasses.replace(_settings(workers, limits), read=ReadOptions(batch_rows=250))
        results.append(convert_file(src, out, settings))
    assert len({tuple(c.sha256_hex for c in r.chunks) for r in results}) == 1
    first = results[0]
    assert first.rows == 3000 == first.rows_delivered + first.rejected
    assert first.rejected == len([i for i in range(3000) if i % 101 == 0 or i % 211 == 0])
    records = [
        orjson.loads(line) for c in first.chunks for line in gzip.decompress(c.path.read_bytes()).splitlines()
    ]
    assert [r["first_name"] for r in records] == [f"N{i}" for i in range(3000) if i % 101 and i % 211]
    assert records[0]["link"]["email"] == "u1@example.com"  # line 1 (line 0 is rejected)
    assert records[6]["link"]["email"] == "u7@example.com"  # trimmed and lower-cased


@pytest.mark.parametrize("level", [2, 3])
def test_chunk_bytes_do_not_depend_on_threads(tmp_path: Path, level: int) -> None:
    """Units deflated on worker threads, or pieces deflated at a chunk split, give the same bytes."""
    src = _mixed_customers(tmp_path, 5000)
    limits = ChunkLimits(max_records=1700, gzip_level=level)
    results = []
    for workers in (0, 1, 3):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        results.append(convert_file(src, out, _settings(workers, limits)))
    digests = [[c.sha256_hex for c in r.chunks] for r in results]
    assert digests[0] == digests[1] == digests[2]
    first = results[0]
    assert first.rows == 5000 == first.rows_delivered + first.rejected
    assert first.rejected > 0
    assert [c.records for c in first.chunks][:2] == [1700, 1700]
    for chunk in first.chunks:
        data = chunk.path.read_bytes()
        # one gzip member (a reader that stops after the first member still sees every record)
        single = zlib.decompressobj(31)
        raw = single.decompress(data)
        assert single.eof
        assert not single.unused_data
        assert raw.count(b"\n") == chunk.records
        assert raw == gzip.decompress(data)


def test_chunk_bytes_do_not_depend_on_the_reader_block_size(tmp_path: Path) -> None:
    """Units are regrouped to ``work_rows`` rows, however the reader cut its batches."""
    src = _mixed_customers(tmp_path, 5000)
    limits = ChunkLimits(max_records=1700)
    digests = []
    for block in (300, 4096, 1 << 20):
        out = tmp_path / f"b{block}"
        out.mkdir()
        settings = dataclasses.replace(_settings(2, limits), read=ReadOptions(block_size=block))
        result = convert_file(src, out, settings)
        assert result.rows == 5000 == result.rows_delivered + result.rejected
        digests.append([c.sha256_hex for c in result.chunks])
    assert digests[0] == digests[1] == digests[2]


def test_cancelling_progress_leaves_no_thread_and_no_chunk(tmp_path: Path) -> None:
    src = _mixed_customers(tmp_path, 5000)
    out = tmp_path / "out"
    out.mkdir()
    before = {t.ident for t in threading.enumerate()}

    def progress(_rows: int, _bytes: int) -> None:
        raise KeyboardInterrupt  # units of the first batch are in flight on the workers

    with pytest.raises(KeyboardInterrupt):
        convert_file(src, out, _settings(2, ChunkLimits(max_records=500)), progress=progress)
    assert {t.ident for t in threading.enumerate()} <= before
    assert list(out.iterdir()) == []


def test_row_sizes_from_offsets_match_the_length_kernel() -> None:
    from bulkd.pipeline import _row_bytes

    text = pa.array(["ab", None, "", "cdef", "g"] * 3, pa.string())
    parent = pa.StructArray.from_arrays([text], names=["t"], mask=pa.array([False, True, False] * 5))
    columns = {
        "s": text,
        "pushed": parent.flatten()[0],  # null slots that keep their bytes
        "large": text.cast(pa.large_string()),
        "b": text.cast(pa.binary()),
        "large_b": text.cast(pa.large_binary()),
        "n": pa.array(range(15)),
    }
    data = pa.RecordBatch.from_pydict(columns).slice(2, 11)
    expected = np.full(data.num_rows, 8, dtype=np.int64)
    for column in data.columns[:5]:  # every slot's length, a null's too (without the validity)
        _, offsets, values = column.buffers()
        slots = pa.Array.from_buffers(column.type, len(column), [None, offsets, values], offset=column.offset)
        expected += pc.binary_length(slots).to_numpy(zero_copy_only=False)
    assert _row_bytes(data).tolist() == expected.tolist()
    assert sum(expected) > sum(pc.binary_length(c).fill_null(0).to_numpy() for c in data.columns[:5]).sum()


@pytest.mark.parametrize("nulls", [False, True])
def test_a_unit_takes_the_rows_that_sizes_per_row_would(nulls: bool) -> None:
    from bulkd.pipeline import _row_bytes, _take

    words = pa.array(["ab", "", "cdef", "g", "hij"] * 4, pa.string())
    if nulls:  # null slots that keep their bytes, as a flattened struct's children do
        mask = pa.array([i % 7 == 3 for i in range(20)])
        words = pa.StructArray.from_arrays([words], names=["t"], mask=mask).flatten()[0]
    columns = {"w": words, "b": words.cast(pa.binary()), "n": pa.array(range(20))}
    data = pa.RecordBatch.from_pydict(columns).slice(3)
    sizes = _row_bytes(data)
    for room in range(1, int(sizes.sum()) + 20):
        cum = np.cumsum(sizes)
        take = min(len(cum), int(np.searchsorted(cum, room, side="left")) + 1)
        assert _take(data, room) == (take, int(cum[take - 1])), room


@pytest.mark.parametrize("level", [2, 3])
def test_a_split_block_is_written_as_blocks_of_its_pieces_would_be(tmp_path: Path, level: int) -> None:
    """A block that chunk boundaries split is inflated and each piece deflated with the block's
    own codec: the chunks are those that blocks cut at the boundaries beforehand would give."""
    texts = [orjson.dumps({"n": i, "pad": "x" * (i % 37)}) + b"\n" for i in range(900)]
    data = b"".join(texts)
    offsets = np.cumsum([0, *(len(t) for t in texts)]).astype(np.int64)
    units = [(0, 250), (250, 260), (260, 900)]
    limits = ChunkLimits(max_records=97, max_ndjson_bytes=3000, gzip_level=level)

    def rows(lo: int, hi: int) -> EncodedRows:
        return EncodedRows(pa.py_buffer(data), offsets[lo : hi + 1], hi - lo)

    def written(name: str, pieces: list[tuple[int, int, int]]) -> list[ChunkInfo]:
        out = tmp_path / name
        out.mkdir()
        writer = ChunkWriter(out, ChunkNaming("ds", "customer_record", "1"), limits)
        for unit, lo, hi in pieces:
            writer.write(Block.make(rows(lo, hi), codec_for(level, unit)))
        return writer.finish()

    whole = written("whole", [(unit, lo, hi) for unit, (lo, hi) in enumerate(units)])
    assert len(whole) > 10
    assert b"".join(gzip.decompress(c.path.read_bytes()) for c in whole) == data
    bounds = set(np.cumsum([c.records for c in whole]).tolist())
    cut = []
    for unit, (lo, hi) in enumerate(units):
        edges = [lo, *sorted(b for b in bounds if lo < b < hi), hi]
        cut += [(unit, a, b) for a, b in itertools.pairwise(edges)]
    assert len(cut) > len(units)
    assert [c.sha256_hex for c in written("cut", cut)] == [c.sha256_hex for c in whole]


def test_level_3_mixes_a_fast_and_a_dense_codec_by_place() -> None:
    """Three blocks in every eight are dense, spread out, so any stretch of a file gets the mix;
    the lower levels are one codec throughout."""
    codecs = [codec_for(3, block) for block in range(64)]
    assert {str(c) for c in codecs} == {"ISA-L level 2", "zlib-ng level 5"}
    for start in range(0, 57):
        window = codecs[start : start + 8]
        assert sum(c.library == "zlib-ng" for c in window) == 3
    assert not any(a.library == b.library == "zlib-ng" for a, b in itertools.pairwise(codecs))
    assert {str(codec_for(level, block)) for level in (0, 1, 2) for block in range(9)} == {
        "ISA-L level 0",
        "ISA-L level 1",
        "ISA-L level 2",
    }
    assert "zlib-ng level 5" in codec_name(3)


def test_both_codecs_of_the_mix_give_raw_deflate_and_the_dense_one_is_smaller() -> None:
    text = b"".join(
        orjson.dumps({"n": i, "email": f"u{i * 7919 % 10007}@example.com"}) + b"\n" for i in range(40_000)
    )
    fast, dense = len(codec_for(3, 1).deflate(text)), len(codec_for(3, 0).deflate(text))
    assert dense < fast
    for codec in (codec_for(3, 0), codec_for(3, 1)):
        assert zlib.decompressobj(-15).decompress(codec.deflate(text)) == text
