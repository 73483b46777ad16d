"""Registry of the Lexer record types and the JSON Schema (draft 7) bulkd ships for each.

The files beside this module are bulkd's own copies of Lexer's published schemas: the same
properties, required lists, types, enums and formats (a test compares them with the upstream
files), without the upstream prose. A custom schema file may be named instead for custom
attribute loads; it is read from trusted configuration only, because compiling a schema
generates and executes code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from bulkd.errors import SchemaError

__all__ = [
    "LEXER_SCHEMA_VERSION",
    "RECORD_TYPES",
    "ArrayGrouping",
    "RecordType",
    "load_record_type",
]

RECORD_TYPES: tuple[str, ...] = (
    "customer_record",
    "product",
    "purchase",
    "return",
    "email_send",
    "email_open",
    "email_click",
    "email_bounce",
    "email_subscribe",
    "sms_send",
    "sms_click",
    "sms_subscribe",
)

LEXER_SCHEMA_VERSION: str = (
    resources.files(__package__).joinpath("LEXER_VERSION").read_text(encoding="utf-8").strip()
)

# Record types whose rows are order lines: every row with the same key contributes one item to
# each array path, and all rows of a key become one record.
_GROUP_KEYS: dict[str, str] = {"purchase": "purchase_id", "return": "return_id"}


@dataclass(frozen=True, slots=True)
class ArrayGrouping:
    """How flat rows fold into one record with arrays of objects (purchases, returns)."""

    key: str
    """Top-level property whose value identifies the record (``purchase_id``)."""
    array_paths: tuple[str, ...]
    """Top-level properties that are arrays of objects (``products``, ``payment_types``...)."""


@dataclass(frozen=True, slots=True)
class RecordType:
    """A named record type with its schema document."""

    name: str
    schema: dict[str, Any] = field(repr=False, hash=False, compare=False)
    source: str
    """Where the schema came from: ``bulkd:<name>`` or a file path."""

    @property
    def grouping(self) -> ArrayGrouping | None:
        """The grouping rule for order-line record types, or None for one-row-one-record types."""
        key = _GROUP_KEYS.get(self.name)
        if key is None:
            return None
        return ArrayGrouping(key=key, array_paths=object_array_properties(self.schema))


def object_array_properties(schema: dict[str, Any]) -> tuple[str, ...]:
    """Top-level properties whose items are objects (after resolving ``$ref``)."""
    out = []
    for name, prop in schema.get("properties", {}).items():
        if prop.get("type") != "array":
            continue
        items = resolve_ref(schema, prop.get("items", {}))
        if items.get("type") == "object" or "properties" in items:
            out.append(name)
    return tuple(out)


ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "definitions"}
)
"""Keywords that validate nothing (``default`` neither: validators are compiled without defaults)."""


def resolve_ref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``#/definitions/...`` references, and ``allOf`` wrappers of one form that
    carry nothing else but annotations (a wrapper with its own keywords is a schema of its own:
    dropping them let the fast path pass values the compiled validator refuses)."""
    seen = 0
    while True:
        if "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                raise SchemaError(f"only local references are supported, got {ref!r}")
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part]
            node = target
        elif "allOf" in node and len(node["allOf"]) == 1 and set(node) <= ANNOTATIONS | {"allOf"}:
            node = node["allOf"][0]
        else:
            return node
        seen += 1
        if seen > 64:
            raise SchemaError("reference cycle in schema")


@cache
def _builtin(name: str) -> RecordType:
    path = resources.files(__package__).joinpath(f"{name}.json")
    return RecordType(name=name, schema=json.loads(path.read_text(encoding="utf-8")), source=f"bulkd:{name}")


def load_record_type(name: str, schema_file: Path | None = None) -> RecordType:
    """Return the record type ``name``, using ``schema_file`` instead of the shipped schema if given.

    Raises:
        SchemaError: unknown record type, unreadable or non-object schema file.
    """
    if name not in RECORD_TYPES:
        raise SchemaError(f"unknown record type {name!r}; expected one of: {', '.join(RECORD_TYPES)}")
    if schema_file is None:
        return _builtin(name)
    try:
        doc = json.loads(schema_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read schema file {schema_file}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type", "object") != "object":
        raise SchemaError(f"schema file {schema_file} must describe a JSON object")
    return RecordType(name=name, schema=doc, source=str(schema_file))
