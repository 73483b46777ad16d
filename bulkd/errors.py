"""The error tree, caught where someone can act on it.

::

    BulkdError
     ├── ConfigError          a setting is wrong; names the key (refuse to start)
     ├── InputError           a whole input file is refused (encoding, headers, truncation);
     │                        names the file; the job fails with no partial output
     ├── ProfileError         a mapping profile cannot be applied; names the profile key
     ├── SchemaError          a record-type schema cannot be loaded or compiled
     ├── RejectThresholdError too many rows were rejected (``--max-reject-ratio``)
     ├── StorageError         local disk trouble (ENOSPC, EIO); intake pauses, work is regenerated
     ├── LedgerError          the state database cannot be used (locked by another instance, corrupt)
     └── UploadError          delivery to the File Upload API failed
          ├── TransientUploadError   worth retrying within the retry budget
          └── TerminalUploadError    retrying cannot help; the chunk (or all uploads, on 401) stops

A single bad row is never an exception: it becomes a :class:`bulkd.model.Reject` value.
Error texts never carry tokens, presigned URLs or cell values.
"""

from __future__ import annotations

__all__ = [
    "BulkdError",
    "ConfigError",
    "InputError",
    "LedgerError",
    "ProfileError",
    "RejectThresholdError",
    "SchemaError",
    "StorageError",
    "TerminalUploadError",
    "TransientUploadError",
    "UploadError",
]


class BulkdError(Exception):
    """Root of every error bulkd raises on purpose."""


class ConfigError(BulkdError):
    """A configuration value is missing or invalid; ``key`` names it (dotted TOML path or env var)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


class InputError(BulkdError):
    """An input file is refused as a whole; the message is one sentence naming the file and cause."""

    def __init__(self, path: str, cause: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {cause}")
        self.path = path
        self.cause = cause
        self.line = line


class ProfileError(BulkdError):
    """A mapping profile is invalid; ``key`` names the offending profile entry."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"profile {source}, key '{key}': {message}")
        self.source = source
        self.key = key


class SchemaError(BulkdError):
    """A record-type schema is unknown, unreadable or cannot be compiled."""


class RejectThresholdError(BulkdError):
    """More rows were rejected than ``max_reject_ratio`` allows."""

    def __init__(self, path: str, rejected: int, rows: int, ratio: float) -> None:
        super().__init__(f"{path}: {rejected} of {rows} rows rejected, above the allowed ratio {ratio:g}")
        self.path = path
        self.rejected = rejected
        self.rows = rows
        self.ratio = ratio


class StorageError(BulkdError):
    """Local storage failed (disk full, I/O error); the affected output is discarded and regenerated."""


class LedgerError(BulkdError):
    """The ledger cannot be opened or written (held by another instance, corrupt, unwritable)."""


class UploadError(BulkdError):
    """Delivering a chunk failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientUploadError(UploadError):
    """A failure that may pass: 408, 429, 5xx, connection errors, expired presigned URLs."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class TerminalUploadError(UploadError):
    """A failure retrying cannot fix: 400, 401, 404, 413, a disallowed URL host."""
