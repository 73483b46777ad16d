"""The string formats bulkd checks, shared by the compiled validator and the vectorised fast path.

Lexer validates ``date`` and ``date-time`` as real calendar values (``1990-02-31`` is refused),
so a regular expression alone is not enough: each format is a shape (regular expression) plus a
calendar check. The same shapes are used by :mod:`bulkd.validate` as Arrow kernels, which is
what keeps the two paths in agreement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

__all__ = [
    "DATETIME_RE",
    "DATE_RE",
    "FORMAT_CHECKERS",
    "URI_RE",
    "is_date",
    "is_datetime",
    "is_uri",
]

DATE_RE = r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})$"
"""``YYYY-MM-DD`` (RFC 3339 full-date). Groups are named so Arrow's ``extract_regex`` can use it too."""

DATETIME_RE = (
    r"^(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})[Tt](?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?P<f>\.\d+)?"
    r"(?P<tz>[Zz]|[+-](?P<oh>\d{2}):(?P<om>\d{2}))$"
)
"""RFC 3339 date-time: a ``T`` separator and an explicit offset are required."""

_URI_CHAR = r"(?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})"
URI_RE = (
    r"^(?P<uri>[A-Za-z][A-Za-z0-9+.\-]*:(?://\[[0-9A-Fa-f:.]+\])?"
    + _URI_CHAR
    + r"*(?:#"
    + _URI_CHAR
    + r"*)?)$"
)
"""An absolute URI as RFC 3986 spells its characters (what Lexer's draft-7 ``uri`` check accepts):
ASCII only, ``%`` only before two hex digits, one ``#``, brackets only around an IP literal host.
So ``a.jpg|b.jpg`` (two URLs in one cell) or a space is refused here, not by Lexer after upload.
Written for both Python ``re`` and RE2 (no look-arounds)."""

# re.ASCII: Python's \d also matches other scripts' digits (``١٩٩٠``), which RFC 3339, Lexer and
# the Arrow (RE2) fast path all refuse.
_DATE = re.compile(DATE_RE, re.ASCII)
_DATETIME = re.compile(DATETIME_RE, re.ASCII)
_URI = re.compile(URI_RE, re.ASCII)


def _calendar_ok(year: str, month: str, day: str) -> bool:
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def is_date(value: str) -> bool:
    """True for a real calendar date written as ``YYYY-MM-DD``."""
    m = _DATE.fullmatch(value)
    return m is not None and _calendar_ok(*m.groups())


def is_datetime(value: str) -> bool:
    """True for an RFC 3339 date-time whose date, time and offset are all in range."""
    m = _DATETIME.fullmatch(value)
    if m is None:
        return False
    year, month, day, hour, minute, second, _frac, _tz, off_h, off_m = m.groups()
    if not _calendar_ok(year, month, day):
        return False
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        return False
    return off_h is None or (int(off_h) <= 23 and int(off_m) <= 59)


def is_uri(value: str) -> bool:
    """True for an absolute URI (see :data:`URI_RE`)."""
    return _URI.fullmatch(value) is not None


FORMAT_CHECKERS: dict[str, Callable[[str], bool]] = {
    "date": is_date,
    "date-time": is_datetime,
    "uri": is_uri,
}
"""Format name to checker, handed to fastjsonschema so the compiled validator agrees with Lexer."""
