"""Values that travel between pipeline stages.

Every stage takes and returns these frozen dataclasses (or Arrow arrays), never loose dicts, so
that a stage's contract is visible in its signature and checked by mypy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

__all__ = [
    "NDJSON_COLUMN",
    "Reject",
    "RejectRule",
    "SourceBatch",
]

NDJSON_COLUMN = "__ndjson_line__"
"""Name of the single string column an NDJSON source yields: one raw JSON text per row."""


class RejectRule(StrEnum):
    """Why a row was rejected. Schema keywords (``required``, ``enum``...) come from the validator."""

    RAGGED_ROW = "ragged_row"
    EMPTY_ROW = "empty_row"
    INVALID_UTF8 = "invalid_utf8"
    NUL_BYTE = "nul_byte"
    FIELD_TOO_LARGE = "field_too_large"
    LINE_TOO_LARGE = "line_too_large"
    JSON_SYNTAX = "json_syntax"
    NOT_AN_OBJECT = "not_an_object"
    TYPE = "type"
    FORMAT = "format"
    GROUP_MEMBER = "group_member_rejected"
    GROUP_CONFLICT = "group_conflict"
    MISSING_KEY = "missing_group_key"


@dataclass(frozen=True, slots=True)
class Reject:
    """One rejected input row. Never carries the cell value: rows may hold personal data.

    ``rule`` is a :class:`RejectRule` value or the JSON Schema keyword that failed
    (``required``, ``enum``, ``pattern``, ``anyOf``...).
    """

    input: str
    """The input file, as the user named it."""
    line: int
    """1-based physical line where the row starts (the row number for Parquet)."""
    field: str | None
    """Dotted path of the offending field (``link.email``), or None when the whole row is bad."""
    rule: str
    message: str

    def as_json(self) -> dict[str, object]:
        """The reject file's line for this row."""
        return {
            "input": self.input,
            "line": self.line,
            "field": self.field,
            "rule": self.rule,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """A slice of an input file as the reader hands it on.

    ``data`` holds only rows the reader could parse. For CSV/TSV it has one ``string`` column per
    header (no type inference, ever); for Parquet the file's own (possibly nested) columns; for
    NDJSON a single ``string`` column :data:`NDJSON_COLUMN` with one raw JSON text per row.
    ``lines[i]`` is the 1-based line (Parquet: row number) of ``data`` row ``i``.
    Rows the reader could not parse are in ``rejects``, so that
    ``data.num_rows + len(rejects)`` rows of the input are accounted for by this batch.
    """

    data: pa.RecordBatch
    lines: pa.Int64Array
    rejects: tuple[Reject, ...]
    bytes_read: int
    """Input bytes (compressed, as on disk) consumed so far, for progress reporting."""

    @property
    def rows(self) -> int:
        """Input rows this batch accounts for: parsed plus rejected by the reader."""
        return int(self.data.num_rows) + len(self.rejects)
