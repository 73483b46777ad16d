"""Logging for the daemon: JSON lines in containers, readable lines on a terminal, always redacted.

Redaction is a handler filter, not a habit: every record is rendered to its final text and then
scrubbed (known secrets replaced, URL query strings cut) before any formatter sees it, so a
presigned URL inside an aiohttp exception or a token in a library's debug line cannot reach the
output whatever the caller wrote. Structured fields come from ``extra={"event": ..., ...}``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Literal

import orjson

from bulkd.redact import redact_text
from bulkd.secret import Secret

__all__ = ["JsonFormatter", "RedactingFilter", "setup_logging"]

LogFormat = Literal["auto", "json", "text"]

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Renders each record's message once, scrubbed; exception texts are scrubbed too."""

    def __init__(self, secrets: Iterable[Secret | None] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = self._scrub(formatter.formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self._scrub(value))
        return True

    def _scrub(self, text: str) -> str:
        return redact_text(text, self._secrets)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in doc:
                doc[key] = value
        if record.exc_text:
            doc["exception"] = record.exc_text
        return orjson.dumps(doc, default=str).decode()


def setup_logging(
    fmt: LogFormat = "auto", level: str = "info", *, secrets: Iterable[Secret | None] = ()
) -> logging.Handler:
    """Send every log record to stderr through the redaction filter; returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
