"""Parsing of the command line's log options: sizes (``20m``) and times (``--since``).

Times are what docker accepts: RFC 3339 (``2026-12-01T15:04:05.123456789Z``, or with an
offset), a Unix timestamp with an optional fraction (``1764601445.5``), or a duration back
from now (``10m``, ``1h30m``, ``90s``). Everything becomes nanoseconds since the epoch.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

__all__ = ["parse_size", "parse_time"]

_SIZE_RE: Final = re.compile(r"^(\d+)([kmg]?)i?b?$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_DURATION_RE: Final = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_UNIX_RE: Final = re.compile(r"^(\d{1,12})(?:\.(\d{1,9}))?$")
_RFC3339_RE: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?$",
    re.IGNORECASE,
)


def parse_size(text: str) -> int:
    """``4096``, ``64k``, ``20m``, ``1g`` (binary units) -> bytes.

    Raises:
        ValueError: anything else, with the accepted forms.
    """
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: use bytes or a number with k, m or g")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_time(text: str, *, now_ns: int) -> int:
    """A point in time as nanoseconds since the epoch (see the module doc for the forms).

    Raises:
        ValueError: not one of the accepted forms.
    """
    value = text.strip()
    unix = _UNIX_RE.match(value)
    if unix is not None:
        fraction = (unix.group(2) or "").ljust(9, "0")
        return int(unix.group(1)) * 1_000_000_000 + int(fraction or 0)
    duration = _DURATION_RE.match(value)
    if duration is not None and value:
        hours, minutes, seconds = duration.groups()
        back = int(hours or 0) * 3600 + int(minutes or 0) * 60
        nanos = back * 1_000_000_000 + round(float(seconds or 0) * 1_000_000_000)
        return max(0, now_ns - nanos)
    stamp = _RFC3339_RE.match(value)
    if stamp is not None:
        date, clock, fraction, zone = stamp.groups()
        zone = "+00:00" if zone is None or zone.upper() == "Z" else zone
        parsed = dt.datetime.fromisoformat(f"{date}T{clock}{zone}")
        return int(parsed.timestamp()) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))
    raise ValueError(
        f"invalid time {text!r}: use RFC 3339 (2026-12-01T15:04:05Z), a Unix timestamp, "
        "or a duration back from now (10m, 1h30m, 90s)"
    )
