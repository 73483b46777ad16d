"""The conversion pipeline for one input file: read → map → validate → encode → chunk.

This is what ``bulkd convert`` and the daemon both call. It accounts for every row: each input
row ends up in a written record or in the reject file, and the summary's
``rows = rows_delivered + rejected`` is checked before success is reported. A whole-file
refusal (:class:`InputError`) or a reject ratio above the threshold leaves no chunk behind.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from bulkd.buffers import value_offsets
from bulkd.chunk import Block, ChunkInfo, ChunkLimits, ChunkNaming, ChunkWriter, codec_for
from bulkd.documents import DocumentMapper
from bulkd.encode import EncodedRows, encode_ndjson, to_ndjson
from bulkd.errors import BulkdError, RejectThresholdError, StorageError
from bulkd.group import Partitions, group_partition
from bulkd.mapping import MappedBatch, MappingPlan, flatten_columns, map_batch, plan_mapping
from bulkd.memory import choose_memory_pool
from bulkd.model import Reject, RejectRule, SourceBatch
from bulkd.profile import Profile
from bulkd.read import ReadOptions, Source, SourceFormat, open_source
from bulkd.rejects import RejectWriter
from bulkd.schemas import RecordType
from bulkd.validate import RecordChecker

__all__ = ["ConvertSettings", "FileResult", "Progress", "convert_file", "summary_json"]


Progress = Callable[[int, int], None]
"""Called after each batch with (rows so far, input bytes so far)."""

_PARTITION_INPUT_BYTES = 16 << 20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConvertSettings:
    """Everything that decides a conversion's output bytes (so equal settings give equal chunks)."""

    record_type: RecordType
    dataset_id: str
    timestamp: str
    profile: Profile = field(default_factory=Profile)
    read: ReadOptions = field(default_factory=ReadOptions)
    limits: ChunkLimits = field(default_factory=ChunkLimits)
    max_reject_ratio: float | None = None
    """Fail the file when rejected / rows exceeds this (None: never fail for rejects)."""
    write_chunks: bool = True
    """False for ``bulkd validate``: check everything, write nothing but rejects."""
    workers: int | None = None
    """Threads that map, validate, encode and compress (None: one per CPU, at most 4; 0: none,
    all on the calling thread). Output bytes do not depend on it."""
    work_rows: int = 8_192
    """Rows per unit of work (and per deflate block): small enough that the few units in flight
    stay within the memory budget, large enough that per-unit overhead (~200 kernel calls) is
    noise. Output bytes depend on it (block boundaries), as on the compression level. 16,384
    peaked ~45 MB higher for 1 M customer rows (281 against 236 MB RSS) for ~3 % less CPU and
    0.1 % smaller output."""
    work_bytes: int = 2 << 20
    """A unit also ends at the row where its cells reach this many bytes, so rows of half a
    megabyte each cannot make an 8,192-row unit of 4 GB. Counted on the rows themselves, so unit
    boundaries still do not depend on how the reader cut its batches."""


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome of converting one input file."""

    input: str
    rows: int = 0
    records: int = 0
    rows_delivered: int = 0
    rejected: int = 0
    chunks: tuple[ChunkInfo, ...] = ()
    rejects_path: Path | None = None
    rejects_by_rule: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Run:
    """State of one conversion: sinks, counters and the stage objects."""

    def __init__(
        self, path: Path, out_dir: Path, settings: ConvertSettings, prefix: str, display_name: str | None
    ) -> None:
        self.input = display_name if display_name is not None else str(path)
        self.settings = settings
        self.checker = RecordChecker(settings.record_type)
        naming = ChunkNaming(settings.dataset_id, settings.record_type.name, settings.timestamp, prefix)
        self.writer = ChunkWriter(out_dir, naming, settings.limits) if settings.write_chunks else None
        stem = naming.filename(0).removesuffix("_00000.ndjson.gz").removesuffix("-00000.ndjson.gz")
        self.rejects = RejectWriter(out_dir / f"{stem}.rejects.ndjson")
        self.rows = 0
        self.records = 0
        self.rows_delivered = 0
        self.warnings: list[str] = []
        self.units = itertools.count()
        """Numbers the units of work in input order: a unit's codec depends on its number."""

    def reject(self, rejects: tuple[Reject, ...] | list[Reject]) -> None:
        self.rejects.add(rejects)

    def deliver(self, done: _Done) -> None:
        """Take a finished unit of work, in input order."""
        self.reject(done.rejects)
        if done.block is not None and self.writer is not None:
            self.writer.write(done.block)
        self.records += done.records
        self.rows_delivered += done.rows_delivered

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
        self.rejects.abort()


def convert_file(
    path: Path,
    out_dir: Path,
    settings: ConvertSettings,
    progress: Progress | None = None,
    prefix: str = "",
    *,
    display_name: str | None = None,
) -> FileResult:
    """Convert one input file into chunks under ``out_dir`` (plus a reject file when needed).

    Whole-file problems are returned as ``FileResult.error`` (one sentence naming the file), never
    raised, so that a batch of inputs goes on with the next file. Too many rejects keep the reject
    file (it says why) but no chunk. Local storage trouble (:class:`StorageError`: disk full, I/O
    error) is not the file's fault: it propagates, like any other exception (such as one raised by
    ``progress`` to cancel), after the partial chunks and reject file are removed.
    ``display_name`` is how rejects and errors name the input (default: ``path``).
    """
    started = time.monotonic()
    choose_memory_pool()
    run = _Run(path, out_dir, settings, prefix, display_name)
    try:
        with open_source(path, _read_options(settings)) as source:
            _convert(source, run, progress)
        _check_threshold(run)
        chunks = tuple(run.writer.finish()) if run.writer is not None else ()
        rejects_path = run.rejects.finish()
    except RejectThresholdError as exc:
        if run.writer is not None:
            run.writer.abort()
        return FileResult(
            input=run.input,
            rows=run.rows,
            rejected=run.rejects.count,
            rejects_path=run.rejects.finish(),
            rejects_by_rule=dict(run.rejects.by_rule),
            warnings=tuple(run.warnings),
            error=str(exc),
            seconds=time.monotonic() - started,
        )
    except StorageError:
        run.abort()
        raise
    except BulkdError as exc:
        run.abort()
        error = str(exc).replace(str(path), run.input)  # the reader names the path it opened
        return FileResult(input=run.input, rows=run.rows, error=error, seconds=time.monotonic() - started)
    except BaseException:
        # A progress callback may raise to cancel (daemon shutdown): leave no partial output.
        run.abort()
        raise
    rejected = run.rejects.count
    if run.rows != run.rows_delivered + rejected:
        raise BulkdError(
            f"{run.input}: accounting mismatch: {run.rows} rows read, "
            f"{run.rows_delivered} delivered, {rejected} rejected"
        )
    return FileResult(
        input=run.input,
        rows=run.rows,
        records=run.records,
        rows_delivered=run.rows_delivered,
        rejected=rejected,
        chunks=chunks,
        rejects_path=rejects_path,
        rejects_by_rule=dict(run.rejects.by_rule),
        warnings=tuple(run.warnings),
        seconds=time.monotonic() - started,
    )


def _check_threshold(run: _Run) -> None:
    ratio = run.settings.max_reject_ratio
    if ratio is not None and run.rows and run.rejects.count / run.rows > ratio:
        raise RejectThresholdError(run.input, run.rejects.count, run.rows, ratio)


def _read_options(settings: ConvertSettings) -> ReadOptions:
    """The user's read options, with the parser's allocator chosen for the record type."""
    grouped = settings.record_type.grouping is not None
    return dataclasses.replace(settings.read, parse_on_jemalloc=not grouped)


def _convert(source: Source, run: _Run, progress: Progress | None) -> None:
    batches = _counted(source.batches(), run, progress)
    if source.format is SourceFormat.NDJSON:
        _convert_documents(batches, run)
        return
    grouping = run.settings.record_type.grouping
    if grouping is None:
        _convert_rows(source, batches, run)
    else:
        _convert_groups(source, batches, run)


def _counted(batches: Iterator[SourceBatch], run: _Run, progress: Progress | None) -> Iterator[SourceBatch]:
    for batch in batches:
        run.rows += batch.rows
        run.reject(batch.rejects)
        yield batch
        if progress is not None:
            progress(run.rows, batch.bytes_read)


def _planner(source: Source, run: _Run) -> Callable[[pa.RecordBatch], MappingPlan]:
    """Plan once, from the header (CSV) or the first batch's flattened columns (Parquet)."""
    plans: list[MappingPlan] = []
    settings = run.settings

    def plan_for(data: pa.RecordBatch) -> MappingPlan:
        if not plans:
            plans.append(plan_mapping(run.input, data.schema.names, settings.record_type, settings.profile))
            run.warnings.extend(plans[0].warnings)
        return plans[0]

    if source.format is not SourceFormat.PARQUET:
        empty = pa.RecordBatch.from_arrays(
            [pa.array([], pa.string()) for _ in source.columns], names=list(source.columns)
        )
        plan_for(empty)
    return plan_for


def _flat(source: Source, batch: SourceBatch) -> SourceBatch:
    if source.format is not SourceFormat.PARQUET:
        return batch
    return SourceBatch(flatten_columns(batch.data), batch.lines, batch.rejects, batch.bytes_read)


@dataclass(frozen=True, slots=True)
class _Done:
    """One unit of work, finished: its rejects and its valid records, encoded and deflated."""

    rejects: list[Reject]
    block: Block | None
    """None when nothing is written (no valid row, or ``write_chunks`` is off)."""
    rows_delivered: int
    records: int


class _Ordered(Generic[T]):
    """Runs units of work on a few threads and hands results back in submission order.

    At most ``depth`` units are in flight, which bounds memory. Closing cancels what has not
    started and waits for what has, so no thread outlives the conversion (a cancelling progress
    callback, or a failing unit, goes through the same path).
    """

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bulkd-convert") if workers else None
        self._pending: deque[Future[T]] = deque()
        self._depth = workers + 1

    def submit(self, fn: Callable[[], T]) -> Iterator[T]:
        """Queue ``fn``; yields the results that must be taken to keep within the depth."""
        if self._pool is None:
            yield fn()
            return
        self._pending.append(self._pool.submit(fn))
        while len(self._pending) > self._depth:
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[T]:
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _workers(settings: ConvertSettings) -> int:
    if settings.workers is not None:
        return max(0, settings.workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, cpus) if cpus > 1 else 0


def _units(batches: Iterator[SourceBatch], rows: int, max_bytes: int) -> Iterator[SourceBatch]:
    """The batches regrouped into units of ``rows`` rows, or fewer where the cells reach
    ``max_bytes`` first (the unit then ends with the row that reached it); the last may be shorter.

    Unit boundaries, and so the deflate blocks and the output bytes, depend only on the rows, not
    on how the reader cut its batches (its block size). A unit within one batch is a zero-copy
    slice; one spanning batches is concatenated. The reader's rejects are counted already, so
    units carry none.
    """
    held: list[SourceBatch] = []
    held_rows = held_bytes = 0
    for batch in batches:
        n = batch.data.num_rows
        start = 0
        while start < n:
            take, size = _take(batch.data.slice(start, rows - held_rows), max_bytes - held_bytes)
            held.append(_piece(batch, start, take))
            held_rows, held_bytes, start = held_rows + take, held_bytes + size, start + take
            if held_rows >= rows or held_bytes >= max_bytes:
                yield held[0] if len(held) == 1 else _concat(held)
                held, held_rows, held_bytes = [], 0, 0
    if held:
        yield held[0] if len(held) == 1 else _concat(held)


def _take(data: pa.RecordBatch, room: int) -> tuple[int, int]:
    """How many leading rows of ``data`` join the unit, and their size: all of them while their
    cells stay under ``room`` bytes, else up to the row whose cells reach it.

    Units of usual width stay well under the byte limit, and then the columns' offsets settle
    it without a size per row (0.05 CPU s per 1 M customer rows).
    """
    total = _total_bytes(data)
    if total < room:
        return data.num_rows, total
    cum = np.cumsum(_row_bytes(data))
    take = min(len(cum), int(np.searchsorted(cum, room, side="left")) + 1)
    return take, int(cum[take - 1])


def _total_bytes(data: pa.RecordBatch) -> int:
    """The sum of :func:`_row_bytes`, from each text column's first and last offset."""
    total = 0
    for column in data.columns:
        offsets = _offsets(column)
        total += 8 * data.num_rows if offsets is None else int(offsets[-1]) - int(offsets[0])
    return total


_TEXT_TYPE_IDS = frozenset(t.id for t in (pa.string(), pa.large_string(), pa.binary(), pa.large_binary()))


def _offsets(column: pa.Array) -> np.ndarray[Any, Any] | None:
    """A text or binary column's offsets; None for other columns."""
    return value_offsets(column) if column.type.id in _TEXT_TYPE_IDS else None


def _row_bytes(data: pa.RecordBatch) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Each row's size: the bytes its text and binary cells span, plus 8 bytes for any other cell.

    A null's slot counts with the bytes it spans, as a value's does: the unit holds them either
    way. (Readers leave null slots empty; a flattened struct's children may not.)
    """
    sizes = np.zeros(data.num_rows, dtype=np.int64)
    for column in data.columns:
        offsets = _offsets(column)
        sizes += 8 if offsets is None else np.diff(offsets)
    return sizes


def _piece(batch: SourceBatch, start: int, rows: int) -> SourceBatch:
    return SourceBatch(batch.data.slice(start, rows), batch.lines.slice(start, rows), (), batch.bytes_read)


def _concat(batches: list[SourceBatch]) -> SourceBatch:
    data = pa.concat_batches([b.data for b in batches])
    lines = pa.concat_arrays([b.lines for b in batches])
    return SourceBatch(data, lines, (), batches[-1].bytes_read)


def _encoded(run: _Run, unit: int, records: pa.Array, keep: np.ndarray | None = None) -> _Done:
    """Valid records, or those ``keep`` marks, as the deflated block of the file's ``unit``-th
    unit of work (none when nothing is written). The mask spares a copy of the valid records when
    a few rows are rejected. Delivered rows are counted by the callers (for purchases they are
    order lines, not records)."""
    count = len(records) if keep is None else int(np.count_nonzero(keep))
    if run.writer is None or count == 0:
        return _Done([], None, 0, count)
    return _deflated(run, unit, encode_ndjson(records, keep), 0)


def _deflated(run: _Run, unit: int, rows: EncodedRows, rows_delivered: int) -> _Done:
    """Encoded NDJSON as the deflated block of the file's ``unit``-th unit of work."""
    codec = codec_for(run.settings.limits.gzip_level, unit)
    return _Done([], Block.make(rows, codec), rows_delivered, rows.count)


def _documents(run: _Run, unit: int, texts: list[str]) -> _Done:
    """Valid NDJSON documents as a deflated block (none when nothing is written): a unit of work."""
    if run.writer is None:
        return _Done([], None, len(texts), len(texts))
    return _deflated(run, unit, to_ndjson(pa.array(texts, pa.string())), len(texts))


def _convert_rows(source: Source, batches: Iterator[SourceBatch], run: _Run) -> None:
    plan_for = _planner(source, run)

    def work(plan: MappingPlan, batch: SourceBatch, unit: int) -> _Done:
        mapped = map_batch(plan, batch)
        verdict = run.checker.verdict(run.input, mapped.records, mapped.lines, skip=mapped.bad)
        rejects = [*mapped.rejects, *verdict.rejects]
        keep = verdict.valid.to_numpy(zero_copy_only=False) if rejects else None
        done = _encoded(run, unit, mapped.records, keep)
        return _Done(rejects, done.block, done.records, done.records)

    flat = (_flat(source, raw) for raw in batches)
    pieces = _units(flat, run.settings.work_rows, run.settings.work_bytes)
    _deliver_in_order(run, (functools.partial(work, plan_for(p.data), p, next(run.units)) for p in pieces))


def _deliver_in_order(run: _Run, units: Iterable[Callable[[], _Done]]) -> None:
    """Run units of work on the pool as they come and deliver the results in input order."""
    ordered: _Ordered[_Done] = _Ordered(_workers(run.settings))
    try:
        for unit in units:
            for done in ordered.submit(unit):
                run.deliver(done)
        for done in ordered.drain():
            run.deliver(done)
    finally:
        ordered.close()


def _convert_groups(source: Source, batches: Iterator[SourceBatch], run: _Run) -> None:
    grouping = run.settings.record_type.grouping
    assert grouping is not None
    plan_for = _planner(source, run)
    size = source.path.stat().st_size if source.path.exists() else 0
    ordered: _Ordered[Any] = _Ordered(_workers(run.settings))
    with tempfile.TemporaryDirectory(prefix="bulkd-groups-", dir=_spill_parent(run)) as spill:
        partitions = Partitions(math.ceil(size / _PARTITION_INPUT_BYTES), Path(spill))
        try:

            def take(mapped: MappedBatch) -> None:
                no_key = partitions.add(mapped, grouping.key)
                run.reject(_keyless_rejects(run.input, mapped, no_key, grouping.key))

            flat = (_flat(source, raw) for raw in batches)
            for piece in _units(flat, run.settings.work_rows, run.settings.work_bytes):
                plan = plan_for(piece.data)
                for mapped in ordered.submit(functools.partial(map_batch, plan, piece)):
                    take(mapped)
            for mapped in ordered.drain():
                take(mapped)
            for table in partitions.tables():
                _emit_groups(table, run, ordered)
        finally:
            ordered.close()
            partitions.close()


def _spill_parent(run: _Run) -> str | None:
    return str(run.writer.out_dir) if run.writer is not None else None


def _keyless_rejects(input_name: str, mapped: MappedBatch, rows: list[int], key: str) -> list[Reject]:
    """Rows without a key belong to no group: a bad row keeps its own reason, others get this one."""
    if not rows:
        return []
    own = dict(zip(pc.indices_nonzero(mapped.bad).to_pylist(), mapped.rejects, strict=True))
    lines = mapped.lines.to_pylist()
    why = f"{key} is required to group order lines"
    return [own.get(r) or Reject(input_name, lines[r], key, RejectRule.MISSING_KEY.value, why) for r in rows]


def _emit_groups(table: pa.Table, run: _Run, ordered: _Ordered[Any]) -> None:
    grouping = run.settings.record_type.grouping
    assert grouping is not None
    grouped = group_partition(table, grouping, run.input)
    del table
    run.reject(grouped.rejects)
    if len(grouped.records) == 0:
        return
    verdict = run.checker.verdict(run.input, grouped.records, grouped.first_lines)
    valid = verdict.valid.to_numpy(zero_copy_only=False)
    for reason, group in zip(verdict.rejects, np.flatnonzero(~valid), strict=True):
        lines = grouped.member_lines(int(group))
        run.reject([Reject(run.input, line, reason.field, reason.rule, reason.message) for line in lines])
    records = grouped.records.filter(verdict.valid) if verdict.rejects else grouped.records
    run.rows_delivered += int(grouped.sizes[valid].sum())
    step = run.settings.work_rows
    for start in range(0, len(records), step):
        unit = functools.partial(_encoded, run, next(run.units), records.slice(start, step))
        for done in ordered.submit(unit):
            run.deliver(done)
    for done in ordered.drain():
        run.deliver(done)


def _convert_documents(batches: Iterator[SourceBatch], run: _Run) -> None:
    """Documents are mapped and validated here, one by one (Python, under the GIL); deflating
    a batch's NDJSON releases the GIL, so it runs on the pool beside the next batch's mapping."""
    mapper = DocumentMapper(run.input, run.settings.record_type, run.settings.profile, run.checker)

    def units() -> Iterator[Callable[[], _Done]]:
        for batch in batches:
            texts, rejects = mapper.map(batch)
            run.reject(rejects)
            if texts:
                yield functools.partial(_documents, run, next(run.units), texts)

    _deliver_in_order(run, units())
    run.warnings.extend(mapper.warnings())


def summary_json(results: list[FileResult]) -> bytes:
    """The ``--json`` summary line (see the CLI)."""
    doc = {
        "rows": sum(r.rows for r in results),
        "records": sum(r.records for r in results),
        "rejected": sum(r.rejected for r in results),
        "chunks": [
            {"path": str(c.path), "records": c.records, "bytes": c.bytes, "sha256": c.sha256_hex}
            for r in results
            for c in r.chunks
        ],
        "rejects": [str(r.rejects_path) for r in results if r.rejects_path],
        "errors": [{"input": r.input, "error": r.error} for r in results if r.error],
        "warnings": [w for r in results for w in r.warnings],
    }
    return orjson.dumps(doc)
