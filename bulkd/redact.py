"""Scrub credentials out of text before it reaches a log line, an exception or a status payload.

Presigned URLs are bearer credentials: whoever holds the query string can write the object
until it expires. The safe rule is therefore to drop *every* query string from a URL rather
than hunt for known parameter names (real leaks came from names a regex missed). Known
secrets (the API token) are replaced wherever they occur.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from bulkd.secret import MASK, Secret

__all__ = ["REDACTED_QUERY", "redact_text", "redact_url"]

REDACTED_QUERY = "?<redacted>"

_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+""")
_SIGNED_PARAM = re.compile(
    r"""(?i)\b(x-amz-[a-z-]+|signature|sig|token|credential|security-token|access_token|api[-_]?key)"""
    r"""=[^&\s'"<>]*"""
)


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` without user info, query or fragment; a marker shows a query was cut."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    base = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return base + REDACTED_QUERY if parts.query else base


def redact_text(text: str, secrets: Iterable[Secret | str] = ()) -> str:
    """Replace known secret values, strip query strings from URLs, and mask stray signed parameters."""
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value:
            text = text.replace(value, MASK)
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    return _SIGNED_PARAM.sub(lambda match: f"{match.group(1)}={MASK}", text)
