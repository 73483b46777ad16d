"""Mapping profiles: how a source's columns become a record type's fields.

A profile is a small TOML file users keep beside their exports::

    drop = ["internal_id"]            # source columns to ignore
    list_separator = "|"              # cells holding several strings ("a|b")
    naive_offset = "+10:00"           # offset for date-times written without one

    [columns]                         # source column -> schema path
    "Email Address" = "link.email"
    "Points" = "custom_fields.loyalty_points"

    [constants]                       # schema path -> value set on every record
    "link.system_name" = "shopify"

    [types]                           # JSON type of open fields (custom_fields stay strings otherwise)
    "custom_fields.loyalty_points" = "integer"

Without a profile, headers are schema paths already (``link.email``), as with Lexer's converter.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from bulkd.errors import ProfileError

__all__ = ["FIELD_TYPES", "Constant", "Profile", "load_profile"]

FIELD_TYPES = frozenset({"string", "integer", "number", "boolean", "date", "date-time"})
"""Types a profile may give to open fields such as ``custom_fields.*``."""

Constant = str | int | float | bool

_PATH = re.compile(r"^[^.\s][^.]*(\.[^.\s][^.]*)*$")
_OFFSET = re.compile(r"^(Z|[+-]\d{2}:\d{2})$")
_KNOWN_KEYS = frozenset({"columns", "constants", "types", "drop", "list_separator", "naive_offset"})


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated mapping profile. The default profile maps every header to itself."""

    name: str = "default"
    columns: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    constants: Mapping[str, Constant] = field(default_factory=lambda: MappingProxyType({}))
    types: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    drop: frozenset[str] = frozenset()
    list_separator: str | None = None
    naive_offset: str = "Z"

    def target(self, column: str) -> str | None:
        """The schema path a source column maps to, or None when the profile drops it."""
        if column in self.drop:
            return None
        return self.columns.get(column, column.strip())


def load_profile(path: Path) -> Profile:
    """Read and validate a profile; every problem names the profile key at fault."""
    source = str(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(source, "<file>", f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(source, "<file>", f"not valid TOML: {exc}") from exc
    for key in doc:
        if key not in _KNOWN_KEYS:
            raise ProfileError(source, key, f"unknown key; expected one of {sorted(_KNOWN_KEYS)}")
    return Profile(
        name=path.stem,
        columns=MappingProxyType(_paths(source, "columns", doc.get("columns", {}))),
        constants=MappingProxyType(_constants(source, doc.get("constants", {}))),
        types=MappingProxyType(_types(source, doc.get("types", {}))),
        drop=frozenset(_string_list(source, "drop", doc.get("drop", []))),
        list_separator=_optional_str(source, "list_separator", doc.get("list_separator")),
        naive_offset=_offset(source, doc.get("naive_offset", "Z")),
    )


def _paths(source: str, section: str, table: object) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ProfileError(source, section, "must be a table of source column = schema path")
    for column, target in table.items():
        if not isinstance(target, str) or not _PATH.match(target):
            raise ProfileError(source, f"{section}.{column}", "must be a dotted schema path like link.email")
    return dict(table)


def _constants(source: str, table: object) -> dict[str, Constant]:
    if not isinstance(table, dict):
        raise ProfileError(source, "constants", "must be a table of schema path = value")
    for target, value in table.items():
        if not _PATH.match(target):
            raise ProfileError(source, f"constants.{target}", "must be a dotted schema path")
        if not isinstance(value, str | int | float | bool):
            raise ProfileError(source, f"constants.{target}", "must be a string, number or boolean")
    return dict(table)


def _types(source: str, table: object) -> dict[str, str]:
    if not isinstance(table, dict):
        raise ProfileError(source, "types", "must be a table of schema path = type")
    for target, kind in table.items():
        if kind not in FIELD_TYPES:
            raise ProfileError(source, f"types.{target}", f"must be one of {sorted(FIELD_TYPES)}")
    return dict(table)


def _string_list(source: str, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(source, key, "must be a list of column names")
    return list(value)


def _optional_str(source: str, key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value == "":
        raise ProfileError(source, key, "must be a non-empty string")
    return value


def _offset(source: str, value: object) -> str:
    if not isinstance(value, str) or not _OFFSET.match(value):
        raise ProfileError(source, "naive_offset", "must be Z or an offset like +10:00")
    return value
