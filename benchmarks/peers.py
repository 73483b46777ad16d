"""The peers: other ways to do bulkd's conversion, each as one function, plus the "limit" probe.

Every peer converts the same input file into nested gzip NDJSON in ``out_dir``: dotted headers
become nested objects, cells are read as strings (no type inference) and the schema's scalar
types are coerced where the peer has a way to (booleans, numbers); empty cells are omitted where
the peer can. Order lines (purchases) fold into one record per ``purchase_id`` with a
``products`` array. Only some peers validate against the schema; the harness reports which.

Run one peer per process, so that the parent can measure its CPU time and peak RSS alone:

    python -m benchmarks.peers PEER WORKLOAD INPUT OUT_DIR [--max-rows N]

It prints one JSON object: ``rows_in``, ``records_out``, ``rejected`` (when the peer knows) and
``seconds`` (its own timing, without interpreter start-up).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.datagen import WORKLOADS, Workload, flat_typed, nest, record_of

PYTHON_GZIP_LEVEL = 6
"""zlib's default level, used by the Python-based peers (as ``gzip.open`` users typically would)."""

PeerResult = dict[str, Any]
Peer = Callable[[Workload, Path, Path, int | None], PeerResult]


def _out_file(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / "part-00000.ndjson.gz"


# ---------------------------------------------------------------------------------------------
# DuckDB: COPY (SELECT struct_pack(...)) TO ... (FORMAT JSON, COMPRESSION GZIP)
# ---------------------------------------------------------------------------------------------


def _tree(columns: tuple[str, ...]) -> dict[str, Any]:
    """Dotted names as a tree whose leaves are the full column names."""
    root: dict[str, Any] = {}
    for col in columns:
        node = root
        parts = col.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = col
    return root


def _duck_leaf(workload: Workload, col: str, agg: str | None) -> str:
    expr = f'"{col}"'
    kind = workload.coerce.get(col)
    if kind is not None:
        expr = f"TRY_CAST({expr} AS {({'bool': 'BOOLEAN', 'int': 'BIGINT', 'float': 'DOUBLE'})[kind]})"
    return f"{agg}({expr})" if agg else expr


def _duck_expr(workload: Workload, node: dict[str, Any] | str, agg: str | None) -> str:
    if isinstance(node, str):
        return _duck_leaf(workload, node, agg)
    fields = ", ".join(f'"{k}" := {_duck_expr(workload, v, agg)}' for k, v in node.items())
    return f"struct_pack({fields})"


def duckdb_sql(workload: Workload, source: str, target: str) -> str:
    """The COPY statement: nested ``struct_pack`` per dotted prefix, ``list(...)`` for order lines."""
    tree = _tree(workload.columns)
    if workload.group_key is None:
        select = ", ".join(f'{_duck_expr(workload, v, None)} AS "{k}"' for k, v in tree.items())
        query = f"SELECT {select} FROM {source}"
    else:
        assert workload.array_prefix is not None
        array = workload.array_prefix.rstrip(".")
        parts = []
        for k, v in tree.items():
            if k == workload.group_key:
                parts.append(f'"{k}"')
            elif k == array:
                parts.append(f'list({_duck_expr(workload, v, None)}) AS "{k}"')
            else:
                parts.append(f'{_duck_expr(workload, v, "first")} AS "{k}"')
        query = f'SELECT {", ".join(parts)} FROM {source} GROUP BY "{workload.group_key}"'
    return f"COPY ({query}) TO '{target}' (FORMAT JSON, COMPRESSION GZIP)"


def run_duckdb(workload: Workload, src: Path, out_dir: Path, max_rows: int | None) -> PeerResult:
    """DuckDB with its defaults (all cores, its own memory limit): nulls are written as ``null``."""
    import duckdb

    if src.suffix == ".parquet":
        source = f"read_parquet('{src}')"
    else:
        source = f"read_csv('{src}', header=true, all_varchar=true)"
    if max_rows is not None:
        source = f"(SELECT * FROM {source} LIMIT {max_rows})"
    con = duckdb.connect()
    con.execute(duckdb_sql(workload, source, str(_out_file(out_dir))))
    return {}


# ---------------------------------------------------------------------------------------------
# polars: scan_csv(all strings) → select(struct(...)) → sink_ndjson(compression="gzip")
# ---------------------------------------------------------------------------------------------


def _polars_expr(workload: Workload, name: str, node: dict[str, Any] | str) -> Any:
    import polars as pl

    if isinstance(node, str):
        expr = pl.col(node)
        kind = workload.coerce.get(node)
        if kind == "bool":
            expr = expr.str.to_lowercase().replace_strict(
                {"true": True, "false": False}, default=None, return_dtype=pl.Boolean
            )
        elif kind == "int":
            expr = expr.cast(pl.Int64, strict=False)
        elif kind == "float":
            expr = expr.cast(pl.Float64, strict=False)
        return expr.alias(name)
    return pl.struct([_polars_expr(workload, k, v) for k, v in node.items()]).alias(name)


def run_polars(workload: Workload, src: Path, out_dir: Path, max_rows: int | None) -> PeerResult:
    """polars' streaming engine end to end; nulls are written as ``null``."""
    import polars as pl

    if src.suffix == ".parquet":
        lf = pl.scan_parquet(src, n_rows=max_rows)
    else:
        lf = pl.scan_csv(src, infer_schema=False, n_rows=max_rows)
    tree = _tree(workload.columns)
    if workload.group_key is None:
        lf = lf.select([_polars_expr(workload, k, v) for k, v in tree.items()])
    else:
        assert workload.array_prefix is not None
        array = workload.array_prefix.rstrip(".")
        aggs = []
        for k, v in tree.items():
            if k == workload.group_key:
                continue
            expr = _polars_expr(workload, k, v)
            aggs.append(expr if k == array else expr.first())
        lf = lf.group_by(workload.group_key).agg(aggs)
    lf.sink_ndjson(_out_file(out_dir), compression="gzip")
    return {}


# ---------------------------------------------------------------------------------------------
# Row sources shared by the Python-based peers
# ---------------------------------------------------------------------------------------------


def _dict_rows(src: Path, max_rows: int | None) -> Iterator[dict[str, str | None]]:
    """Rows as ``{column: cell}``; a Parquet null arrives as None, an empty CSV cell as ``""``."""
    if src.suffix == ".parquet":
        import pyarrow.parquet as pq

        def parquet_rows() -> Iterator[dict[str, str | None]]:
            for batch in pq.ParquetFile(src).iter_batches(batch_size=10_000):
                yield from batch.to_pylist()

        rows: Iterator[dict[str, str | None]] = parquet_rows()
    else:
        f = open(src, newline="", encoding="utf-8")  # noqa: SIM115 - closed by the generator's end
        rows = _closing(f, csv.DictReader(f))
    return itertools.islice(rows, max_rows) if max_rows is not None else rows


def _closing(f: Any, rows: Iterator[dict[str, str]]) -> Iterator[dict[str, str | None]]:
    try:
        yield from rows
    finally:
        f.close()


def _records(
    workload: Workload, rows: Iterator[dict[str, str | None]]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(rows used, record)``: one per row, or one per order for order lines (lines are contiguous)."""
    if workload.group_key is None:
        for row in rows:
            yield 1, nest(flat_typed(workload, row))
        return
    key = workload.group_key
    for _, lines in itertools.groupby(rows, key=lambda r: r[key]):
        group = list(lines)
        yield len(group), record_of(workload, group)


# ---------------------------------------------------------------------------------------------
# pandas, chunked
# ---------------------------------------------------------------------------------------------


def run_pandas(workload: Workload, src: Path, out_dir: Path, max_rows: int | None) -> PeerResult:
    """pandas ``read_csv(chunksize=...)``, records nested per chunk, ``json.dumps``, gzip. No validation.

    This is how pandas is usually put to this job: pandas has no nested NDJSON writer, so each
    chunk goes through ``to_dict("records")`` and Python. Order lines are not supported (a chunk
    boundary can split an order).
    """
    import pandas as pd

    if workload.group_key is not None:
        raise SystemExit("pandas peer: order lines not supported")
    if src.suffix == ".parquet":
        import pyarrow.parquet as pq

        chunks: Iterator[Any] = (
            b.to_pandas().fillna("") for b in pq.ParquetFile(src).iter_batches(batch_size=100_000)
        )
    else:
        chunks = pd.read_csv(
            src, dtype=str, keep_default_na=False, na_filter=False, chunksize=100_000, nrows=max_rows
        )
    rows = 0
    with gzip.open(_out_file(out_dir), "wt", compresslevel=PYTHON_GZIP_LEVEL, encoding="utf-8") as out:
        for chunk in chunks:
            records = chunk.to_dict("records")
            rows += len(records)
            out.write("".join(json.dumps(nest(flat_typed(workload, r))) + "\n" for r in records))
    return {"rows_in": rows}


# ---------------------------------------------------------------------------------------------
# The careful per-row Python pipeline
# ---------------------------------------------------------------------------------------------


def run_python(workload: Workload, src: Path, out_dir: Path, max_rows: int | None) -> PeerResult:
    """csv.DictReader → nest + coerce → fastjsonschema (bulkd's formats) → json.dumps → gzip.

    What a careful engineer writes by hand: it validates every record and writes reject lines
    that name the field and rule but never the value.
    """
    import fastjsonschema

    from benchmarks.datagen import compiled_schema

    validate = compiled_schema(workload.record_type)
    rows = out_n = rejected = 0
    with (
        gzip.open(_out_file(out_dir), "wt", compresslevel=PYTHON_GZIP_LEVEL, encoding="utf-8") as out,
        open(out_dir / "rejects.ndjson", "w", encoding="utf-8") as rej,
    ):
        for used, record in _records(workload, _dict_rows(src, max_rows)):
            rows += used
            try:
                validate(record)
            except fastjsonschema.JsonSchemaValueException as exc:
                rejected += 1
                rej.write(json.dumps({"row": rows, "field": exc.name, "rule": exc.rule}) + "\n")
                continue
            out.write(json.dumps(record) + "\n")
            out_n += 1
    return {"rows_in": rows, "records_out": out_n, "rejected": rejected}


# ---------------------------------------------------------------------------------------------
# Lexer's converter approach, re-created from its description
# ---------------------------------------------------------------------------------------------


LEXER_PYDANTIC = "1.10.0"
"""The pydantic Lexer's converter runs on: lexer-schemas requires ``pydantic[email]<=1.10``, so
installing its requirements gives 1.10.0 (a compiled wheel). The harness installs it apart from
the bench extra (``benchmarks.run``), since bulkd itself needs pydantic 2."""


def _lexer_engine() -> ModuleType:
    """pydantic 1 when it is first on the path (the harness puts Lexer's pin there); else the
    ``pydantic.v1`` that pydantic 2 ships up to Python 3.13 (the same API, pure Python)."""
    import pydantic

    if pydantic.VERSION.startswith("1."):
        return pydantic
    try:
        from pydantic import v1
    except ImportError as exc:  # pragma: no cover - Python 3.14+
        raise SystemExit(f"lexer peer needs pydantic 1 or pydantic.v1: {exc}") from exc
    return v1


def _lexer_models(engine: ModuleType) -> Any:
    """Models of a customer record on ``engine`` (pydantic 1), shaped as Lexer describes its own.

    Links are a union of models that forbid extra fields, and the email validator lowercases
    and strips.
    """
    from datetime import date
    from typing import Literal

    BaseModel: Any = engine.BaseModel
    Extra, constr, validator = engine.Extra, engine.constr, engine.validator

    email_re = r"(^[a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$)"

    class _Link(BaseModel):
        class Config:
            extra = Extra.forbid

    class EmailLink(_Link):
        email: constr(regex=email_re)  # type: ignore[valid-type]

        @validator("email", pre=True)
        def _clean(cls, v: Any) -> Any:
            return v.strip().lower() if isinstance(v, str) else v

    class EmailSha256Link(_Link):
        email_sha256: str

    class EmailMd5Link(_Link):
        email_md5: str

    class CustomerIdLink(_Link):
        customer_id: str
        system_name: str | None = None

    class MobileLink(_Link):
        mobile: str

    class ExternalLink(_Link):
        external_id: str
        system_name: str

    class CustomerLink(_Link):
        link_type: Literal[
            "email", "email_sha256", "customer_id", "mobile", "engage.id", "external_id", "email_md5"
        ]
        link_value: constr(min_length=1)  # type: ignore[valid-type]
        id_type: str = "default"

    class CustomerRecord(BaseModel):
        link: (
            EmailLink
            | EmailSha256Link
            | EmailMd5Link
            | CustomerIdLink
            | MobileLink
            | ExternalLink
            | CustomerLink
        )
        email: constr(regex=email_re) | None = None  # type: ignore[valid-type]
        email_sha256: str | None = None
        mobile: str | None = None
        customer_id: str | None = None
        custom_fields: dict[str, Any] | None = None
        first_name: str | None = None
        last_name: str | None = None
        gender: str | None = None
        date_of_birth: date | None = None
        country: str | None = None
        state: str | None = None
        city: str | None = None
        postcode: str | None = None
        zip: str | None = None
        employee_flag: bool | None = None
        customer_type: str | None = None
        address_1: str | None = None
        address_2: str | None = None

    # This module's annotations are strings (``from __future__ import annotations``): resolve them here.
    names: dict[str, Any] = {**locals(), "Any": Any, "date": date, "Literal": Literal, "constr": constr}
    for cls in (
        EmailLink,
        EmailSha256Link,
        EmailMd5Link,
        CustomerIdLink,
        MobileLink,
        ExternalLink,
        CustomerLink,
    ):
        cls.update_forward_refs(**names)
    CustomerRecord.update_forward_refs(**names)
    return CustomerRecord


def run_lexer(workload: Workload, src: Path, out_dir: Path, max_rows: int | None) -> PeerResult:
    """Per row: DictReader, nest dotted headers (values stay strings), pydantic model, ``.json()``, write.

    Written from Lexer's description of its csv_to_ndjson tool, not from its code. Like that tool
    it writes every field (nulls included). Customers only: the tool does not build arrays.
    """
    if workload.group_key is not None or src.suffix == ".parquet":
        raise SystemExit("lexer peer: customer CSV only")
    engine = _lexer_engine()
    model, invalid = _lexer_models(engine), engine.ValidationError
    rows = out_n = rejected = 0
    with gzip.open(_out_file(out_dir), "wt", compresslevel=PYTHON_GZIP_LEVEL, encoding="utf-8") as out:
        for row in _dict_rows(src, max_rows):
            rows += 1
            try:
                record = model.parse_obj(nest(row))
            except invalid:
                rejected += 1
                continue
            out.write(record.json() + "\n")
            out_n += 1
    build = "compiled" if getattr(engine, "compiled", False) else "pure Python"
    engine_name = f"pydantic {engine.VERSION}, {build}"
    return {"rows_in": rows, "records_out": out_n, "rejected": rejected, "engine": engine_name}


# ---------------------------------------------------------------------------------------------
# The limit: Arrow parse alone + fast gzip alone
# ---------------------------------------------------------------------------------------------


def arrow_parse_seconds(src: Path) -> tuple[float, int]:
    """Seconds to read every batch of ``src`` with Arrow (CSV: streaming reader, every column a string)."""
    import pyarrow as pa

    t0 = time.perf_counter()
    rows = 0
    if src.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(src).iter_batches(batch_size=65_536):
            rows += batch.num_rows
    else:
        import pyarrow.csv as pacsv

        with open(src, encoding="utf-8") as f:
            header = next(csv.reader(f))
        reader = pacsv.open_csv(
            src, convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header})
        )
        for batch in reader:
            rows += batch.num_rows
    return time.perf_counter() - t0, rows


LIMIT_BLOCK_BYTES = 8 << 20
"""Uncompressed bytes per deflate block in the limit: about two of bulkd's work units of customer
records (~4 MB of NDJSON each), numbered in order for the codec as bulkd numbers its units."""


def gzip_seconds(ref: Path, level: int) -> tuple[float, int, int]:
    """Seconds bulkd's own deflate (``bulkd.chunk.codec_for``: the codec its ``gzip_level``
    gives each block in turn) spends compressing ``ref`` in blocks, reads excluded; the gzip
    size; the zlib level-6 size of the same bytes."""
    from bulkd.chunk import codec_for

    spent = 0.0
    size = 20  # gzip header, empty final block and trailer
    with open(ref, "rb") as f:
        for number, block in enumerate(iter(lambda: f.read(LIMIT_BLOCK_BYTES), b"")):
            codec = codec_for(level, number)
            t0 = time.perf_counter()
            size += len(codec.deflate(block))
            spent += time.perf_counter() - t0
    z6 = zlib.compressobj(6, zlib.DEFLATED, 31)
    z6_size = 0
    with open(ref, "rb") as f:
        while block := f.read(1 << 20):
            z6_size += len(z6.compress(block))
    z6_size += len(z6.flush())
    return spent, size, z6_size


def run_limit(src: Path, ref: Path, level: int) -> PeerResult:
    """The floor: Arrow parses the input, then bulkd's deflate gzips the expected NDJSON. One core."""
    from bulkd.chunk import codec_name

    parse_s, rows = arrow_parse_seconds(src)
    gzip_s, gz_size, z6_size = gzip_seconds(ref, level)
    return {
        "rows_in": rows,
        "parse_seconds": parse_s,
        "gzip_seconds": gzip_s,
        "seconds": parse_s + gzip_s,
        "gzip_level": level,
        "codec": codec_name(level),
        "gzip_bytes": gz_size,
        "zlib6_bytes": z6_size,
        "ndjson_bytes": ref.stat().st_size,
    }


PEERS: dict[str, Peer] = {
    "duckdb": run_duckdb,
    "polars": run_polars,
    "pandas": run_pandas,
    "python": run_python,
    "lexer": run_lexer,
}

DESCRIPTIONS: dict[str, str] = {
    "duckdb": "DuckDB COPY, struct_pack nesting, gzip",
    "polars": "polars scan → struct → sink_ndjson(gzip)",
    "pandas": "pandas read_csv(chunksize) → dicts → json → gzip",
    "python": "csv.DictReader → fastjsonschema → json → gzip",
    "lexer": "Lexer's approach: DictReader → pydantic → .json()",
}
"""What each peer does, for the table's legend."""

VALIDATES: dict[str, bool] = {
    "duckdb": False,
    "polars": False,
    "pandas": False,
    "python": True,
    "lexer": True,
}
"""Whether the peer checks every record against the record type's schema and drops the failures."""


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: run one peer (or the limit probe) and print its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("peer", choices=[*PEERS, "limit"])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("input", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--max-rows", type=int)
    parser.add_argument("--ref", type=Path, help="limit: the expected NDJSON to compress")
    parser.add_argument("--gzip-level", type=int, default=3, help="limit: bulkd gzip level (0-3)")
    parser.add_argument("--lexer-engine", type=Path, help="lexer: the directory of Lexer's pinned pydantic")
    args = parser.parse_args(argv)
    if args.lexer_engine is not None:
        sys.path.insert(0, str(args.lexer_engine))
    if args.peer == "limit":
        result = run_limit(args.input, args.ref, args.gzip_level)
    else:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = PEERS[args.peer](WORKLOADS[args.workload], args.input, args.out_dir, args.max_rows)
        result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
