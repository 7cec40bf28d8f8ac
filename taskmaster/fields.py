"""The field checks of the wire contract: each returns the value it was given, in the type
and range the contract says, or raises `ProtocolError`."""

from __future__ import annotations

import math
from typing import Any

MOST_COUNT = 2**62
"""Largest number any count field may hold (JSON itself has no bound)."""


class ProtocolError(ValueError):
    """A message that does not fit the protocol; it is dropped and counted, never acted on."""


def count(value: Any) -> int:
    # type() rather than isinstance(): True is an int too, and JSON allows floats, 1e999, NaN.
    if type(value) is not int or not 0 <= value <= MOST_COUNT:
        raise ProtocolError(f"expected a count, got {safe_str(value)[:40]!r}")
    return value


def millis(seconds: float) -> int:
    """A duration as a count of milliseconds for the wire (an endless one as the most)."""
    ms = seconds * 1000
    return round(ms) if math.isfinite(ms) and 0 <= ms < MOST_COUNT else MOST_COUNT


def text(value: Any, most_chars: int) -> str:
    if type(value) is not str:
        raise ProtocolError(f"expected text, got {type(value).__name__}")
    try:
        # JSON can carry a lone surrogate, which no encoding of ours would take later. (A
        # slave's name from a host that is not UTF-8 arrives surrogate-escaped: that is fine.)
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ProtocolError("text that cannot be encoded (a lone surrogate)") from None
    return value[:most_chars]


def a_list(value: Any, what: str) -> list[Any]:
    if type(value) is not list:
        raise ProtocolError(f"{what}: expected a list, got {type(value).__name__}")
    return value


def fields(value: Any, n: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != n:
        raise ProtocolError(f"{what}: expected a list of {n} fields")
    return value


def ids(value: Any) -> frozenset[int] | None:
    return None if value is None else frozenset(count(v) for v in a_list(value, "batch ids"))


def as_list(ids: frozenset[int] | None) -> list[int] | None:
    return None if ids is None else list(ids)


def safe_str(value: Any) -> str:
    """str() that never raises: a user's exception may have a broken __str__."""
    try:
        return str(value)
    except Exception as e:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}: {type(e).__name__}>"
