"""Deadline arithmetic for tickets: the compact SLA syntax ("4h", "3d", "1d12h", "5wd", "8wh"),
reminder lead times ("4h", "25%") and the calendars that turn an opening time plus an SLA into a
due time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Final, Literal, Protocol, get_args

__all__ = [
    "DEFAULT_REMIND_BEFORE",
    "DEFAULT_WEEKENDS",
    "DEFAULT_WORKING_HOURS",
    "ELAPSED_TIME",
    "WEEKDAY_NAMES",
    "Calendar",
    "ElapsedTimeCalendar",
    "RemindBefore",
    "RemindKind",
    "Sla",
    "SlaKind",
    "WorkingCalendar",
    "deadline",
    "deadline_after_pause",
    "format_duration",
    "parse_duration",
    "parse_remind_before",
    "parse_sla",
    "reminder_at",
]

# Largest unit first: parsing insists on this order so that "1d12h" has exactly one spelling,
# and formatting emits it, which keeps parse/format a round trip.
_UNIT_SECONDS: Final[dict[str, int]] = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([dhms])")
_WHOLE = re.compile(r"(?:\d+[dhms])+")
_WORKING = re.compile(r"(\d+)(wd|wh)")
_PERCENT = re.compile(r"(\d+)%")

# Index = date.weekday(); the routing file names weekends with these.
WEEKDAY_NAMES: Final[tuple[str, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _bad(text: str) -> ValueError:
    return ValueError(f'bad duration "{text}": use a number with s, m, h or d, e.g. 30s, 15m, 4h, 3d')


def _compact_seconds(compact: str) -> int | None:
    """Seconds in a compact duration, or None when the text is not one (zero parts are allowed)."""
    if not _WHOLE.fullmatch(compact):
        return None
    seconds = 0
    previous_rank = -1
    units = list(_UNIT_SECONDS)
    for number, unit in _PART.findall(compact):
        rank = units.index(unit)
        # Rejects "12h1d" and "1h1h": a typo there more likely hides a mistake than a wish.
        if rank <= previous_rank:
            return None
        previous_rank = rank
        seconds += int(number) * _UNIT_SECONDS[unit]
    return seconds


def parse_duration(text: str) -> timedelta:
    """Parse "30s", "15m", "4h", "3d" or a compound such as "1d12h" into a positive timedelta."""
    if not isinstance(text, str):
        raise _bad(str(text))
    compact = text.strip()
    seconds = _compact_seconds(compact)
    if seconds is None or seconds <= 0:
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


# --- SLAs ----------------------------------------------------------------------------------

SlaKind = Literal["elapsed", "working_days", "working_hours"]
_SLA_KINDS: Final[tuple[str, ...]] = get_args(SlaKind)
_SLA_SUFFIX: Final[dict[str, str]] = {"working_days": "wd", "working_hours": "wh"}


@dataclass(frozen=True, slots=True)
class Sla:
    """How long an agency has to resolve a ticket.

    `amount` is in the kind's own unit: seconds for "elapsed" (every second of the clock counts),
    whole working days for "working_days", whole working hours for "working_hours".
    """

    kind: SlaKind
    amount: int

    def __post_init__(self) -> None:
        if self.kind not in _SLA_KINDS:
            raise ValueError(f'unknown SLA kind "{self.kind}" (known: {", ".join(_SLA_KINDS)})')
        # bool is an int subclass, and True would silently mean "one day".
        if type(self.amount) is not int or self.amount <= 0:
            raise ValueError(f"an SLA amount must be a positive whole number, got {self.amount!r}")

    @classmethod
    def elapsed(cls, delta: timedelta) -> Sla:
        seconds = delta // timedelta(seconds=1)
        if seconds <= 0:
            raise ValueError(f"sla must be at least one second, got {delta}")
        return cls("elapsed", seconds)

    @classmethod
    def working_days(cls, days: int) -> Sla:
        return cls("working_days", days)

    @classmethod
    def working_hours(cls, hours: int) -> Sla:
        return cls("working_hours", hours)

    @property
    def duration(self) -> timedelta:
        """The real length of an elapsed SLA; working SLAs have none until placed on a calendar."""
        if self.kind != "elapsed":
            raise ValueError(f'SLA "{self}" counts working time and has no fixed length')
        return timedelta(seconds=self.amount)

    def __str__(self) -> str:
        if self.kind == "elapsed":
            return format_duration(self.duration)
        return f"{self.amount}{_SLA_SUFFIX[self.kind]}"


def _bad_sla(text: str) -> ValueError:
    return ValueError(
        f'bad SLA "{text}": use a number with s, m, h or d (30s, 15m, 4h, 3d, 1d12h), '
        "or with wd or wh for working days or hours (5wd, 8wh)"
    )


def parse_sla(text: str) -> Sla:
    """Parse a calendar duration ("4h", "3d", "1d12h") or working time ("5wd", "8wh") into an Sla."""
    if not isinstance(text, str):
        raise _bad_sla(str(text))
    compact = text.strip()
    working = _WORKING.fullmatch(compact)
    if working:
        number, suffix = int(working[1]), working[2]
        if number <= 0:
            unit = "days" if suffix == "wd" else "hours"
            raise ValueError(f'bad SLA "{compact}": the number of working {unit} must be positive')
        return Sla.working_days(number) if suffix == "wd" else Sla.working_hours(number)
    seconds = _compact_seconds(compact)
    if seconds is None or seconds <= 0:
        raise _bad_sla(compact)
    return Sla("elapsed", seconds)


def _as_sla(sla: Sla | timedelta) -> Sla:
    return sla if isinstance(sla, Sla) else Sla.elapsed(sla)


# --- reminders -----------------------------------------------------------------------------

RemindKind = Literal["duration", "percent"]


@dataclass(frozen=True, slots=True)
class RemindBefore:
    """How long before the deadline the agency is reminded.

    `amount` is seconds for "duration" and percent (0-99) of the ticket's real time from opening
    to deadline for "percent". A zero amount means "no reminder".
    """

    kind: RemindKind
    amount: int

    def __post_init__(self) -> None:
        if self.kind not in get_args(RemindKind):
            raise ValueError(f'unknown reminder kind "{self.kind}" (known: duration, percent)')
        if type(self.amount) is not int or self.amount < 0:
            raise ValueError(f"a reminder lead must be a whole number of at least 0, got {self.amount!r}")
        # 100% would remind at the opening instant, which is never useful.
        if self.kind == "percent" and self.amount >= 100:
            raise ValueError(f"a reminder lead must be below 100%, got {self.amount}%")

    @classmethod
    def duration(cls, delta: timedelta) -> RemindBefore:
        return cls("duration", delta // timedelta(seconds=1))

    @classmethod
    def percent(cls, share: int) -> RemindBefore:
        return cls("percent", share)

    def lead(self, opened_at: datetime, due_at: datetime) -> timedelta:
        """How long before `due_at` the reminder goes, for a ticket opened at `opened_at`."""
        if self.kind == "duration":
            return timedelta(seconds=self.amount)
        return (due_at - opened_at) * self.amount / 100

    def __str__(self) -> str:
        if self.kind == "percent":
            return f"{self.amount}%"
        return format_duration(timedelta(seconds=self.amount))


# Reminders are on unless a routing file turns them off: a quarter of the time to the deadline
# leaves an agency room to act whatever the SLA's length.
DEFAULT_REMIND_BEFORE: Final[RemindBefore] = RemindBefore("percent", 25)


def _bad_lead(text: str) -> ValueError:
    return ValueError(
        f'bad reminder lead "{text}": use a duration such as 4h or 1d12h, a share of the time '
        "to the deadline such as 25%, or 0 for no reminder"
    )


def parse_remind_before(text: str) -> RemindBefore:
    """Parse a reminder lead: a duration ("4h", "1d12h"), a percentage ("25%") or "0" (none)."""
    if not isinstance(text, str):
        raise _bad_lead(str(text))
    compact = text.strip()
    percent = _PERCENT.fullmatch(compact)
    if percent:
        share = int(percent[1])
        if share >= 100:
            raise ValueError(
                f'bad reminder lead "{compact}": a percentage must be below 100%, '
                "or the reminder would come when the ticket opens"
            )
        return RemindBefore.percent(share)
    if compact == "0":
        return RemindBefore("duration", 0)
    seconds = _compact_seconds(compact)
    if seconds is None:
        raise _bad_lead(compact)
    return RemindBefore("duration", seconds)


def reminder_at(opened_at: datetime, due_at: datetime, remind: RemindBefore | None) -> datetime | None:
    """When to remind about a ticket opened at `opened_at` and due at `due_at` (aware UTC), or None
    when there is no lead or the reminder would not come after the ticket was opened."""
    _require_aware(opened_at, "opened_at")
    _require_aware(due_at, "due_at")
    if remind is None:
        return None
    lead = remind.lead(opened_at, due_at)
    if lead <= timedelta(0):
        return None
    at = due_at.astimezone(UTC) - lead
    return at if at > opened_at else None


# --- calendars -----------------------------------------------------------------------------


class Calendar(Protocol):
    """Decides how an SLA is counted from a start instant."""

    def add(self, start: datetime, sla: Sla) -> datetime:
        """Return the aware instant at which `sla` has been spent, counting from aware `start`."""
        ...


class ElapsedTimeCalendar:
    """Counts every second of the clock: "3d" means 72 hours later, nights and weekends included.

    It knows no working hours, so a working-time SLA is an error here rather than a guess.
    """

    def add(self, start: datetime, sla: Sla | timedelta) -> datetime:
        sla = _as_sla(sla)
        if sla.kind != "elapsed":
            raise ValueError(
                f'SLA "{sla}" counts working time, which needs a working calendar '
                "(Routing.deadline uses the routing file's)"
            )
        # Arithmetic on a zone-local datetime follows the wall clock and gains or loses an hour
        # across a DST change; in UTC it is true elapsed time.
        return start.astimezone(UTC) + sla.duration

    def __repr__(self) -> str:
        return "ElapsedTimeCalendar()"


ELAPSED_TIME: Final[Calendar] = ElapsedTimeCalendar()

DEFAULT_WORKING_HOURS: Final[tuple[time, time]] = (time(9, 0), time(18, 0))
DEFAULT_WEEKENDS: Final[frozenset[int]] = frozenset({5, 6})


@dataclass(frozen=True)
class WorkingCalendar:
    """Office hours in one time zone: working hours [start, end) on working days.

    A date is a working day when it is in `extra_working` (a weekend made a working day by a
    transfer), or when it is neither a weekend (`weekends` holds date.weekday() numbers, Monday 0)
    nor in `holidays`.

    Counting rules, all in the zone's local wall-clock time, converted to UTC only at the end:

    * elapsed SLAs ("3d") add real time and ignore the calendar;
    * "N wd" falls due at the closing time of the N-th working day after the local date on which
      the ticket opened, whatever the hour of opening. A report on Monday at 10:00 (or at 07:00, or
      at 19:00) with 5wd is due at closing on the fifth working day after Monday, which in a week
      without holidays is the next Monday; a report on Friday at 19:00, or on Saturday, with 1wd
      is due on Monday at closing;
    * "N wh" counts only time inside working hours: from the opening instant if it falls in working
      hours, otherwise from the next opening. Friday 17:00 + 2wh with 09:00-18:00 is due on Monday
      at 10:00; an SLA used up exactly at closing falls due at closing, not next morning.

    A working day lasts its wall-clock hours even on a DST change day; a closing time that does
    not exist that day (inside a spring-forward gap) is read with the offset in force before it.
    """

    timezone: tzinfo
    start: time = DEFAULT_WORKING_HOURS[0]
    end: time = DEFAULT_WORKING_HOURS[1]
    weekends: frozenset[int] = DEFAULT_WEEKENDS
    holidays: frozenset[date] = frozenset()
    extra_working: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        # Accept any iterable of days from Python callers while keeping the object hashable.
        object.__setattr__(self, "weekends", frozenset(self.weekends))
        object.__setattr__(self, "holidays", frozenset(self.holidays))
        object.__setattr__(self, "extra_working", frozenset(self.extra_working))
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("working hours are local wall-clock times: give them without a time zone")
        if not self.start < self.end:
            raise ValueError(
                f"working hours must end after they start, got {self.start:%H:%M}-{self.end:%H:%M}"
            )
        if not self.weekends <= set(range(7)):
            raise ValueError(f"weekends are weekday numbers 0 (Monday) to 6 (Sunday), got {self.weekends}")
        # Holidays are finite, so one working weekday guarantees every search below ends.
        if len(self.weekends) == 7:
            raise ValueError("every day of the week is a weekend: leave at least one working weekday")
        both = self.holidays & self.extra_working
        if both:
            days = ", ".join(d.isoformat() for d in sorted(both))
            raise ValueError(f"{days}: both a holiday and a working day")

    def is_working_day(self, day: date) -> bool:
        if day in self.extra_working:
            return True
        return day.weekday() not in self.weekends and day not in self.holidays

    def next_working_moment(self, moment: datetime) -> datetime:
        """`moment` itself if it falls within working hours, else the next opening; aware UTC."""
        _require_aware(moment, "moment")
        local = self._local(moment)
        if self._in_hours(local):
            return moment.astimezone(UTC)
        return self._utc(self._next_opening(local))

    def add(self, start: datetime, sla: Sla | timedelta) -> datetime:
        _require_aware(start, "start")
        sla = _as_sla(sla)
        if sla.kind == "elapsed":
            return start.astimezone(UTC) + sla.duration
        local = self._local(start)
        if sla.kind == "working_days":
            day = local.date()
            for _ in range(sla.amount):
                day = self._working_day_after(day)
            return self._utc(datetime.combine(day, self.end))
        return self._utc(self._add_working_time(local, timedelta(hours=sla.amount)))

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """The working time from aware `start` to aware `end`: the parts of [start, end) that fall in
        working hours on working days, in local wall-clock time like every count here (so
        `add_working_time` of it from `start` ends at `end`, or at the last closing before `end` when
        that is out of hours). Zero when `end` is not after `start`."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        if end <= start:
            return timedelta(0)
        first, last = self._local(start), self._local(end)
        total = timedelta(0)
        day = first.date()
        while day <= last.date():
            if self.is_working_day(day):
                opening = max(first, datetime.combine(day, self.start))
                closing = min(last, datetime.combine(day, self.end))
                if closing > opening:
                    total += closing - opening
            day += timedelta(days=1)
        return total

    def add_working_time(self, start: datetime, amount: timedelta) -> datetime:
        """The aware UTC instant at which `amount` of working time has passed since aware `start`,
        counted as for "N wh" (working time used up exactly at closing ends at closing). Adding
        nothing leaves `start` where it is, even out of hours."""
        _require_aware(start, "start")
        if amount < timedelta(0):
            raise ValueError(f"cannot add a negative working time: {amount}")
        if not amount:
            return start.astimezone(UTC)
        return self._utc(self._add_working_time(self._local(start), amount))

    # Naive datetimes below are local wall-clock times in self.timezone.

    def _local(self, moment: datetime) -> datetime:
        return moment.astimezone(self.timezone).replace(tzinfo=None)

    def _utc(self, local: datetime) -> datetime:
        return local.replace(tzinfo=self.timezone).astimezone(UTC)

    def _in_hours(self, local: datetime) -> bool:
        return self.is_working_day(local.date()) and self.start <= local.time() < self.end

    def _working_day_after(self, day: date) -> date:
        day += timedelta(days=1)
        while not self.is_working_day(day):
            day += timedelta(days=1)
        return day

    def _next_opening(self, local: datetime) -> datetime:
        day = local.date()
        if not (self.is_working_day(day) and local.time() < self.start):
            day = self._working_day_after(day)
        return datetime.combine(day, self.start)

    def _add_working_time(self, local: datetime, remaining: timedelta) -> datetime:
        position = local if self._in_hours(local) else self._next_opening(local)
        while True:
            closing = datetime.combine(position.date(), self.end)
            available = closing - position
            if remaining <= available:
                return position + remaining
            remaining -= available
            position = datetime.combine(self._working_day_after(position.date()), self.start)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def deadline(opened_at: datetime, sla: Sla | timedelta, calendar: Calendar = ELAPSED_TIME) -> datetime:
    """Return when a ticket opened at `opened_at` falls due under `sla`, as an aware UTC datetime."""
    _require_aware(opened_at, "opened_at")
    due = calendar.add(opened_at, _as_sla(sla))
    _require_aware(due, "calendar result")
    return due.astimezone(UTC)


def deadline_after_pause(
    due_at: datetime,
    paused_at: datetime,
    resumed_at: datetime,
    sla: Sla | timedelta,
    calendar: Calendar = ELAPSED_TIME,
) -> datetime:
    """Where the deadline `due_at` of a ticket whose clock stood still from `paused_at` to `resumed_at`
    moves, as an aware UTC datetime: where it would have fallen had the clock stopped.

    An elapsed SLA moves on by the real time of the pause. A working-days or working-hours SLA moves on
    by the working time that passed during the pause, counted on `calendar` (a `WorkingCalendar`):
    asked on Friday at 17:00 and answered on Monday at 09:00, with 09:00-18:00 hours, a deadline moves
    on by one working hour, not by 64 hours.
    """
    for value, name in ((due_at, "due_at"), (paused_at, "paused_at"), (resumed_at, "resumed_at")):
        _require_aware(value, name)
    sla = _as_sla(sla)
    if sla.kind == "elapsed":
        return due_at.astimezone(UTC) + max(resumed_at - paused_at, timedelta(0))
    if not isinstance(calendar, WorkingCalendar):
        raise ValueError(
            f'SLA "{sla}" counts working time, so a pause in it is counted on a working calendar, '
            f"not on {calendar!r}"
        )
    return calendar.add_working_time(due_at, calendar.working_time_between(paused_at, resumed_at))
