"""The ``uri`` format agrees with the draft-7 checker Lexer runs (rfc3987, rule URI) on characters."""

from __future__ import annotations

import random
import string

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bulkd.formats import URI_RE, is_uri

rfc3987 = pytest.importorskip("rfc3987", reason="the upstream checker (jsonschema[format]) is not installed")


def upstream(value: str) -> bool:
    try:
        rfc3987.parse(value, rule="URI")
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("https://x.example/1.jpg", True),
        ("https://x.example/1.jpg|https://x.example/2.jpg", False),
        ("https://x.example/a b", False),
        ("https://x.example/%20", True),
        ("https://x.example/%zz", False),
        ("https://x.example/é", False),
        ("https://x.example/{id}", False),
        ("http://[::1]/a#frag", True),
        ("mailto:someone@example.com", True),
        ("urn:isbn:0451450523", True),
        ("a:b#c#d", False),
        ("no-scheme.example/path", False),
        ("https://x.example/\n", False),
    ],
)
def test_known_values(value: str, ok: bool) -> None:
    assert is_uri(value) is ok
    assert pc.match_substring_regex(pa.array([value]), URI_RE).to_pylist() == [ok], "RE2 must agree"


def test_no_character_upstream_refuses_is_accepted() -> None:
    """Random values over every printable character (and a few others): whatever we accept, the
    upstream checker accepts too, so no row passes here only to be refused by Lexer."""
    rng = random.Random(7)
    alphabet = string.printable.replace("\n", "") + "é\x7f\x00"
    prefixes = ["http://", "https://x.example/", "mailto:", "urn:x:", "a:"]
    values = [rng.choice(prefixes) + "".join(rng.choices(alphabet, k=rng.randint(0, 8))) for _ in range(5000)]
    ours = pc.match_substring_regex(pa.array(values), URI_RE).to_pylist()
    assert ours == [is_uri(v) for v in values], "Python re and RE2 must agree"
    # Authority structure (ports, hosts) is left loose; characters are not.
    loose = [v for v, ok in zip(values, ours, strict=True) if ok and not upstream(v)]
    assert all(v.startswith("http://") for v in loose), loose[:5]
