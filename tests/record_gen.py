"""Draws records for a record type's schema: mostly valid, often subtly not.

Shared by the validation tests, which need records whose verdicts and explanations they can
compare between bulkd's paths and the compiled validator.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

from bulkd.schemas import RecordType, resolve_ref

__all__ = ["BAD_FLOATS", "DATES", "DATETIMES", "EMAILS", "NUMBERS", "TEXT", "URIS", "RecordGen", "batches"]

# (valid, invalid) spellings: most draws are valid so that whole rows often are.
DATES = (
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
DATETIMES = (
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
EMAILS = (
    ["jane@example.com", "a.b+c@x-y.co.uk", "JANE@EXAMPLE.COM"],
    ["jane@example.com\n", "jane@@example.com", "jane example@x.com", "jane@localhost", "", "jané@x.com"],
)
URIS = (["https://example.com/a.png", "ftp://x/y", "mailto:x@y.z"], ["not a uri", "", "x:a\vb", "h:" * 1042])
NUMBERS = (
    [0.0, 1.0, 2.5, 89.9999, -90.0, 179.99, -180.0, 1e20, -1e-7],
    [-0.5, 90.0, -90.5, 180.0, -180.5],
)
BAD_FLOATS = [math.nan, math.inf, -math.inf]
TEXT = st.text(alphabet=st.sampled_from('ab Z9é"\\\n\x01😀'), max_size=4)


class RecordGen:
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
            return self.pick((NUMBERS[0], NUMBERS[1] + (BAD_FLOATS if self.bad_floats else [])))
        if kind == "boolean":
            return self.draw(st.booleans())
        return self.string(node)

    def string(self, node: dict[str, Any]) -> str:
        fmt = node.get("format")
        if fmt == "date":
            return self.pick(DATES)
        if fmt == "date-time":
            return self.pick(DATETIMES)
        if fmt == "uri":
            return self.pick(URIS)
        if "pattern" in node:
            return self.pick(EMAILS)
        return self.draw(TEXT)

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
                out["size"] = [self.draw(TEXT) for _ in range(self.draw(st.integers(0, 2)))]
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
def batches(draw: st.DrawFn, record_type: RecordType) -> pa.Array:
    gen = RecordGen(draw, record_type.schema, draw(st.booleans()), draw(st.booleans()))
    rows = [gen.object(record_type.schema, 0) for _ in range(draw(st.integers(1, 8)))]
    return pa.array(rows)
