"""The facts a schema can see in a record, so that refused records are explained once per kind.

Explaining a refused record took 10-31 µs (customer records: a missing link, a link whose email
misses the pattern): the compiled validator raises an exception for every ``anyOf`` form that
fails, and the explanation then runs the form the record looks like again.
On a file with 20 % bad rows that was half the CPU of the whole conversion, and the explanations
held the GIL, so the two worker threads took turns.

Yet what the validator answers depends on few facts about a record:

* its shape: which keys each object has (in order), how long each array is, and each value's
  JSON type (for a float, also whether it is whole, which decides ``integer``);
* for each value, whether each keyword test that the schema can apply at that place passes
  (``pattern``, ``format``, ``enum``, ``const``, lengths, bounds, ``multipleOf``).

Its messages name places and rules, never values. So two records with the same facts get the
same answer, and a file's refused rows fall into a handful of kinds. The validator explains the
first record of each kind; the others reuse that answer.

The facts are exact by construction. Each keyword test is a validator that fastjsonschema compiles
from that keyword alone, with bulkd's format checkers. A place collects every subschema that can
apply there: properties, ``additionalProperties`` schemas, array items, and the forms of ``anyOf``,
``allOf``, ``oneOf`` and ``not``. A schema that uses any keyword outside this set has no plan, and
its refused records are explained one by one, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from functools import cache
from typing import Any

import fastjsonschema
import orjson

from bulkd.errors import SchemaError
from bulkd.formats import FORMAT_CHECKERS
from bulkd.schemas import ANNOTATIONS, resolve_ref

__all__ = ["Place", "plan_for", "record_facts"]

_TESTS = frozenset(
    {
        "enum", "const", "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    }
)  # fmt: skip
"""Keywords that test a value alone: each becomes a compiled test whose outcome is a fact."""

_SHAPE = frozenset({"type", "required", "minProperties", "maxProperties", "minItems", "maxItems"})
"""Keywords decided by the shape alone (key sets, lengths, JSON types), which the facts hold."""

_NESTED = frozenset({"properties", "additionalProperties", "items", "anyOf", "allOf", "oneOf", "not"})

_KNOWN = _TESTS | _SHAPE | _NESTED | ANNOTATIONS

_STRUCTURED = (_SHAPE - {"type"}) | {"properties", "additionalProperties", "items"}
"""Keywords that look inside an object or array, or at its keys or length."""

_LAYOUTS_KEPT = 4096

Test = Callable[[Any], Any]


class Place:
    """Everything a schema can apply at one place in a record: the subschemas and their tests.

    Children are worked out when a record first has that key, since ``additionalProperties``
    makes the set of places as open as the data.
    """

    __slots__ = ("_children", "_deep", "_items", "_others", "_root", "_schemas", "shallow", "tests")

    def __init__(self, root: dict[str, Any], schemas: list[dict[str, Any]]) -> None:
        self._root = root
        self._schemas = schemas
        self._children: dict[str, Place] = {}
        self._deep: dict[tuple[str, ...], tuple[tuple[str, Place], ...]] = {}
        self._items: Place | None = None
        self._others: Place | None = None
        tests: dict[bytes, Test] = {}
        for schema in schemas:
            for keyword in _TESTS.intersection(schema):
                spec = orjson.dumps({keyword: schema[keyword]}, option=orjson.OPT_SORT_KEYS)
                tests.setdefault(spec, _test(spec))
        self.tests = tuple(tests.values())
        self.shallow = not self.tests and not any(_STRUCTURED.intersection(s) for s in schemas)
        """Only the value's JSON type can matter here (which the parent's facts hold)."""

    def child(self, key: str) -> Place:
        place = self._children.get(key)
        if place is None:
            if not any(key in schema.get("properties", ()) for schema in self._schemas):
                return self._unnamed()  # kept once, not per key: keys come from the data
            found: list[dict[str, Any]] = []
            for schema in self._schemas:
                properties = schema.get("properties", {})
                if key in properties:
                    found.append(properties[key])
                elif isinstance(schema.get("additionalProperties"), dict):
                    found.append(schema["additionalProperties"])
            place = self._children[key] = Place(self._root, _applying(self._root, found))
        return place

    def _unnamed(self) -> Place:
        """The place of every key that no properties name: only ``additionalProperties`` reach it."""
        place = self._others
        if place is None:
            found = [
                s["additionalProperties"]
                for s in self._schemas
                if isinstance(s.get("additionalProperties"), dict)
            ]
            place = self._others = Place(self._root, _applying(self._root, found))
        return place

    def deep(self, layout: tuple[str, ...]) -> tuple[tuple[str, Place], ...]:
        """The keys of an object with these keys (in this order) whose values need more facts
        than their type. Objects of one record type have few layouts, so this is kept per layout."""
        known = self._deep.get(layout)
        if known is None:
            known = tuple((key, place) for key in layout if not (place := self.child(key)).shallow)
            if len(self._deep) < _LAYOUTS_KEPT:
                self._deep[layout] = known
        return known

    def items(self) -> Place:
        if self._items is None:
            found = [s["items"] for s in self._schemas if isinstance(s.get("items"), dict)]
            self._items = Place(self._root, _applying(self._root, found))
        return self._items


def record_facts(record: Any, place: Place) -> Hashable:
    """The facts about ``record`` (a decoded JSON value) that the schemas at ``place`` can see."""
    return (type(record), _wholes((record,)), _facts(record, place))


def _facts(value: Any, place: Place) -> Hashable:
    """The facts about a value whose JSON type (and wholeness) the caller holds already."""
    passed = tuple([_passes(test, value) for test in place.tests]) if place.tests else ()
    kind = type(value)
    if kind is dict:
        layout = tuple(value)
        kinds = tuple(map(type, value.values()))
        inner = tuple([_facts(value[key], child) for key, child in place.deep(layout)])
        return (passed, layout, kinds, _wholes(value.values()) if float in kinds else (), inner)
    if kind is list:
        items = place.items()
        kinds = tuple(map(type, value))
        inner = () if items.shallow else tuple([_facts(item, items) for item in value])
        return (passed, kinds, _wholes(value) if float in kinds else (), inner)
    return passed


def _wholes(values: Iterable[Any]) -> tuple[bool, ...]:
    """Which floats are whole: ``integer`` accepts ``2.0`` (draft 6 and later) but not ``2.5``."""
    return tuple([v.is_integer() for v in values if type(v) is float])


def plan_for(schema: dict[str, Any]) -> Place | None:
    """The root place of ``schema``, or None when it uses a keyword the facts cannot follow."""
    return _plan(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))


@cache
def _plan(text: bytes) -> Place | None:
    """Cached by content, like the compiled validators: a daemon converts many files of a type."""
    root = orjson.loads(text)
    try:
        if not all(_followable(s) for s in _reachable(root)):
            return None
    except (SchemaError, KeyError, TypeError):  # a remote, missing or circular reference
        return None
    return Place(root, _applying(root, [root]))


def _followable(schema: dict[str, Any]) -> bool:
    if not set(schema) <= _KNOWN | {"$ref"}:
        return False
    if "$ref" in schema and not set(schema) <= ANNOTATIONS | {"$ref"}:
        return False  # draft 7 ignores a reference's siblings, but not every validator does
    return not isinstance(schema.get("items"), list)  # tuple-style items: positions matter


def _reachable(root: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every subschema that can apply somewhere, each once (references may form cycles)."""
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        schema = stack.pop()
        if not isinstance(schema, dict) or id(schema) in seen:
            continue
        seen.add(id(schema))
        yield schema
        if "$ref" in schema:
            stack.append(resolve_ref(root, schema))
        stack.extend(schema.get("properties", {}).values())
        stack.extend(schema.get(k) for k in ("additionalProperties", "items", "not"))
        for keyword in ("anyOf", "allOf", "oneOf"):
            stack.extend(schema.get(keyword, ()))


def _applying(root: dict[str, Any], schemas: list[Any]) -> list[dict[str, Any]]:
    """``schemas`` with references followed and the forms of ``anyOf``/``allOf``/``oneOf``/``not``
    added: all apply at the same place. Boolean schemas are constants and add no fact."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    stack = list(schemas)
    while stack:
        schema = stack.pop()
        if isinstance(schema, dict):
            schema = resolve_ref(root, schema)  # every reference was followed once by _reachable
        if not isinstance(schema, dict) or id(schema) in seen:
            continue
        seen.add(id(schema))
        out.append(schema)
        for keyword in ("anyOf", "allOf", "oneOf"):
            stack.extend(schema.get(keyword, ()))
        if "not" in schema:
            stack.append(schema["not"])
    return out


@cache
def _test(spec: bytes) -> Test:
    """One keyword, compiled alone, as the record type's validator is compiled."""
    return fastjsonschema.compile(orjson.loads(spec), formats=FORMAT_CHECKERS, use_default=False)


def _passes(test: Test, value: Any) -> bool:
    try:
        test(value)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True
