"""The reader stage against real, awkward files written to ``tmp_path``.

Every read goes through :func:`read_all`, which also checks the invariants every source must keep:
rows are accounted for (parsed + rejected), line numbers rise, ``bytes_read`` never goes back,
and no reject message carries a cell value.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkd.errors import InputError
from bulkd.model import NDJSON_COLUMN, Reject, RejectRule
from bulkd.read import ReadOptions, SourceFormat, open_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EXAMPLE_CSV = SHARED / "lexer-schemas" / "examples" / "csv_to_ndjson" / "example.csv"
SECRET = "s3cr3t-value"
"""A cell value that must never appear in a reject message."""


@dataclass
class Result:
    columns: tuple[str, ...]
    rows: list[dict[str, object]]
    lines: list[int]
    rejects: list[Reject]
    batches: int

    @property
    def reject_view(self) -> list[tuple[int, str | None, str]]:
        return [(r.line, r.field, r.rule) for r in self.rejects]


def read_all(path: Path, **options: object) -> Result:
    """Read ``path`` to the end, checking the per-batch invariants on the way."""
    rows: list[dict[str, object]] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    last_bytes, n_batches = 0, 0
    with open_source(path, ReadOptions(**options)) as source:  # type: ignore[arg-type]
        for batch in source.batches():
            n_batches += 1
            assert batch.rows == batch.data.num_rows + len(batch.rejects)
            assert len(batch.lines) == batch.data.num_rows
            assert batch.lines.type == pa.int64()
            assert tuple(batch.data.schema.names) == source.columns
            assert batch.bytes_read >= last_bytes
            last_bytes = batch.bytes_read
            rows.extend(batch.data.to_pylist())
            lines.extend(batch.lines.to_pylist())
            rejects.extend(batch.rejects)
        columns = source.columns
        stream = getattr(source, "_stream", None)  # a CSV reader's paced reads always had their turn
        assert stream is None or stream.reads_out_of_turn == 0
    assert lines == sorted(lines)
    assert len(set(lines)) == len(lines)
    for r in rejects:
        assert r.input == str(path)
        assert SECRET not in r.message
        assert isinstance(r.rule, str)
    return Result(columns, rows, lines, rejects, n_batches)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- CSV: encodings and line endings ---------------------------------------------------------


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.csv", b'\xef\xbb\xbfid,name\r\n1,Ann\r\n2,"B\r\nob"\r\n3,Cy\r\n')
    result = read_all(path)
    assert result.columns == ("id", "name")
    assert result.rows == [
        {"id": "1", "name": "Ann"},
        {"id": "2", "name": "B\r\nob"},
        {"id": "3", "name": "Cy"},
    ]
    assert result.lines == [2, 3, 5]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_with_bom(tmp_path: Path, encoding: str) -> None:
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding)
    bom = bom or {"utf-32-le": codecs.BOM_UTF32_LE, "utf-32-be": codecs.BOM_UTF32_BE}[encoding]
    text = 'email,name\r\na@x.io,"Zoë\r\nSmith"\r\nb@x.io,日本\r\n'
    path = write(tmp_path, "wide.csv", bom + text.encode(encoding))
    result = read_all(path)
    assert result.columns == ("email", "name")
    assert result.rows == [{"email": "a@x.io", "name": "Zoë\r\nSmith"}, {"email": "b@x.io", "name": "日本"}]
    assert result.lines == [2, 4]


def test_latin1_with_explicit_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.csv", "név,város\nÉva,Győr\n".encode("latin-1", "replace"))
    result = read_all(path, encoding="latin-1")
    assert result.columns == ("név", "város")
    assert result.rows == [{"név": "Éva", "város": "Gy?r"}]


def test_latin1_without_encoding_rejects_rows_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.csv", b"id,city\n1,M\xfcnchen\n2,Berlin\n")
    result = read_all(path)
    assert result.rows == [{"id": "2", "city": "Berlin"}]
    assert result.reject_view == [(2, "city", RejectRule.INVALID_UTF8)]


def test_undecodable_utf16_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "bad16.csv", codecs.BOM_UTF16_LE + "a,b\n1,2\n".encode("utf-16-le") + b"\x00\xd8")
    with pytest.raises(InputError, match="cannot be decoded"):
        read_all(path)


def test_unknown_encoding_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", b"a\n1\n")
    with pytest.raises(InputError, match="unknown encoding"):
        read_all(path, encoding="no-such-codec")


def test_header_in_utf16_without_bom_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "nobom.csv", "a,b\n1,2\n".encode("utf-16-le"))
    with pytest.raises(InputError, match="NUL"):
        read_all(path)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_endings(tmp_path: Path, newline: str) -> None:
    text = newline.join(["a,b", "1,2", '"x', 'y",3', "4,5"]) + newline
    result = read_all(write(tmp_path, "le.csv", text.encode()))
    assert [r["a"] for r in result.rows] == ["1", f"x{newline}y", "4"]
    assert result.lines == [2, 3, 5]


def test_tsv_by_extension(tmp_path: Path) -> None:
    result = read_all(write(tmp_path, "x.tab", b"a\tb\n1,5\t2\n"))
    assert result.rows == [{"a": "1,5", "b": "2"}]


def test_explicit_delimiter_and_format(tmp_path: Path) -> None:
    result = read_all(
        write(tmp_path, "x.txt", b"a;b\n1;'2;3'\n"), format=SourceFormat.CSV, delimiter=";", quote_char="'"
    )
    assert result.rows == [{"a": "1", "b": "2;3"}]


# --- CSV: batch boundaries and line numbers --------------------------------------------------


def _random_csv(
    seed: int, rows: int, empties: bool = False
) -> tuple[bytes, list[list[str]], list[int], list[int]]:
    """A CSV of short awkward cells: its bytes, the rows as written, the line each row starts on,
    and (with ``empties``) the lines of rows whose cells are all empty, among blank lines."""
    rng = random.Random(seed)
    pieces = ["a", "b", "", ",", '"', "\n", "\r\n", "é", " "]
    out = io.StringIO(newline="")
    terminator = rng.choice(["\n", "\r\n"])
    writer = csv.writer(out, lineterminator=terminator)
    writer.writerow(["h1", "h2"])
    expected, starts, empty_rows = [], [], []
    line = 2
    for _ in range(rows):
        while empties and rng.random() < 0.1:
            out.write(terminator)  # a blank line: not a row, but it moves the line numbers
            line += 1
        row = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 3))) for _ in range(2)]
        if row == ["", ""] and not empties:
            row = ["x", ""]
        if row == ["", ""]:
            out.write(rng.choice([",", '"",""', ',""']) + terminator)
            empty_rows.append(line)
        else:
            writer.writerow(row)
            expected.append(row)
            starts.append(line)
        line += sum(cell.count("\n") for cell in row) + 1
    return out.getvalue().encode(), expected, starts, empty_rows


@pytest.mark.parametrize("block_size", [24, 29, 33, 48, 61, 97, 128, 1 << 16])
def test_quoted_newlines_and_quotes_at_every_block_boundary(tmp_path: Path, block_size: int) -> None:
    data, expected, starts, _ = _random_csv(block_size, 400)
    result = read_all(write(tmp_path, "rand.csv", data), block_size=block_size)
    assert [[r["h1"], r["h2"]] for r in result.rows] == expected
    assert result.lines == starts
    assert result.rejects == []
    if block_size < 100:
        assert result.batches > 10


def test_the_csv_reader_reads_only_a_few_blocks_ahead_of_its_parser(tmp_path: Path) -> None:
    """pyarrow's reader would queue up to 32 blocks on its own thread while the batches wait."""
    path = write(
        tmp_path, "wide.csv", b"a,b\n" + b"".join(b"%d,%s\n" % (i, b"x" * 90) for i in range(40_000))
    )
    block = 1 << 16
    with open_source(path, ReadOptions(block_size=block)) as source:
        ahead = []
        parsed = 4  # the header
        for batch in source.batches():
            time.sleep(0.01)  # time enough for an unpaced reader to run far ahead
            parsed += sum(len(f"{line},{'x' * 90}\n") for line in batch.data.column("a").to_pylist())
            ahead.append(batch.bytes_read - parsed)
    assert len(ahead) > 40
    assert max(ahead) <= 10 * block


def test_closing_a_csv_source_early_lets_its_waiting_reader_go(tmp_path: Path) -> None:
    """The reader thread waits for a turn after a few blocks; closing ends the wait, not a timeout."""
    from bulkd.read._stream import PACE_WAIT_SECONDS

    path = write(
        tmp_path, "long.csv", b"a,b\n" + b"".join(b"%d,%s\n" % (i, b"y" * 90) for i in range(40_000))
    )
    with open_source(path, ReadOptions(block_size=1 << 16)) as source:
        first = next(iter(source.batches()))
        stream = source._stream  # type: ignore[attr-defined]
        time.sleep(0.05)  # the reader thread is now waiting for its turn
    time.sleep(PACE_WAIT_SECONDS + 0.2)
    assert first.data.num_rows > 0
    assert stream.reads_out_of_turn == 0


@pytest.mark.parametrize("block_size", [32, 45, 64, 1 << 20])
def test_ragged_rows_keep_line_numbers_after_multiline_fields(tmp_path: Path, block_size: int) -> None:
    data = b'id,note\n1,"two\nlines"\n2,x,EXTRA\n3,"a\r\nb\r\nc"\n4\n\n5,ok\n6,"q""uote\n"\n7,a,b,c\n8,end'
    result = read_all(write(tmp_path, "ragged.csv", data), block_size=block_size)
    assert [r["id"] for r in result.rows] == ["1", "3", "5", "6", "8"]
    assert result.lines == [2, 5, 10, 11, 14]
    assert result.reject_view == [
        (4, None, RejectRule.RAGGED_ROW),
        (8, None, RejectRule.RAGGED_ROW),
        (13, None, RejectRule.RAGGED_ROW),
    ]
    assert "3 fields; the header has 2" in result.rejects[0].message


def test_blank_lines_are_skipped_and_rows_of_empty_cells_are_rejects(tmp_path: Path) -> None:
    data = b'a,b\n\n1,2\n,\n\r\n3,4\n"",""\n,""\n5,6\n\n\n'
    result = read_all(write(tmp_path, "blank.csv", data))
    assert result.rows == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}, {"a": "5", "b": "6"}]
    assert result.lines == [3, 6, 9]
    assert result.reject_view == [
        (4, None, RejectRule.EMPTY_ROW),
        (7, None, RejectRule.EMPTY_ROW),
        (8, None, RejectRule.EMPTY_ROW),
    ]
    assert {r.message for r in result.rejects} == {"every cell is empty"}


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("end", ["", "newline", "blank lines"])
def test_empty_rows_among_blank_lines_and_multiline_fields(tmp_path: Path, newline: str, end: str) -> None:
    body = ["a,b", "", "1,2", ",", '"x', "", 'y",3', "", '"",""', "4,5", ","]
    tail = {"": [], "newline": [""], "blank lines": ["", "", ""]}[end]
    result = read_all(write(tmp_path, "mixed.csv", newline.join(body + tail).encode()))
    assert [r["a"] for r in result.rows] == ["1", f"x{newline}{newline}y", "4"]
    assert result.lines == [3, 5, 10]
    assert result.reject_view == [(n, None, RejectRule.EMPTY_ROW) for n in (4, 9, 11)]


def test_one_column_file_blank_line_is_skipped_quoted_empty_is_a_reject(tmp_path: Path) -> None:
    result = read_all(write(tmp_path, "one.csv", b'a\n1\n\n""\n2\n\n'))
    assert result.rows == [{"a": "1"}, {"a": "2"}]
    assert result.lines == [2, 5]
    assert result.reject_view == [(4, None, RejectRule.EMPTY_ROW)]


@pytest.mark.parametrize("block_size", [24, 29, 33, 48, 61, 97, 128, 1 << 16])
def test_empty_rows_and_blank_lines_at_every_block_boundary(tmp_path: Path, block_size: int) -> None:
    data, expected, starts, empty_rows = _random_csv(block_size + 1, 400, empties=True)
    assert len(empty_rows) > 10
    result = read_all(write(tmp_path, "rand.csv", data), block_size=block_size)
    assert [[r["h1"], r["h2"]] for r in result.rows] == expected
    assert result.lines == starts
    assert result.reject_view == [(n, None, RejectRule.EMPTY_ROW) for n in empty_rows]


def test_many_trailing_blank_lines_are_not_rows(tmp_path: Path) -> None:
    result = read_all(write(tmp_path, "tail.csv", b"a,b\n1,2\n" + b"\r\n" * 100_000))
    assert result.rows == [{"a": "1", "b": "2"}]
    assert result.rejects == []


def test_empty_rows_in_compressed_and_utf16_files(tmp_path: Path) -> None:
    text = "a,b\r\n\r\n,\r\n1,é\r\n\r\n"
    gz = read_all(write(tmp_path, "e.csv.gz", gzip.compress(text.encode(), mtime=0)))
    wide = read_all(write(tmp_path, "e16.csv", codecs.BOM_UTF16_LE + text.encode("utf-16-le")))
    for result in (gz, wide):
        assert result.rows == [{"a": "1", "b": "é"}]
        assert result.lines == [4]
        assert result.reject_view == [(3, None, RejectRule.EMPTY_ROW)]


def test_multiline_quoted_header(tmp_path: Path) -> None:
    result = read_all(write(tmp_path, "h.csv", b'"first\nname",b\n1,2\n'))
    assert result.columns == ("first\nname", "b")
    assert result.lines == [3]


def test_leading_blank_line_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="blank") as info:
        read_all(write(tmp_path, "lead.csv", b"\na,b\n1,2\n"))
    assert info.value.line == 1


# --- CSV: headers, empty files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"a,b,a", "duplicate column names.*a"),
        (b"a,,c", "blank column name"),
        (b"a, ,c", "blank column name"),
    ],
)
def test_bad_headers_are_refused_before_any_batch(tmp_path: Path, header: bytes, match: str) -> None:
    path = write(tmp_path, "h.csv", header + b"\n1,2,3\n")
    with pytest.raises(InputError, match=match) as info:
        open_source(path)
    assert info.value.line == 1
    assert str(path) in str(info.value)


def test_too_many_columns_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "wide.csv", ",".join(f"c{i}" for i in range(11)).encode() + b"\n")
    with pytest.raises(InputError, match="max_columns"):
        open_source(path, ReadOptions(max_columns=10))


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n", b"\xef\xbb\xbf"])
def test_empty_file_has_no_columns_and_no_rows(tmp_path: Path, data: bytes) -> None:
    result = read_all(write(tmp_path, "empty.csv", data))
    assert (result.columns, result.rows, result.rejects) == ((), [], [])


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n", b"\n\n"])
def test_header_only_file(tmp_path: Path, bom: bytes, ending: bytes) -> None:
    result = read_all(write(tmp_path, "h.csv", bom + b"email,name" + ending))
    assert result.columns == ("email", "name")
    assert result.rows == []
    assert result.rejects == []


def test_example_csv_from_the_shared_schemas() -> None:
    if not EXAMPLE_CSV.exists():
        pytest.skip(f"shared example not present at {EXAMPLE_CSV}")
    result = read_all(EXAMPLE_CSV)
    with EXAMPLE_CSV.open(newline="", encoding="utf-8-sig") as f:
        expected = list(csv.DictReader(f))
    assert result.rows == expected
    assert result.rejects == []
    assert result.lines == list(range(2, 2 + len(expected)))


# --- CSV: row rejects -------------------------------------------------------------------------


def test_invalid_utf8_nul_and_oversize_cells_are_row_rejects(tmp_path: Path) -> None:
    data = (
        b"id,email,note\n"
        b"1,ok@x.io,fine\n"
        b"2,bad\xff" + SECRET.encode() + b"@x.io,fine\n"
        b"3,ok@x.io," + SECRET.encode() + b"\x00\n"
        b"4,ok@x.io," + b"x" * 200 + b"\n"
        b'5,"multi\nline",' + b"y" * 200 + b"\n"
        b"6,ok@x.io,fine\n"
    )
    result = read_all(write(tmp_path, "cells.csv", data), max_field_bytes=100)
    assert [r["id"] for r in result.rows] == ["1", "6"]
    assert result.lines == [2, 8]
    assert result.reject_view == [
        (3, "email", RejectRule.INVALID_UTF8),
        (4, "note", RejectRule.NUL_BYTE),
        (5, "note", RejectRule.FIELD_TOO_LARGE),
        (6, "note", RejectRule.FIELD_TOO_LARGE),
    ]


def test_row_over_the_line_cap_is_a_reject(tmp_path: Path) -> None:
    data = b"a,b,c\n1,2,3\n" + b",".join([b"x" * 40] * 3) + b"\n4,5,6\n"
    result = read_all(write(tmp_path, "long.csv", data), max_line_bytes=100)
    assert result.lines == [2, 4]
    assert result.reject_view == [(3, None, RejectRule.LINE_TOO_LARGE)]


def test_record_longer_than_the_block_refuses_the_file(tmp_path: Path) -> None:
    data = b"a,b\n" + b"1,2\n" * 10 + b'3,"' + b"z" * 500 + b'"\n4,5\n'
    with pytest.raises(InputError, match="block size"):
        read_all(write(tmp_path, "huge.csv", data), block_size=64)


def test_late_bad_values_after_200k_rows_neither_crash_nor_retype(tmp_path: Path) -> None:
    rows = 250_000
    body = b"".join(b"%d,%d.5\n" % (i, i) for i in range(rows))
    data = b"n,x\n" + body + b"oops,\xff\n" + b"true,\n"
    result = read_all(write(tmp_path, "late.csv", data))
    assert len(result.rows) == rows + 1
    assert result.rows[-1] == {"n": "true", "x": ""}
    assert result.rows[123] == {"n": "123", "x": "123.5"}
    assert result.reject_view == [(rows + 2, "x", RejectRule.INVALID_UTF8)]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b'a,b\n1,2\n3,"never closed\n4,5\n', 3),
        (b'a,b\n1,2\n3,"\n', 3),
        (b'a,b,c\n1,2,3\n"x\ny",2,3\n4,"open\n5,6,7\n', 5),
    ],
)
def test_unterminated_quote_names_the_line_it_starts_on(tmp_path: Path, data: bytes, line: int) -> None:
    with pytest.raises(InputError, match="never closed") as info:
        read_all(write(tmp_path, "open.csv", data))
    assert info.value.line == line


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # pyarrow's own decode
def test_ragged_row_with_invalid_utf8_refuses_the_file_without_quoting_it(tmp_path: Path) -> None:
    data = b"a,b\n1,2\n" + SECRET.encode() + b"\xff,2,3\n4,5\n"
    with pytest.raises(InputError, match="wrong number of fields and invalid UTF-8") as info:
        read_all(write(tmp_path, "mixed.csv", data))
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None


def test_trailing_ragged_row_after_a_quoted_field_is_not_an_open_quote(tmp_path: Path) -> None:
    result = read_all(write(tmp_path, "t.csv", b'a,b\n1,"x"\n2,"x",3'))
    assert result.lines == [2]
    assert result.reject_view == [(3, None, RejectRule.RAGGED_ROW)]


def test_a_closed_quote_at_the_end_is_fine(tmp_path: Path) -> None:
    for data in (b'a,b\n1,"x"', b'a,b\n1,""""', b'a,b\n1,"a\n"\n', b'a,b\n1,x"y'):
        result = read_all(write(tmp_path, "closed.csv", data))
        assert len(result.rows) == 1, data


# --- compression --------------------------------------------------------------------------------

CSV_BODY = b"id,v\n" + b"".join(b"%d,val%d\n" % (i, i) for i in range(5000))


def _zstd(data: bytes) -> bytes:
    compressed: bytes = zstandard.ZstdCompressor().compress(data)
    return compressed


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": lambda b: gzip.compress(b, mtime=0),
    "bz2": bz2.compress,
    "zst": _zstd,
}


@pytest.mark.parametrize("ext", sorted(COMPRESSORS))
@pytest.mark.parametrize("by", ["extension", "magic"])
def test_compressed_csv(tmp_path: Path, ext: str, by: str) -> None:
    name = f"data.csv.{ext}" if by == "extension" else "data.csv"
    path = write(tmp_path, name, COMPRESSORS[ext](CSV_BODY))
    result = read_all(path)
    assert len(result.rows) == 5000
    assert result.rows[4999] == {"id": "4999", "v": "val4999"}


def test_concatenated_gzip_members(tmp_path: Path) -> None:
    path = write(tmp_path, "cat.csv.gz", gzip.compress(b"a\n1\n") + gzip.compress(b"2\n3\n"))
    assert [r["a"] for r in read_all(path).rows] == ["1", "2", "3"]


def test_wrong_compression_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not gzip"):
        read_all(write(tmp_path, "plain.csv.gz", b"a,b\n1,2\n"))


@pytest.mark.parametrize("ext", ["gz", "zst", "bz2"])
def test_truncated_compressed_stream_is_refused(tmp_path: Path, ext: str) -> None:
    whole = COMPRESSORS[ext](CSV_BODY)
    path = write(tmp_path, f"cut.csv.{ext}", whole[: len(whole) * 2 // 3])
    with pytest.raises(InputError, match="truncated"):
        read_all(path)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda z: z[:20] + bytes(b ^ 0x5A for b in z[20:60]) + z[60:], "corrupt"),
        (lambda z: z + b"not a gzip member", "corrupt"),
        (lambda z: z[:-4] + b"\x00\x00\x00\x00", "corrupt"),  # wrong length in the trailer
    ],
)
def test_damaged_gzip_is_refused_by_name(tmp_path: Path, damage: Callable[[bytes], bytes], why: str) -> None:
    path = write(tmp_path, "bad.csv.gz", damage(gzip.compress(CSV_BODY * 50)))
    with pytest.raises(InputError, match=f"bad.csv.gz: the gzip data is {why}"):
        read_all(path)


def test_gzip_bomb_hits_the_ratio_cap(tmp_path: Path) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(b"a,b\n")]
    rows = b"0,0\n" * (1 << 18)
    parts += [compressor.compress(rows) for _ in range(64)]
    path = write(tmp_path, "bomb.csv.gz", b"".join([*parts, compressor.flush()]))
    with pytest.raises(InputError, match="decompression limit"):
        read_all(path, block_size=1 << 20)


def test_decompressed_byte_cap(tmp_path: Path) -> None:
    path = write(tmp_path, "big.ndjson.gz", gzip.compress(b'{"a":1}\n' * 100_000))
    with pytest.raises(InputError, match="decompression limit"):
        read_all(path, max_decompressed_bytes=100_000)


# --- Parquet ------------------------------------------------------------------------------------


def _nested_table(rows: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "link": pa.array([{"email": f"u{i}@x.io", "tier": i % 3} for i in range(rows)]),
            "tags": pa.array([[f"t{j}" for j in range(i % 4)] for i in range(rows)], pa.list_(pa.string())),
        }
    )


def test_parquet_nested_columns_and_row_groups(tmp_path: Path) -> None:
    table = _nested_table(1000)
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path, row_group_size=300)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    result = read_all(path, batch_rows=128)
    assert result.columns == ("id", "link", "tags")
    assert result.rows == table.to_pylist()
    assert result.lines == list(range(1, 1001))
    assert result.batches >= 8
    with open_source(path, ReadOptions(batch_rows=128)) as source:
        first = next(iter(source.batches()))
        assert first.data.schema.field("link").type == table.schema.field("link").type
        assert first.data.schema.field("tags").type == pa.list_(pa.string())


def test_parquet_dictionary_columns_are_read_as_plain_values(tmp_path: Path) -> None:
    # as pandas categoricals and Arrow dictionaries are written: they read back encoded
    states = pa.array(["VIC", "", None, "NSW"] * 50).dictionary_encode()
    table = pa.table(
        {
            "state": states,
            "tier": pa.DictionaryArray.from_arrays(pa.array([0, 1] * 100, pa.int8()), pa.array(["gold", ""])),
        }
    )
    path = tmp_path / "categorical.parquet"
    pq.write_table(table, path, row_group_size=64)
    assert pa.types.is_dictionary(pq.read_table(path).schema.field("state").type)
    result = read_all(path, batch_rows=50)
    assert result.rows == table.to_pylist()
    with open_source(path, ReadOptions(batch_rows=50)) as source:
        for batch in source.batches():
            assert batch.data.schema.types == [pa.string(), pa.string()]


def test_parquet_with_too_many_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": [i] for i in range(5)}), path)
    with pytest.raises(InputError, match="max_columns"):
        open_source(path, ReadOptions(max_columns=4))


@pytest.mark.parametrize("data", [b"PAR1 not really", b"a,b\n1,2\n" * 10, b"PAR1" + b"\x00" * 64 + b"PAR1"])
def test_corrupt_parquet_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InputError, match="Parquet"):
        read_all(write(tmp_path, "bad.parquet", data))


def test_truncated_parquet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole.parquet"
    pq.write_table(_nested_table(100), path)
    cut = write(tmp_path, "cut.parquet", path.read_bytes()[:-20])
    with pytest.raises(InputError, match="Parquet"):
        read_all(cut)


def test_gzipped_parquet_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    pq.write_table(_nested_table(10), buf)
    with pytest.raises(InputError, match="compressed Parquet"):
        open_source(write(tmp_path, "x.parquet.gz", gzip.compress(buf.getvalue())))


# --- NDJSON -------------------------------------------------------------------------------------


def test_ndjson_blank_lines_crlf_bom_and_no_final_newline(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf{"a":1}\r\n\r\n   \n{"b":"x\\ny"}\n\t\n{"c":3}'
    result = read_all(write(tmp_path, "x.ndjson", data))
    assert result.columns == (NDJSON_COLUMN,)
    assert [r[NDJSON_COLUMN] for r in result.rows] == ['{"a":1}', '{"b":"x\\ny"}', '{"c":3}']
    assert result.lines == [1, 4, 6]
    assert [json.loads(str(r[NDJSON_COLUMN])) for r in result.rows][1] == {"b": "x\ny"}


@pytest.mark.parametrize("block_size", [1, 7, 64, 1 << 20])
def test_ndjson_row_rejects_across_blocks(tmp_path: Path, block_size: int) -> None:
    long_line = b'{"big":"' + b"z" * 300 + b'"}'
    data = b"\n".join(
        [
            b'{"a":1}',
            b'{"s":"' + SECRET.encode() + b'\xff"}',
            b"",
            b'{"n":"\x00"}',
            long_line,
            b'{"b":2}',
            b"not json",
        ]
    )
    result = read_all(write(tmp_path, "r.jsonl", data), block_size=block_size, max_line_bytes=100)
    assert [r[NDJSON_COLUMN] for r in result.rows] == ['{"a":1}', '{"b":2}', "not json"]
    assert result.lines == [1, 6, 7]
    assert result.reject_view == [
        (2, None, RejectRule.INVALID_UTF8),
        (4, None, RejectRule.NUL_BYTE),
        (5, None, RejectRule.LINE_TOO_LARGE),
    ]


def test_ndjson_row_count_invariant_in_large_file(tmp_path: Path) -> None:
    lines = [b'{"i":%d}' % i if i % 10 else b"" for i in range(200_000)]
    path = write(tmp_path, "big.json.gz", gzip.compress(b"\n".join(lines) + b"\n"))
    result = read_all(path, batch_rows=10_000)
    assert len(result.rows) == sum(1 for line in lines if line)
    assert result.lines[:3] == [2, 3, 4]
    assert result.batches >= 18


# --- format detection ---------------------------------------------------------------------------


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown file type"):
        open_source(write(tmp_path, "x.xlsx", b"PK"))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be opened"):
        open_source(tmp_path / "absent.csv")


def test_bytes_read_reaches_the_file_size(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", CSV_BODY)
    with open_source(path, ReadOptions(block_size=4096)) as source:
        seen = [b.bytes_read for b in source.batches()]
    assert seen[-1] == len(CSV_BODY)
    assert len(seen) > 5


def test_ndjson_line_longer_than_several_blocks_is_skipped_not_buffered(tmp_path: Path) -> None:
    huge = b'{"big":"' + b"z" * 300_000 + b'"}'
    data = b'{"a":1}\n' + huge + b'\n{"b":2}\n' + huge + b"\n\n" + huge
    result = read_all(write(tmp_path, "huge.ndjson", data), block_size=1 << 16, max_line_bytes=1000)
    assert [r[NDJSON_COLUMN] for r in result.rows] == ['{"a":1}', '{"b":2}']
    assert result.lines == [1, 3]
    assert result.reject_view == [(line, None, RejectRule.LINE_TOO_LARGE) for line in (2, 4, 6)]


@pytest.mark.parametrize("options", [{"delimiter": ",,"}, {"quote_char": "\n"}, {"batch_rows": 0}])
def test_nonsense_options_are_a_programming_error(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ReadOptions"):
        open_source(write(tmp_path, "x.csv", b"a\n1\n"), ReadOptions(**options))  # type: ignore[arg-type]


_CELL_BYTES = st.binary(max_size=19) | st.sampled_from(
    [b"", b"a\r\nb", b"\x00", b"\xc3\xa9t\xc3\xa9", b"\xff", b"\x0d"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_CELL_BYTES, min_size=3, max_size=3), max_size=40), st.data())
def test_the_cell_census_in_c_and_in_numpy_agree(rows: list[list[bytes]], data: st.DataObject) -> None:
    """One pass over a column's bytes (C) and numpy's reductions: same census, same checks (the
    reader's columns hold no nulls: an empty cell is empty bytes)."""
    from bulkd.read import _cells

    columns = [pa.array([row[i] for row in rows], pa.binary()) for i in range(3)]
    start = data.draw(st.integers(0, len(rows)))
    raw = pa.RecordBatch.from_arrays(columns, names=["a", "b", "c"]).slice(start)
    options = ReadOptions(max_field_bytes=data.draw(st.sampled_from([4, 1000])), max_line_bytes=30)
    results = []
    for native in (_cells._match, None):
        _cells_module_match, _cells._match = _cells._match, native
        try:
            censuses = []
            for below in (1, 14):
                empty = np.ones(raw.num_rows, dtype=np.uint8)
                censuses.append(([_cells._census(c, below, empty) for c in raw.columns], empty.tolist()))
            checks = _cells.CellChecks(raw, ("a", "b", "c"), options)
            outcome = (checks.breaks.tolist(), checks.blank.tolist(), checks.keep.tolist())
            results.append((censuses, outcome, checks.rejects("in.csv", np.arange(raw.num_rows) + 2)))
        finally:
            _cells._match = _cells_module_match
    assert results[0] == results[1]
