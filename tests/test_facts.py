"""Records with the same facts must get the same explanation, or reusing one would be a lie.

Each test keeps one checker across all its examples, so the first record of each kind is
explained by the compiled validator and later records of that kind reuse its answer. A fact
the schema can see but the facts leave out shows up as a later record getting the reused answer
where its own explanation differs.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from record_gen import batches

from bulkd.encode import encode_ndjson
from bulkd.facts import plan_for, record_facts
from bulkd.schemas import RecordType, load_record_type
from bulkd.validate import Reason, RecordChecker

_BUILTIN = [
    "customer_record", "email_bounce", "email_click", "email_open", "email_send", "email_subscribe",
    "product", "purchase", "return", "sms_click", "sms_send", "sms_subscribe",
]  # fmt: skip


class _Counting(RecordChecker):
    """Counts the records the compiled validator was asked to explain."""

    asked = 0

    def explain(self, record: Any) -> Reason | None:
        self.asked += 1
        return super().explain(record)


def _decoded(records: pa.Array) -> list[Any]:
    """The records as the compiled validator sees them: bulkd's NDJSON, decoded."""
    encoded = encode_ndjson(records)
    return [orjson.loads(line) for line in bytes(encoded.slice_bytes(0, encoded.count)).splitlines()]


def _agree(checker: _Counting, reference: RecordChecker, records: list[Any], seen: dict[str, int]) -> None:
    for record in records:
        own = reference.explain(record)
        assert checker.explain_kind(record) == own, record
        seen["records"] += 1
        seen["refused"] += own is not None


@pytest.mark.parametrize("name", _BUILTIN)
def test_records_of_one_kind_share_their_explanation(name: str) -> None:
    record_type = load_record_type(name)
    assert plan_for(record_type.schema) is not None  # Lexer's schemas stay within the facts
    checker, reference = _Counting(record_type), RecordChecker(record_type)
    seen = {"records": 0, "refused": 0}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(batches(record_type))
    def check(records: pa.Array) -> None:
        _agree(checker, reference, _decoded(records), seen)

    check()
    assert seen["refused"] > 20
    # kinds really repeat: most records reuse an answer (without reuse, asked == records)
    assert checker.asked < seen["records"] / 2


_MIXED = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "multipleOf": 2},
        "tags": {
            "type": "array",
            "items": {"type": "string", "pattern": "^a", "maxLength": 3},
            "maxItems": 2,
        },
        "kind": {"oneOf": [{"const": "x"}, {"enum": ["y", "z"]}, {"type": "object", "required": ["k"]}]},
        "meta": {
            "type": "object",
            "additionalProperties": {"type": "number", "maximum": 5},
            "minProperties": 1,
        },
        "neg": {"not": {"type": "string", "minLength": 2}},
        "when": {"$ref": "#/definitions/When"},
    },
    "required": ["n"],
    "additionalProperties": False,
    "definitions": {
        "When": {"type": "string", "format": "date"},
        "Tag": {"type": "string", "pattern": "^a", "maxLength": 3},
    },
}
_SCALARS = st.sampled_from(
    [0, 1, 2, -2, 2.0, 2.5, 6, 5.0, True, None, "", "a", "ab", "abcd", "b", "2020-02-30"]
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["k", "p", "q"]), inner, max_size=2)
    ),
    max_leaves=5,
)
_RECORDS = st.dictionaries(
    st.sampled_from(["n", "tags", "kind", "meta", "neg", "when", "zz"]), _VALUES, max_size=5
)


def test_every_keyword_the_facts_follow_is_told_apart() -> None:
    """Types, whole floats, lengths, bounds, ``multipleOf``, patterns, formats, ``enum``,
    ``const``, ``oneOf``, ``not``, ``additionalProperties`` (closed and as a schema), references
    and array items, all on values drawn from small pools so that kinds repeat."""
    record_type = RecordType(name="mixed", schema=_MIXED, source="test:mixed")
    checker, reference = _Counting(record_type), RecordChecker(record_type)
    seen = {"records": 0, "refused": 0}

    @settings(max_examples=600, deadline=None)
    @given(st.lists(_RECORDS, min_size=1, max_size=8))
    def check(records: list[dict[str, Any]]) -> None:
        _agree(checker, reference, records, seen)

    check()
    assert seen["refused"] > 100
    assert checker.asked < seen["records"]


def test_whole_and_fractional_floats_are_different_facts() -> None:
    place = plan_for({"type": "object", "properties": {"n": {"type": "integer"}}})
    assert place is not None
    assert record_facts({"n": 2.0}, place) != record_facts({"n": 2.5}, place)
    assert record_facts({"n": 2.0}, place) != record_facts({"n": 2}, place)
    assert record_facts({"n": 3.0}, place) == record_facts({"n": 2.0}, place)


def test_values_the_schema_cannot_see_are_not_facts() -> None:
    place = plan_for(load_record_type("customer_record").schema)
    assert place is not None
    one = {"link": {"email": "a@b.co"}, "first_name": "Ann", "custom_fields": {"tier": "gold"}}
    other = {"link": {"email": "zz@y.org"}, "first_name": "Bo", "custom_fields": {"tier": "tin"}}
    assert record_facts(one, place) == record_facts(other, place)
    assert record_facts(one, place) != record_facts({**other, "link": {"email": "zz.y.org"}}, place)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "object", "properties": {"a": {"if": {"type": "string"}, "then": {"minLength": 2}}}},
        {"type": "object", "properties": {"a": {"type": "array", "items": [{"type": "string"}]}}},
        {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}},
        {"properties": {"a": {"$ref": "#/definitions/A", "minLength": 2}}, "definitions": {"A": {}}},
        {"anyOf": [{"$ref": "#/definitions/A"}], "definitions": {"A": {"dependencies": {"a": ["b"]}}}},
    ],
    ids=["patternProperties", "if-then", "tuple-items", "uniqueItems", "ref-siblings", "deep-unknown"],
)
def test_schemas_beyond_the_facts_are_explained_record_by_record(schema: dict[str, Any]) -> None:
    assert plan_for(schema) is None
    checker = _Counting(RecordType(name="custom", schema=schema, source="test:custom"))
    for _ in range(3):
        checker.explain_kind({"a": "x", "x": 1})
    assert checker.asked == 3


def test_keys_no_property_names_share_one_place() -> None:
    """Keys of an open object come from the data; a place per key would grow without bound."""
    place = plan_for(load_record_type("customer_record").schema)
    assert place is not None
    custom = place.child("custom_fields")
    assert custom.child("tier") is custom.child("a-key-seen-once")
    assert place.child("link") is not place.child("email")  # named keys keep places of their own


@pytest.mark.parametrize(
    "schema",
    [
        {"properties": {"a": {"$ref": "#/definitions/A"}}, "definitions": {"A": {"$ref": "#/definitions/A"}}},
        {"properties": {"a": {"$ref": "https://example.com/a.json"}}},
        {"properties": {"a": {"$ref": "#/definitions/Missing"}}, "definitions": {}},
    ],
    ids=["circular", "remote", "missing"],
)
def test_references_the_facts_cannot_follow_leave_no_plan(schema: dict[str, Any]) -> None:
    assert plan_for(schema) is None
