"""The vectorised fast path must agree with the compiled validator, row for row."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from bulkd import patterns
from bulkd.encode import encode_ndjson
from bulkd.schemas import RecordType, load_record_type, resolve_ref
from bulkd.validate import FastChecker, RecordChecker, SchemaViolation, compile_validator

_UPSTREAM = Path(__file__).resolve().parents[1].parent / "shared" / "lexer-schemas" / "jsonschema"

# (valid, invalid) spellings: most draws are valid so that whole rows often are.
_DATES = (
    ["1990-02-28", "2000-02-29"],
    [
        "1990-02-31",
        "1900-02-29",
        "1990-13-01",
        "0000-01-01",
        "1990-1-1",
        "١٩٩٠-٠١-٠١",  # Arabic-Indic digits: not an RFC 3339 date
        "1990-01-01\n",
        "",
    ],
)
_DATETIMES = (
    ["2023-03-06T12:26:47Z", "2023-03-06T12:26:47.25+10:00", "2023-03-06t12:26:47z"],
    [
        "2023-02-29T12:00:00Z",
        "2023-03-06T24:00:00Z",
        "2023-03-06T12:60:00Z",
        "2023-03-06T12:00:60Z",
        "2023-03-06T12:00:00+24:00",
        "2023-03-06T12:00:00",
        "2023-03-06 12:00:00Z",
        "2023-03-06T1٢:00:00Z",
    ],
)
_EMAILS = (
    ["jane@example.com", "a.b+c@x-y.co.uk", "JANE@EXAMPLE.COM"],
    ["jane@example.com\n", "jane@@example.com", "jane example@x.com", "jane@localhost", "", "jané@x.com"],
)
_URIS = (["https://example.com/a.png", "ftp://x/y", "mailto:x@y.z"], ["not a uri", "", "x:a\vb", "h:" * 1042])
_NUMBERS = (
    [0.0, 1.0, 2.5, 89.9999, -90.0, 179.99, -180.0, 1e20, -1e-7],
    [-0.5, 90.0, -90.5, 180.0, -180.5],
)
_BAD_FLOATS = [math.nan, math.inf, -math.inf]
_TEXT = st.text(alphabet=st.sampled_from('ab Z9é"\\\n\x01😀'), max_size=4)


class _Gen:
    """Draws JSON-ish values for a schema node: mostly valid, often subtly not."""

    def __init__(self, draw: st.DrawFn, root: dict[str, Any], int_as_float: bool, bad_floats: bool) -> None:
        self.draw = draw
        self.root = root
        self.int_as_float = int_as_float
        self.bad_floats = bad_floats

    def pick(self, pools: tuple[list[Any], list[Any]]) -> Any:
        good, bad = pools
        return self.draw(st.sampled_from(bad if self.draw(st.integers(0, 5)) == 0 else good))

    def value(self, node: dict[str, Any], name: str, depth: int) -> Any:
        node = resolve_ref(self.root, node)
        variants = node.get("anyOf") or node.get("allOf")
        if variants:
            return self.link(variants, depth) if name == "link" else self.value(variants[0], name, depth)
        if "enum" in node:
            return self.pick((list(node["enum"]), ["bogus", node["enum"][0].upper()]))
        kind = node.get("type")
        if kind == "object" or "properties" in node:
            return self.object(node, depth)
        if kind == "array":
            items = node.get("items", {})
            count = self.draw(st.integers(0, 3 if depth < 3 else 0))
            return [self.value(items, name, depth + 1) for _ in range(count)]
        if kind == "integer":
            value = self.draw(st.sampled_from([-1, 0, 1, 3, 2**40]))
            if self.int_as_float:
                return float(value) if self.draw(st.booleans()) else value + 0.5
            return value
        if kind == "number":
            return self.pick((_NUMBERS[0], _NUMBERS[1] + (_BAD_FLOATS if self.bad_floats else [])))
        if kind == "boolean":
            return self.draw(st.booleans())
        return self.string(node)

    def string(self, node: dict[str, Any]) -> str:
        fmt = node.get("format")
        if fmt == "date":
            return self.pick(_DATES)
        if fmt == "date-time":
            return self.pick(_DATETIMES)
        if fmt == "uri":
            return self.pick(_URIS)
        if "pattern" in node:
            return self.pick(_EMAILS)
        return self.draw(_TEXT)

    def object(self, node: dict[str, Any], depth: int) -> dict[str, Any]:
        props = node.get("properties", {})
        required = set(node.get("required", ()))
        out: dict[str, Any] = {}
        for key, sub in props.items():
            keep = self.draw(st.integers(0, 29)) > 0 if key in required else self.draw(st.integers(0, 2)) == 0
            if keep and depth < 4:
                out[key] = self.value(sub, key, depth + 1)
        extra = node.get("additionalProperties")
        if not props and depth < 4 and self.draw(st.booleans()):
            if isinstance(extra, dict):  # product options: arrays of strings
                out["size"] = [self.draw(_TEXT) for _ in range(self.draw(st.integers(0, 2)))]
            else:  # custom_fields: open
                out["points"] = self.draw(st.sampled_from(["12", "x"]))
        return out

    def link(self, variants: list[dict[str, Any]], depth: int) -> dict[str, Any]:
        chosen = self.draw(st.sampled_from(variants))
        link = self.object(resolve_ref(self.root, chosen), depth + 1)
        if self.draw(st.integers(0, 9)) == 0:  # a key of another variant: no variant matches
            link["mobile" if "mobile" not in link else "email_md5"] = "61400000000"
        return link


@st.composite
def _batches(draw: st.DrawFn, record_type: RecordType) -> pa.Array:
    gen = _Gen(draw, record_type.schema, draw(st.booleans()), draw(st.booleans()))
    rows = [gen.object(record_type.schema, 0) for _ in range(draw(st.integers(1, 8)))]
    return pa.array(rows)


def _compiled_ok(record_type: RecordType, texts: list[str]) -> list[bool]:
    validate = compile_validator(record_type)
    out = []
    for text in texts:
        try:
            validate(orjson.loads(text))
        except SchemaViolation:
            out.append(False)
        else:
            out.append(True)
    return out


def _upstream_validator(name: str) -> Draft7Validator | None:
    path = _UPSTREAM / f"{name}.json"
    if not path.exists():
        return None
    return Draft7Validator(json.loads(path.read_text()), format_checker=Draft7Validator.FORMAT_CHECKER)


def _texts(records: pa.StructArray) -> list[str]:
    """One JSON text per record, as bulkd writes them."""
    encoded = encode_ndjson(records)
    return bytes(encoded.slice_bytes(0, encoded.count)).decode().split("\n")[:-1]


@pytest.mark.parametrize("name", ["customer_record", "purchase", "product", "email_subscribe"])
def test_fast_path_agrees_with_compiled_validator(name: str) -> None:
    record_type = load_record_type(name)
    fast = FastChecker(record_type)
    upstream = _upstream_validator(name)
    seen = {True: 0, False: 0}

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_batches(record_type))
    def check(records: pa.Array) -> None:
        texts = _texts(records)
        compiled = _compiled_ok(record_type, texts)
        assert fast.check(records).to_pylist() == compiled, texts
        for text, ok in zip(texts, compiled, strict=True):
            seen[ok] += 1
            if ok and upstream is not None:
                errors = [e.message for e in upstream.iter_errors(orjson.loads(text))]
                assert errors == [], text

    check()
    # the generator really produces both kinds of rows
    assert seen[True] > 20
    assert seen[False] > 20


def test_record_checker_names_field_and_line() -> None:
    record_type = load_record_type("email_subscribe")
    records = pa.array(
        [
            {
                "link": {"email": "a@b.co"},
                "action_at": "2023-01-01T00:00:00Z",
                "email_id": "e1",
                "status": "subscribed",
            },
            {
                "link": {"email": "a@b.co"},
                "action_at": "2023-01-01T00:00:00Z",
                "email_id": "e1",
                "status": "maybe",
            },
            {
                "link": {"email": "a@b.co"},
                "action_at": "2023-02-30T00:00:00Z",
                "email_id": "e1",
                "status": "subscribed",
            },
        ]
    )
    verdict = RecordChecker(record_type).verdict("in.csv", records, pa.array([2, 3, 4], pa.int64()))
    assert verdict.valid.to_pylist() == [True, False, False]
    assert [(r.line, r.field, r.rule) for r in verdict.rejects] == [
        (3, "status", "enum"),
        (4, "action_at", "format"),
    ]
    assert verdict.second_opinions == 0
    assert all("maybe" not in r.message for r in verdict.rejects)


def test_non_finite_numbers_are_refused_by_both_paths() -> None:
    record_type = load_record_type("product")
    records = pa.array([{"price": math.nan}, {"price": math.inf}, {"price": 1.5}])
    assert FastChecker(record_type).check(records).to_pylist() == [False, False, True]
    assert _compiled_ok(record_type, _texts(records)) == [False, False, True]


@pytest.mark.parametrize("value", ["١٩٩٠-٠١-٠١", "1990-01-0٣"])
def test_compiled_validator_refuses_non_ascii_digits_in_dates(value: str) -> None:
    validate = compile_validator(load_record_type("customer_record"))
    with pytest.raises(SchemaViolation):
        validate({"link": {"customer_id": "1"}, "date_of_birth": value})


def test_a_refused_link_is_explained_by_the_form_it_looks_like() -> None:
    checker = RecordChecker(load_record_type("customer_record"))
    pattern_miss = checker.explain({"link": {"email": "not an email"}})
    assert pattern_miss is not None
    assert pattern_miss[:2] == ("link", "anyOf")
    assert pattern_miss[2].startswith("link looks like {email} but email must match pattern")
    assert "not an email" not in pattern_miss[2]
    extra_key = checker.explain({"link": {"email": "a@b.co", "colour": "red"}})
    assert extra_key is not None
    assert extra_key[2] == "link looks like {email} but link must not contain {'colour'} properties"


def test_a_link_of_no_known_form_lists_the_accepted_forms() -> None:
    checker = RecordChecker(load_record_type("customer_record"))
    reason = checker.explain({"link": {"phone": "+61 400 000 000"}})
    assert reason is not None
    field, rule, message = reason
    assert (field, rule) == ("link", "anyOf")
    assert message.startswith("link matches none of the accepted forms: ")
    forms = message.split(": ", 1)[1].split(" | ")
    assert "email" in forms
    assert "customer_id" in forms
    assert len(forms) == 7


def test_pattern_checks_agree_with_and_without_the_native_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    record_type = load_record_type("customer_record")
    cells = [*_EMAILS[0], *_EMAILS[1], None, " jane@example.com", "a@b.c\u00e9"]
    records = pa.array([{"link": {"email": c or "x@y.z"}, "email": c} for c in cells])
    native = FastChecker(record_type).check(records).to_pylist()
    monkeypatch.setattr(patterns, "NATIVE", False)  # as installed without a C compiler: RE2
    assert FastChecker(record_type).check(records).to_pylist() == native
    assert native == _compiled_ok(record_type, _texts(records))
    assert native.count(True) == len(_EMAILS[0]) + 1  # the valid spellings and the null
