"""Timestamps as the wire spells them: ISO 8601 UTC with milliseconds.

Every JSON body, frame and event formats its times here, so they read the same
everywhere; ``iso`` is on the hot path (a task's JSON and events hold about
twenty of them), ``iso_slow`` is the definition it must agree with.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def iso_slow(ts: float) -> str:
    """What ``iso`` answers, by the book (``iso`` must agree; a test holds them to it)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The last whole second formatted, and its text: timestamps come in runs within
# the same second, and a task's JSON and events format about twenty of them.
_last_second: tuple[int, str] = (-1, "")
_FAST_RANGE = 253_402_300_799  # 9999-12-31T23:59:59Z
# And each recent timestamp's text: the same instant is formatted again and
# again (an attempt's start in its two events, in every write and answer of its
# task).  Bounded: cleared when full.
_recent: dict[float, str] = {}
_RECENT_MAX = 4096


def iso(ts: float | None) -> str | None:
    """``ts`` as ISO 8601 UTC with milliseconds (``2026-11-27T12:30:28.123Z``),
    rounded as ``datetime.fromtimestamp`` rounds (half-even to the microsecond,
    then cut to the millisecond) — without building a datetime each time."""
    global _last_second
    if ts is None:
        return None
    text = _recent.get(ts)
    if text is not None:
        return text
    if not 0 <= ts < _FAST_RANGE:
        return iso_slow(ts)
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    second = int(whole)
    if us >= 1_000_000:
        second += 1
        us -= 1_000_000
    cached_second, prefix = _last_second
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).isoformat()[:19]
        _last_second = (second, prefix)
    text = f"{prefix}.{us // 1000:03d}Z"
    if len(_recent) >= _RECENT_MAX:
        _recent.clear()
    _recent[ts] = text
    return text


def parse_instant(text: str) -> float:
    """An instant a person types, as epoch seconds: ISO 8601 (a date, or a
    date and time; UTC unless it names an offset) or epoch seconds.
    ``ValueError`` saying what was expected."""
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else _from_iso(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither ISO 8601 (2026-12-01, 2026-12-01T10:00:00Z) nor epoch seconds"
        ) from None


def _from_iso(text: str) -> float:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
