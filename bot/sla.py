"""Deadline arithmetic for tickets: the compact SLA duration syntax ("4h", "3d", "1d12h")
and the calendar that turns an opening time plus an SLA into a due time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

__all__ = [
    "ELAPSED_TIME",
    "Calendar",
    "ElapsedTimeCalendar",
    "deadline",
    "format_duration",
    "parse_duration",
]

# Largest unit first: parsing insists on this order so that "1d12h" has exactly one spelling,
# and formatting emits it, which keeps parse/format a round trip.
_UNIT_SECONDS: Final[dict[str, int]] = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([dhms])")
_WHOLE = re.compile(r"(?:\d+[dhms])+")


def _bad(text: str) -> ValueError:
    return ValueError(f'bad duration "{text}": use a number with s, m, h or d, e.g. 30s, 15m, 4h, 3d')


def parse_duration(text: str) -> timedelta:
    """Parse "30s", "15m", "4h", "3d" or a compound such as "1d12h" into a positive timedelta."""
    if not isinstance(text, str):
        raise _bad(str(text))
    compact = text.strip()
    if not _WHOLE.fullmatch(compact):
        raise _bad(text.strip())
    seconds = 0
    previous_rank = -1
    units = list(_UNIT_SECONDS)
    for number, unit in _PART.findall(compact):
        rank = units.index(unit)
        # Rejects "12h1d" and "1h1h": a typo there more likely hides a mistake than a wish.
        if rank <= previous_rank:
            raise _bad(compact)
        previous_rank = rank
        seconds += int(number) * _UNIT_SECONDS[unit]
    if seconds <= 0:
        raise _bad(compact)
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a duration in the compact form parse_duration reads: 3d, 4h, 1d12h, 1m30s.

    Sub-second parts are dropped; SLAs are configured in whole seconds at most.
    """
    if delta < timedelta(0):
        raise ValueError(f"cannot format a negative duration: {delta}")
    remaining = delta.days * 86_400 + delta.seconds
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _UNIT_SECONDS.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


class Calendar(Protocol):
    """Decides how an SLA is counted from a start instant.

    Working-day calendars (office hours, weekends, public holidays) will implement this too,
    so deadline() callers will not change when regions switch to them.
    """

    def add(self, start: datetime, sla: timedelta) -> datetime:
        """Return the aware instant at which `sla` has been spent, counting from aware `start`."""
        ...


class ElapsedTimeCalendar:
    """Counts every second of the clock: "3d" means 72 hours later, nights and weekends included."""

    def add(self, start: datetime, sla: timedelta) -> datetime:
        # Arithmetic on a zone-local datetime follows the wall clock and gains or loses an hour
        # across a DST change; in UTC it is true elapsed time.
        return start.astimezone(UTC) + sla

    def __repr__(self) -> str:
        return "ElapsedTimeCalendar()"


ELAPSED_TIME: Final[Calendar] = ElapsedTimeCalendar()


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def deadline(opened_at: datetime, sla: timedelta, calendar: Calendar = ELAPSED_TIME) -> datetime:
    """Return when a ticket opened at `opened_at` falls due under `sla`, as an aware UTC datetime."""
    _require_aware(opened_at, "opened_at")
    due = calendar.add(opened_at, sla)
    _require_aware(due, "calendar result")
    return due.astimezone(UTC)
