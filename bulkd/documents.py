"""Mapping for NDJSON sources: each line is already a JSON document.

NDJSON input is usually close to Lexer's shape already, so each line is parsed (orjson),
adjusted as the profile says (renamed and dropped top-level fields, constants, emails trimmed
and lower-cased), validated by the compiled validator and re-serialised. One bad line is one
reject with its line number, never a failed file.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from bulkd.model import NDJSON_COLUMN, Reject, RejectRule, SourceBatch
from bulkd.profile import Profile
from bulkd.schemas import RecordType
from bulkd.shape import EMAIL_FIELDS
from bulkd.validate import RecordChecker

__all__ = ["DocumentMapper"]


class DocumentMapper:
    """Turns raw NDJSON lines into validated JSON texts and rejects."""

    def __init__(
        self, input_name: str, record_type: RecordType, profile: Profile, checker: RecordChecker
    ) -> None:
        self.input = input_name
        self.profile = profile
        self.checker = checker
        self.known = frozenset(record_type.schema.get("properties", {}))
        self._unknown: set[str] = set()
        self._routes: dict[str, tuple[str, ...] | None] = {}
        """Where each top-level key goes (None: dropped or unknown), decided once per key name:
        documents of one file repeat the same few keys millions of times."""
        self._constants = [(tuple(t.split(".")), v) for t, v in profile.constants.items()]

    def map(self, batch: SourceBatch) -> tuple[list[str], list[Reject]]:
        """Valid records as JSON texts (in line order) and one reject per refused line."""
        texts: list[str] = []
        rejects: list[Reject] = []
        column: pa.Array = batch.data.column(NDJSON_COLUMN)
        for raw, line in zip(column.to_pylist(), batch.lines.to_pylist(), strict=True):
            doc, problem = self._parse(raw)
            if problem is not None:
                rejects.append(Reject(self.input, line, None, problem[0], problem[1]))
                continue
            reason = self.checker.explain(doc)
            if reason is None:
                texts.append(orjson.dumps(doc).decode())
            else:
                rejects.append(Reject(self.input, line, *reason))
        return texts, rejects

    def warnings(self) -> list[str]:
        return [
            f"field {name!r} is not part of the record type; it is ignored" for name in sorted(self._unknown)
        ]

    def _parse(self, raw: str) -> tuple[dict[str, Any], None] | tuple[None, tuple[str, str]]:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return None, (RejectRule.JSON_SYNTAX.value, f"not valid JSON (column {exc.colno})")
        if not isinstance(doc, dict):
            return None, (RejectRule.NOT_AN_OBJECT.value, "each line must be a JSON object")
        return self._apply_profile(doc), None

    def _apply_profile(self, doc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        routes = self._routes
        for key, value in doc.items():
            if value is None:
                continue
            path = routes[key] if key in routes else self._route(key)
            if path is None:
                continue
            if len(path) == 1:
                out[path[0]] = value
            else:
                _set(out, path, value)
        for path, constant in self._constants:
            _set(out, path, constant)
        _normalise_emails(out)
        return out

    def _route(self, key: str) -> tuple[str, ...] | None:
        target = self.profile.target(key)
        path = None if target is None else tuple(target.split("."))
        if path is not None and self.known and path[0] not in self.known:
            self._unknown.add(key)
            path = None
        self._routes[key] = path
        return path


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _normalise_emails(value: dict[str, Any] | list[Any]) -> None:
    """Trim and lower-case email fields at any depth, as Lexer's models do.

    In place: the document is the one orjson just parsed (or built from it), so nothing else
    holds it, and rebuilding every nested dict cost more than validating it.
    """
    if isinstance(value, dict):
        for k, v in value.items():  # replacing a value while iterating is fine: no key changes
            if isinstance(v, str):
                if k in EMAIL_FIELDS:
                    value[k] = v.strip().lower()
            elif isinstance(v, dict | list):
                _normalise_emails(v)
        return
    for v in value:
        if isinstance(v, dict | list):
            _normalise_emails(v)
