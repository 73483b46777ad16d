"""Redaction removes every query string and known secret, whatever the parameter names are."""

from __future__ import annotations

import copy

import pytest

from bulkd.redact import REDACTED_QUERY, redact_text, redact_url
from bulkd.secret import MASK, Secret

SIGNED = (
    "https://lexer-client-upload-au.s3.amazonaws.com/uploads/123-a.ndjson.gz"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101&X-Amz-Date=20240101T000000Z"
    "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=deadbeef"
)


def test_redact_url_keeps_host_and_path_only() -> None:
    assert redact_url(SIGNED) == (
        "https://lexer-client-upload-au.s3.amazonaws.com/uploads/123-a.ndjson.gz" + REDACTED_QUERY
    )
    assert redact_url("http://user:pw@host:8080/p#frag") == "http://host:8080/p"
    assert redact_url("http://[::1]:9/x?sig=1") == "http://[::1]:9/x" + REDACTED_QUERY
    assert redact_url("https://api.lexer.io/v1/uploads") == "https://api.lexer.io/v1/uploads"


def test_redact_url_does_not_echo_an_unparseable_url() -> None:
    assert redact_url("http://[broken/x?X-Amz-Signature=1") == "<unparseable url>"


@pytest.mark.parametrize(
    "text",
    [
        f"PUT {SIGNED} failed: 403",
        f"Cannot connect to host ({SIGNED!r})",
        "params: X-Amz-Signature=abc123&x-amz-security-token=zzz",
        "redirected to ftp://h/p?Signature=abc",
        "url=<https://h/p?token=abc>",
    ],
)
def test_redact_text_removes_signatures_in_any_position(text: str) -> None:
    out = redact_text(text)
    assert "deadbeef" not in out
    assert "abc" not in out
    assert "zzz" not in out


def test_redact_text_masks_known_secrets() -> None:
    token = Secret("tok-123456")
    out = redact_text("header Auth-Api-Token: tok-123456 and tok-123456", [token, ""])
    assert out == f"header Auth-Api-Token: {MASK} and {MASK}"


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2-value")
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>20}", repr([secret])):
        assert "hunter2" not in text
    assert secret.reveal() == "hunter2-value"
    assert secret.matches("hunter2-value")
    assert not secret.matches("hunter2")
    assert not secret.matches(None)
    assert secret == Secret("hunter2-value")
    assert copy.deepcopy(secret) is secret


def test_secret_refuses_pickling() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))
