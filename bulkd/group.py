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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import ipc

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
    member_lines: list[list[int]]
    """Lines of every row of each group (to reject them all if the record is refused)."""
    rejects: tuple[Reject, ...]


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
        ).filter(keys.is_valid())
        if self.count == 1:
            self._memory.append(table)
        else:
            self._spill(table)
        rows: list[int] = pc.indices_nonzero(no_key).to_pylist()
        return rows

    def _spill(self, table: pa.Table) -> None:
        parts = np.array(
            [zlib.crc32(k.encode()) % self.count for k in table.column("__key").to_pylist()], dtype=np.int64
        )
        for part in np.unique(parts):
            piece = table.filter(pa.array(parts == part))
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


def group_partition(table: pa.Table, grouping: ArrayGrouping, input_name: str) -> GroupedRecords:
    """Fold a partition's rows into one record per key."""
    if table.num_rows == 0:
        return GroupedRecords(pa.array([], pa.struct([])), pa.array([], pa.int64()), [], ())
    order = pc.sort_indices(table, [("__key", "ascending"), (_LINE, "ascending")])
    table = table.take(order)
    keys = table.column("__key").combine_chunks()
    starts = np.flatnonzero(np.r_[True, pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)])
    bounds = np.r_[starts, len(keys)]
    lines = table.column(_LINE).combine_chunks().to_numpy()
    reasons = table.column(_REASON).combine_chunks()
    bad_rows = set(pc.indices_nonzero(reasons.is_valid()).to_pylist())
    reason_list = reasons.to_pylist() if bad_rows else []
    keep: list[int] = []
    rejects: list[Reject] = []
    for g in range(len(starts)):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        if bad_rows.isdisjoint(range(lo, hi)):
            keep.append(g)
        else:
            rejects.extend(_reject_group(input_name, grouping.key, lines[lo:hi], reason_list[lo:hi]))
    records = table.column(_RECORD).combine_chunks()
    grouped = _fold(records, bounds, keep, grouping)
    first = lines[starts[keep]] if keep else np.array([], dtype=np.int64)
    order_by_line = np.argsort(first, kind="stable")
    members = [lines[int(bounds[g]) : int(bounds[g + 1])].tolist() for g in keep]
    return GroupedRecords(
        records=grouped.take(pa.array(order_by_line)),
        first_lines=pa.array(first[order_by_line], pa.int64()),
        member_lines=[members[i] for i in order_by_line],
        rejects=tuple(rejects),
    )


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
    records: pa.StructArray, bounds: np.ndarray, keep: list[int], grouping: ArrayGrouping
) -> pa.StructArray:
    """Record-level fields from each kept group's first row; array fields concatenated."""
    starts = pa.array(bounds[keep], pa.int64())
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


def _concat_lists(column: pa.ListArray, bounds: np.ndarray, keep: list[int]) -> pa.ListArray:
    """Concatenate the per-row lists of each kept group (rows are contiguous within a group)."""
    offsets = column.offsets.to_numpy()
    values = column.values
    starts = offsets[bounds[keep]]
    stops = offsets[bounds[np.asarray(keep, dtype=np.int64) + 1]]
    lengths = stops - starts
    take = (
        np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])
        if keep
        else np.array([], np.int64)
    )
    items = values.take(pa.array(take, pa.int64()))
    new_offsets = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    return pa.ListArray.from_arrays(new_offsets, items, mask=pa.array(lengths == 0))
