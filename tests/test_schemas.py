"""bulkd's shipped schemas must say exactly what Lexer's published schemas say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bulkd.errors import SchemaError
from bulkd.schemas import RECORD_TYPES, load_record_type, resolve_ref
from bulkd.validate import compile_validator

# Keywords that carry no validation meaning (prose, examples, defaults bulkd never applies).
_PROSE = frozenset({"title", "description", "examples", "default", "$comment", "$schema", "definitions"})
_LINK_VARIANTS = {
    "EmailLink",
    "EmailSha256Link",
    "EmailMd5Link",
    "CustomerIdLink",
    "MobileLink",
    "ExternalLink",
    "CustomerLink",
}


def normalise(root: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """The validation content of ``node`` with every ``$ref`` inlined and prose removed."""
    assert depth < 40, "schema nests too deep (reference cycle?)"
    if isinstance(node, list):
        return [normalise(root, item, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    node = resolve_ref(root, node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _PROSE:
            continue
        if key == "properties":
            out[key] = {name: normalise(root, sub, depth + 1) for name, sub in value.items()}
        elif key == "required":
            out[key] = sorted(value)
        else:
            out[key] = normalise(root, value, depth + 1)
    return out


def _upstream(lexer_schemas: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((lexer_schemas / "jsonschema" / f"{name}.json").read_text())
    return doc


def _diff(a: Any, b: Any, path: str = "$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in bulkd" for k in a.keys() - b.keys()]
        out += [f"{path}.{k}: only upstream" for k in b.keys() - a.keys()]
        for k in a.keys() & b.keys():
            out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: bulkd {a!r} != upstream {b!r}"]


def test_there_are_twelve_record_types_with_a_schema_each(lexer_schemas: Path) -> None:
    upstream = sorted(p.stem for p in (lexer_schemas / "jsonschema").glob("*.json"))
    assert sorted(RECORD_TYPES) == upstream
    assert len(RECORD_TYPES) == 12


@pytest.mark.parametrize("name", RECORD_TYPES)
def test_schema_matches_upstream_at_every_depth(lexer_schemas: Path, name: str) -> None:
    ours = load_record_type(name).schema
    theirs = _upstream(lexer_schemas, name)
    differences = _diff(normalise(ours, ours), normalise(theirs, theirs))
    assert differences == []


@pytest.mark.parametrize("name", [n for n in RECORD_TYPES if n != "product"])
def test_link_has_the_seven_variants(lexer_schemas: Path, name: str) -> None:
    for doc in (load_record_type(name).schema, _upstream(lexer_schemas, name)):
        link = doc["properties"]["link"]
        refs = {v["$ref"].rsplit("/", 1)[-1] for v in link["anyOf"]}
        assert refs == _LINK_VARIANTS
        assert "link" in doc["required"]
        for variant in _LINK_VARIANTS:
            assert doc["definitions"][variant]["additionalProperties"] is False


def test_product_has_no_link(lexer_schemas: Path) -> None:
    assert "link" not in load_record_type("product").schema["properties"]
    assert "link" not in _upstream(lexer_schemas, "product")["properties"]


def test_email_link_pattern_is_upstream_pattern(lexer_schemas: Path) -> None:
    ours = load_record_type("customer_record").schema["definitions"]["EmailLink"]
    theirs = _upstream(lexer_schemas, "customer_record")["definitions"]["EmailLink"]
    assert ours["properties"]["email"]["pattern"] == theirs["properties"]["email"]["pattern"]


def test_comparison_notices_a_difference() -> None:
    """The comparison itself is not a tautology: a dropped enum member is reported."""
    ours = load_record_type("purchase").schema
    broken = json.loads(json.dumps(ours))
    broken["definitions"]["Channel"]["enum"].remove("physical")
    assert _diff(normalise(ours, ours), normalise(broken, broken)) != []


def test_custom_schema_file_is_loaded(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"points": {"type": "integer", "minimum": 0}},
        "required": ["points"],
    }
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(schema))
    record_type = load_record_type("customer_record", path)
    assert record_type.source == str(path)
    assert record_type.schema == schema
    validate = compile_validator(record_type)
    validate({"points": 3})
    with pytest.raises(Exception, match="points"):
        validate({"points": -1})


def test_custom_schema_file_must_be_an_object_schema(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"type": "array"}')
    with pytest.raises(SchemaError, match="JSON object"):
        load_record_type("product", path)
    path.write_text("{not json")
    with pytest.raises(SchemaError, match="cannot read"):
        load_record_type("product", path)


def test_unknown_record_type_is_refused() -> None:
    with pytest.raises(SchemaError, match="unknown record type"):
        load_record_type("invoice")
