"""The vectorised fast path must agree with the compiled validator, row for row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft7Validator
from record_gen import EMAILS, batches

from bulkd import patterns
from bulkd.encode import encode_ndjson
from bulkd.schemas import RecordType, load_record_type
from bulkd.validate import FastChecker, RecordChecker, SchemaViolation, compile_validator

_UPSTREAM = Path(__file__).resolve().parents[1].parent / "shared" / "lexer-schemas" / "jsonschema"


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
    @given(batches(record_type))
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
    cells = [*EMAILS[0], *EMAILS[1], None, " jane@example.com", "a@b.c\u00e9"]
    records = pa.array([{"link": {"email": c or "x@y.z"}, "email": c} for c in cells])
    native = FastChecker(record_type).check(records).to_pylist()
    monkeypatch.setattr(patterns, "NATIVE", False)  # as installed without a C compiler: RE2
    assert FastChecker(record_type).check(records).to_pylist() == native
    assert native == _compiled_ok(record_type, _texts(records))
    assert native.count(True) == len(EMAILS[0]) + 1  # the valid spellings and the null


def test_an_allof_wrapper_with_its_own_keywords_is_checked_by_the_fast_path() -> None:
    """A wrapper of one form is only skipped when it carries nothing but annotations: its own
    ``minLength`` once went unchecked, and the fast path passed what the validator refuses."""
    from bulkd.shape import Kind, shape_of

    schema = {
        "type": "object",
        "properties": {
            "code": {"allOf": [{"type": "string"}], "minLength": 3},
            "note": {"allOf": [{"type": "string"}], "description": "a plain wrapper"},
        },
    }
    record_type = RecordType(name="wrapped", schema=schema, source="test:wrapped")
    records = pa.array([{"code": "x", "note": "n"}, {"code": "xyz", "note": "n"}])
    assert FastChecker(record_type).check(records).to_pylist() == [False, True]
    assert _compiled_ok(record_type, _texts(records)) == [False, True]
    shape = shape_of(schema)  # the mapping still reads each wrapper's type from its form
    assert [shape.children[k].kind for k in ("code", "note")] == [Kind.STRING, Kind.STRING]
