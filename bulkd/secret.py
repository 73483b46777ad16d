"""A credential holder whose text form is masked, so it cannot leak through repr, str or f-strings.

The API token travels through settings objects that get logged, printed in tracebacks and shown
in status pages; wrapping it means the only way to see the value is an explicit ``reveal()``.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

__all__ = ["MASK", "Secret"]

MASK = "********"


class Secret:
    """An opaque string; equality is constant-time and the value is never part of any text form."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The raw value, for the one place that must send it (an HTTP header)."""
        return self._value

    def matches(self, candidate: str | bytes | None) -> bool:
        """Constant-time comparison against an untrusted candidate (a request header)."""
        if candidate is None:
            return False
        raw = candidate.encode("utf-8") if isinstance(candidate, str) else candidate
        return hmac.compare_digest(raw, self._value.encode("utf-8"))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self.matches(other._value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not picklable; pass it explicitly where it is needed")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self
