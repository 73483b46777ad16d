"""The shape of a record type: what Arrow type each schema path is coerced to.

A JSON Schema says much more than the mapping stage needs; this module boils it down to a tree
of :class:`Shape` nodes (object, array, or a scalar kind) so coercion can be planned once per
file. ``anyOf`` over objects (Lexer's seven ``link`` variants) becomes one closed object holding
the union of the variants' properties: which variant applies is the validator's question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bulkd.schemas import resolve_ref

__all__ = ["EMAIL_FIELDS", "Kind", "Shape", "shape_for_type", "shape_of"]

EMAIL_FIELDS = frozenset({"email", "email_sha256", "email_md5"})
"""Field names Lexer trims and lower-cases wherever they appear."""


class Kind(StrEnum):
    """What a value is coerced to."""

    OBJECT = "object"
    ARRAY = "array"
    STRING = "string"
    EMAIL = "email"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "date-time"
    ANY = "any"
    """No declared type (open objects' members): kept as the source gives it."""


@dataclass(frozen=True, slots=True)
class Shape:
    """One node of the record type's shape tree."""

    kind: Kind
    children: dict[str, Shape] = field(default_factory=dict)
    """Declared properties of an object."""
    extra: Shape | None = None
    """Shape of undeclared members (``additionalProperties`` schema), if any."""
    closed: bool = False
    """Undeclared members are errors (``additionalProperties: false``): keep them for the validator."""
    items: Shape | None = None
    """Shape of an array's items."""

    @property
    def is_open(self) -> bool:
        """An object that takes any member (``custom_fields``)."""
        return self.kind is Kind.OBJECT and not self.children and self.extra is None and not self.closed


_SCALARS = {"integer": Kind.INTEGER, "number": Kind.NUMBER, "boolean": Kind.BOOLEAN}


def shape_for_type(name: str) -> Shape:
    """Shape for a profile's ``types`` entry (``integer``, ``date-time``...)."""
    return Shape(Kind(name))


def shape_of(root: dict[str, Any], node: dict[str, Any] | None = None, name: str = "") -> Shape:
    """Derive the shape of ``node`` (default: the whole schema ``root``)."""
    node = resolve_ref(root, root if node is None else node)
    wrapped = node.get("allOf", ())
    if len(wrapped) == 1 and "type" not in node:  # the type comes from the one form
        return shape_of(root, wrapped[0], name)
    variants = node.get("anyOf") or node.get("oneOf")
    if variants:
        return _union(root, [resolve_ref(root, v) for v in variants], name)
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        return _object(root, node)
    if kind == "array":
        items = node.get("items")
        return Shape(
            Kind.ARRAY, items=shape_of(root, items, name) if isinstance(items, dict) else Shape(Kind.ANY)
        )
    if kind in _SCALARS:
        return Shape(_SCALARS[kind])
    if kind == "string" or "enum" in node:
        return Shape(_string_kind(node, name))
    return Shape(Kind.ANY)


def _string_kind(node: dict[str, Any], name: str) -> Kind:
    fmt = node.get("format")
    if fmt == "date":
        return Kind.DATE
    if fmt == "date-time":
        return Kind.DATETIME
    return Kind.EMAIL if name in EMAIL_FIELDS else Kind.STRING


def _object(root: dict[str, Any], node: dict[str, Any]) -> Shape:
    children = {k: shape_of(root, v, k) for k, v in node.get("properties", {}).items()}
    additional = node.get("additionalProperties")
    extra = shape_of(root, additional) if isinstance(additional, dict) else None
    return Shape(Kind.OBJECT, children=children, extra=extra, closed=additional is False)


def _union(root: dict[str, Any], variants: list[dict[str, Any]], name: str) -> Shape:
    shapes = [shape_of(root, v, name) for v in variants]
    if not all(s.kind is Kind.OBJECT for s in shapes):
        return shapes[0] if len({s.kind for s in shapes}) == 1 else Shape(Kind.ANY)
    children: dict[str, Shape] = {}
    for s in shapes:
        for key, child in s.children.items():
            children.setdefault(key, child)
    return Shape(Kind.OBJECT, children=children, closed=all(s.closed for s in shapes))
