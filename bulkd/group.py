"""Grouping order lines: every row with the same key becomes one record whose arrays hold every item.

Lexer's ``purchase`` and ``return`` records carry their order lines in arrays (``products``,
``payment_types``, ``adjustments``). Exports are flat, one line per item, and rows of one
purchase are not always adjacent. Rows are therefore spread over partitions by a stable hash of
their key (:class:`Partitions`, on disk when the input is large), and each partition is grouped
whole, so no item is lost whatever the row order and memory stays bounded by the partition size.

Within a group the record-level fields come from the group's first line; each row adds its items
(zero or one per array) in line order. If any row of a group is rejected, the whole group is:
sending a purchase without one of its lines would be silently wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import ipc

from bulkd.buffers import value_bytes, value_offsets
from bulkd.mapping import MappedBatch
from bulkd.model import Reject, RejectRule
from bulkd.schemas import ArrayGrouping

__all__ = ["GroupedRecords", "Partitions", "group_partition"]

_LINE = "__line"
_REASON = "__reason"
_RECORD = "__record"


@dataclass(frozen=True, slots=True)
class GroupedRecords:
    """The groups of one partition that survived mapping, in order of their first line."""

    records: pa.StructArray
    first_lines: pa.Int64Array
    lines: np.ndarray
    """Source lines of the partition's rows, grouped: group ``i`` holds ``lines[starts[i]:stops[i]]``."""
    starts: np.ndarray
    stops: np.ndarray
    rejects: tuple[Reject, ...]

    @property
    def sizes(self) -> np.ndarray:
        """Rows per group."""
        sizes: np.ndarray = self.stops - self.starts
        return sizes

    def member_lines(self, group: int) -> list[int]:
        """Lines of every row of a group (to reject them all if the record is refused)."""
        lines: list[int] = self.lines[self.starts[group] : self.stops[group]].tolist()
        return lines


class Partitions:
    """Rows spread by key hash; in memory for one partition, Arrow IPC files on disk otherwise."""

    def __init__(self, count: int, spill_dir: Path) -> None:
        self.count = max(1, count)
        self.spill_dir = spill_dir
        self._memory: list[pa.Table] = []
        self._writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        self._paths: dict[int, Path] = {}
        self._schema: pa.Schema | None = None

    def add(self, mapped: MappedBatch, key_field: str) -> list[int]:
        """Store a mapped batch; returns the indices of rows with no key, which join no group."""
        keys = _key_column(mapped.records, key_field)
        no_key = keys.is_null()
        table = pa.table(
            {
                _RECORD: mapped.records,
                _LINE: mapped.lines,
                _REASON: _reasons(mapped),
                "__key": keys,
            }
        )
        if keys.null_count:
            table = table.filter(keys.is_valid())
        if self.count == 1:
            self._memory.append(table)
        else:
            self._spill(table)
        rows: list[int] = pc.indices_nonzero(no_key).to_pylist()
        return rows

    def _spill(self, table: pa.Table) -> None:
        parts = _key_hash(table.column("__key").combine_chunks()) % np.uint64(self.count)
        # One stable take groups the rows by partition (in input order within each); a filter
        # per partition scanned the whole unit once per partition.
        order = np.argsort(parts, kind="stable")
        grouped = table.take(pa.array(order))
        ranked = parts[order]
        found, starts = np.unique(ranked, return_index=True)
        stops = [*starts[1:].tolist(), len(ranked)]
        for part, start, stop in zip(found.tolist(), starts.tolist(), stops, strict=True):
            piece = grouped.slice(start, stop - start)
            writer = self._writers.get(int(part))
            if writer is None:
                path = self.spill_dir / f"partition-{int(part):05d}.arrows"
                self._paths[int(part)] = path
                writer = ipc.new_stream(str(path), piece.schema)
                self._writers[int(part)] = writer
            writer.write_table(piece)

    def tables(self) -> Iterator[pa.Table]:
        """Each partition's rows as one table (partition order is deterministic)."""
        if self.count == 1:
            if self._memory:
                yield pa.concat_tables(self._memory, promote_options="permissive")
            return
        for writer in self._writers.values():
            writer.close()
        for part in sorted(self._paths):
            with ipc.open_stream(str(self._paths[part])) as reader:
                yield reader.read_all()
            self._paths[part].unlink(missing_ok=True)

    def close(self) -> None:
        """Remove spill files (after success or failure)."""
        for writer in self._writers.values():
            with contextlib.suppress(OSError, pa.ArrowInvalid):
                writer.close()
        for path in self._paths.values():
            path.unlink(missing_ok=True)


def _key_column(records: pa.StructArray, key_field: str) -> pa.Array:
    names = [f.name for f in records.type]
    if key_field not in names:
        return pa.nulls(len(records), pa.string())
    keys = records.field(key_field)
    return keys if pa.types.is_string(keys.type) else pc.cast(keys, pa.string())


def _reasons(mapped: MappedBatch) -> pa.Array:
    """Per row: the serialised reject of a bad row, null for a good row."""
    texts: list[str | None] = [None] * len(mapped.records)
    bad_rows = pc.indices_nonzero(mapped.bad).to_pylist()
    for row, reject in zip(bad_rows, mapped.rejects, strict=True):
        texts[row] = "\x1f".join((reject.field or "", reject.rule, reject.message))
    return pa.array(texts, pa.string())


def _key_hash(keys: pa.Array) -> np.ndarray:
    """A stable hash of each (non-empty) key's bytes, computed in numpy: position-weighted byte sums."""
    offsets = value_offsets(keys)
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi == lo:
        return np.zeros(len(keys), dtype=np.uint64)
    raw = value_bytes(keys).astype(np.uint64)
    lengths = np.diff(offsets).astype(np.int64)
    pos = np.arange(hi - lo, dtype=np.uint64) - np.repeat((offsets[:-1] - lo).astype(np.uint64), lengths)
    weighted = raw * (pos * np.uint64(2654435761) + np.uint64(40503))
    starts = np.minimum(offsets[:-1] - lo, hi - lo - 1)
    sums = np.add.reduceat(weighted, starts) * (lengths > 0)
    mixed: np.ndarray = sums ^ (sums >> np.uint64(29))
    return mixed


def group_partition(table: pa.Table, grouping: ArrayGrouping, input_name: str) -> GroupedRecords:
    """Fold a partition's rows into one record per key.

    Order lines of one purchase are usually adjacent: then each key is one run of rows and no
    sort (nor the copy of every column it costs) is needed.
    """
    if table.num_rows == 0:
        none = np.array([], dtype=np.int64)
        return GroupedRecords(pa.array([], pa.struct([])), pa.array([], pa.int64()), none, none, none, ())
    starts = _runs(table.column("__key").combine_chunks())
    if len(starts) != pc.count_distinct(table.column("__key")).as_py():  # a key in several runs
        table = table.take(pc.sort_indices(table, [("__key", "ascending"), (_LINE, "ascending")]))
        starts = _runs(table.column("__key").combine_chunks())
    bounds = np.r_[starts, table.num_rows]
    lines = table.column(_LINE).combine_chunks().to_numpy()
    reasons = table.column(_REASON).combine_chunks()
    keep = np.ones(len(starts), dtype=np.bool_)
    rejects: list[Reject] = []
    if reasons.null_count < len(reasons):
        bad_rows = pc.indices_nonzero(reasons.is_valid()).to_numpy()
        for g in np.unique(np.searchsorted(starts, bad_rows, side="right") - 1):
            lo, hi = int(bounds[g]), int(bounds[g + 1])
            keep[g] = False
            group_reasons = reasons.slice(lo, hi - lo).to_pylist()
            rejects.extend(_reject_group(input_name, grouping.key, lines[lo:hi], group_reasons))
    records = table.column(_RECORD).combine_chunks()
    grouped = _fold(records, bounds, keep, grouping)
    first = lines[starts[keep]]
    group_starts, group_stops = bounds[:-1][keep], bounds[1:][keep]
    if len(first) > 1 and not bool(np.all(first[1:] > first[:-1])):
        order = np.argsort(first, kind="stable")
        grouped = grouped.take(pa.array(order))
        first, group_starts, group_stops = first[order], group_starts[order], group_stops[order]
    return GroupedRecords(
        records=grouped,
        first_lines=pa.array(first, pa.int64()),
        lines=lines,
        starts=group_starts,
        stops=group_stops,
        rejects=tuple(rejects),
    )


def _runs(keys: pa.Array) -> np.ndarray:
    """Indices where a run of equal keys starts."""
    if len(keys) == 0:
        return np.array([], dtype=np.int64)
    change = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.r_[True, change])


def _reject_group(
    input_name: str, key: str, lines: np.ndarray, reasons: list[str | None]
) -> Iterator[Reject]:
    first_bad = next(int(line) for line, r in zip(lines, reasons, strict=True) if r is not None)
    for line, reason in zip(lines, reasons, strict=True):
        if reason is not None:
            field, rule, message = reason.split("\x1f", 2)
            yield Reject(input_name, int(line), field or None, rule, message)
        else:
            yield Reject(
                input_name,
                int(line),
                key,
                RejectRule.GROUP_MEMBER.value,
                f"another line of the same {key} (line {first_bad}) was rejected",
            )


def _fold(
    records: pa.StructArray, bounds: np.ndarray, keep: np.ndarray, grouping: ArrayGrouping
) -> pa.StructArray:
    """Record-level fields from each kept group's first row; array fields concatenated."""
    starts = pa.array(bounds[:-1][keep], pa.int64())
    names: list[str] = []
    arrays: list[pa.Array] = []
    for i, field in enumerate(records.type):
        column = records.field(i)
        if field.name in grouping.array_paths and pa.types.is_list(field.type):
            arrays.append(_concat_lists(column, bounds, keep))
        else:
            arrays.append(column.take(starts))
        names.append(field.name)
    return pa.StructArray.from_arrays(arrays, names=names)


def _concat_lists(column: pa.ListArray, bounds: np.ndarray, keep: np.ndarray) -> pa.ListArray:
    """Concatenate the per-row lists of each kept group (rows are contiguous within a group).

    A group's items are contiguous in the list's values, so the grouped list is the same values
    under coarser offsets; filtering it copies the kept groups' items once.
    """
    offsets = column.offsets.to_numpy()
    grouped = pa.ListArray.from_arrays(pa.array(offsets[bounds].astype(np.int32)), column.values)
    kept = grouped.filter(pa.array(keep))
    lengths = np.diff(kept.offsets.to_numpy())
    return pa.ListArray.from_arrays(kept.offsets, kept.values, mask=pa.array(lengths == 0))
