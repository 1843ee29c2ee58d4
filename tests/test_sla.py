"""Tests for bot.sla: the SLA and reminder syntax and deadline computation on elapsed time, and the
working time a ticket's pause takes out of its SLA. Working calendars are tested in test_calendar.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.sla import (
    ELAPSED_TIME,
    RemindBefore,
    Sla,
    WorkingCalendar,
    deadline,
    deadline_after_pause,
    format_duration,
    parse_duration,
    parse_remind_before,
    parse_sla,
    reminder_at,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("3d", timedelta(days=3)),
        ("  12h\n", timedelta(hours=12)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2h30m", timedelta(hours=2, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("90s", timedelta(seconds=90)),
        ("1d0h", timedelta(days=1)),
    ],
)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "0",
        "0s",
        "0d0h",
        "-3d",
        "+3d",
        "3",
        "d",
        "5x",
        "5wd",
        "3 d",
        "1.5h",
        "3D",
        "12h1d",
        "1h1h",
        "3dd",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"bad duration \".*\": use a number with s, m, h or d, e\.g\. 30s"):
        parse_duration(text)


def test_parse_duration_error_quotes_the_input() -> None:
    with pytest.raises(
        ValueError, match=r'^bad duration "5x": use a number with s, m, h or d, e\.g\. 30s, 15m, 4h, 3d$'
    ):
        parse_duration("5x")


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(days=3), "3d"),
        (timedelta(hours=4), "4h"),
        (timedelta(days=1, hours=12), "1d12h"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=36), "1d12h"),
        (timedelta(days=1, seconds=5), "1d5s"),
        (timedelta(0), "0s"),
        (timedelta(minutes=1, microseconds=999_999), "1m"),
    ],
)
def test_format_duration(delta: timedelta, expected: str) -> None:
    assert format_duration(delta) == expected


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(timedelta(seconds=-1))


@given(st.integers(min_value=1, max_value=10**9))
def test_durations_round_trip(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize("text", ["30s", "15m", "4h", "3d", "1d12h", "1m30s", "2d3h4m5s"])
def test_canonical_text_round_trips(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_deadline_returns_utc() -> None:
    opened = datetime(2024, 3, 1, 12, 0, tzinfo=ZoneInfo("Europe/Moscow"))
    due = deadline(opened, timedelta(hours=4))
    assert due.tzinfo is UTC
    assert due == datetime(2024, 3, 1, 13, 0, tzinfo=UTC)


def test_deadline_counts_elapsed_time_across_dst() -> None:
    # Berlin springs forward on 2024-03-31: a 24h SLA is 24 real hours, not the next day's same wall time.
    berlin = ZoneInfo("Europe/Berlin")
    opened = datetime(2024, 3, 30, 12, 0, tzinfo=berlin)
    due = deadline(opened, timedelta(days=1))
    assert due - opened == timedelta(hours=24)
    assert due.astimezone(berlin).hour == 13


def test_deadline_rejects_naive_datetime() -> None:
    naive = datetime(2024, 3, 1, 12, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        deadline(naive, timedelta(hours=1))


def test_deadline_uses_the_given_calendar() -> None:
    class NextMorning:
        def add(self, start: datetime, sla: Sla) -> datetime:
            return datetime(2024, 1, 2, 9, 0, tzinfo=ZoneInfo("Europe/Moscow"))

    opened = datetime(2024, 1, 1, 20, 0, tzinfo=UTC)
    assert deadline(opened, timedelta(hours=1), NextMorning()) == datetime(2024, 1, 2, 6, 0, tzinfo=UTC)


def test_deadline_rejects_naive_calendar_result() -> None:
    class Broken:
        def add(self, start: datetime, sla: Sla) -> datetime:
            return start.replace(tzinfo=None) + sla.duration

    with pytest.raises(ValueError, match="timezone-aware"):
        deadline(datetime(2024, 1, 1, tzinfo=UTC), timedelta(hours=1), Broken())


def test_default_calendar_is_elapsed_time() -> None:
    opened = datetime(2024, 1, 1, tzinfo=UTC)
    assert ELAPSED_TIME.add(opened, Sla.elapsed(timedelta(days=3))) == deadline(opened, timedelta(days=3))
    assert deadline(opened, parse_sla("3d")) == datetime(2024, 1, 4, tzinfo=UTC)


def test_calendar_receives_an_sla_even_when_given_a_timedelta() -> None:
    seen: list[Sla] = []

    class Recording:
        def add(self, start: datetime, sla: Sla) -> datetime:
            seen.append(sla)
            return start

    deadline(datetime(2024, 1, 1, tzinfo=UTC), timedelta(hours=4), Recording())
    assert seen == [Sla("elapsed", 4 * 3600)]


@pytest.mark.parametrize("text", ["5wd", "8wh"])
def test_elapsed_time_calendar_refuses_working_time(text: str) -> None:
    with pytest.raises(ValueError, match=f'SLA "{text}" counts working time, which needs a working calendar'):
        deadline(datetime(2024, 1, 1, tzinfo=UTC), parse_sla(text))


# --- Sla ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", Sla("elapsed", 30)),
        ("4h", Sla("elapsed", 4 * 3600)),
        (" 1d12h ", Sla("elapsed", 36 * 3600)),
        ("5wd", Sla("working_days", 5)),
        ("1wd", Sla.working_days(1)),
        ("8wh", Sla("working_hours", 8)),
        ("\t40wh\n", Sla.working_hours(40)),
    ],
)
def test_parse_sla_accepts(text: str, expected: Sla) -> None:
    assert parse_sla(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "5", "5w", "5WD", "5 wd", "1wd4wh", "5wd1h", "1d5wd", "-5wd", "1.5wd", "wd", "3x", "0s", "12h1d"],
)
def test_parse_sla_rejects(text: str) -> None:
    expected = (
        r'^bad SLA ".*": use a number with s, m, h or d \(30s, 15m, 4h, 3d, 1d12h\), '
        r"or with wd or wh for working days or hours \(5wd, 8wh\)$"
    )
    with pytest.raises(ValueError, match=expected):
        parse_sla(text)


@pytest.mark.parametrize(("text", "unit"), [("0wd", "days"), ("00wh", "hours")])
def test_parse_sla_rejects_zero_working_time(text: str, unit: str) -> None:
    with pytest.raises(
        ValueError, match=f'^bad SLA "{text}": the number of working {unit} must be positive$'
    ):
        parse_sla(text)


def test_parse_sla_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match='bad SLA "5"'):
        parse_sla(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["30s", "4h", "3d", "1d12h", "1m30s", "5wd", "8wh", "120wd"])
def test_sla_compact_form_round_trips(text: str) -> None:
    assert str(parse_sla(text)) == text


def test_sla_from_timedelta() -> None:
    assert Sla.elapsed(timedelta(days=1, hours=12)) == parse_sla("1d12h")
    assert Sla.elapsed(timedelta(hours=2)).duration == timedelta(hours=2)
    assert str(Sla.elapsed(timedelta(minutes=1, microseconds=5))) == "1m"


@pytest.mark.parametrize(
    "build",
    [
        lambda: Sla.elapsed(timedelta(0)),
        lambda: Sla.elapsed(timedelta(milliseconds=500)),
        lambda: Sla.elapsed(timedelta(hours=-1)),
        lambda: Sla.working_days(0),
        lambda: Sla("working_days", True),
        lambda: Sla("weeks", 1),  # type: ignore[arg-type]
    ],
)
def test_sla_rejects_nonsense(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_working_sla_has_no_fixed_duration() -> None:
    with pytest.raises(ValueError, match='SLA "5wd" counts working time and has no fixed length'):
        _ = parse_sla("5wd").duration


def test_sla_is_frozen_and_hashable() -> None:
    sla = parse_sla("5wd")
    assert {sla, parse_sla("5wd")} == {sla}
    with pytest.raises(AttributeError):
        sla.amount = 6  # type: ignore[misc]


# --- reminder lead -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "compact"),
    [
        ("4h", RemindBefore("duration", 4 * 3600), "4h"),
        ("1d12h", RemindBefore.duration(timedelta(hours=36)), "1d12h"),
        (" 25% ", RemindBefore("percent", 25), "25%"),
        ("0%", RemindBefore.percent(0), "0%"),
        ("99%", RemindBefore.percent(99), "99%"),
        ("0", RemindBefore("duration", 0), "0s"),
        ("0s", RemindBefore("duration", 0), "0s"),
    ],
)
def test_parse_remind_before_accepts(text: str, expected: RemindBefore, compact: str) -> None:
    lead = parse_remind_before(text)
    assert lead == expected
    assert str(lead) == compact
    assert parse_remind_before(str(lead)) == lead


@pytest.mark.parametrize("text", ["", "x", "25", "25 %", "2.5%", "-1h", "4H", "5wd", "%", "12h1d"])
def test_parse_remind_before_rejects(text: str) -> None:
    with pytest.raises(
        ValueError, match=r'^bad reminder lead ".*": use a duration such as 4h or 1d12h, a share'
    ):
        parse_remind_before(text)


@pytest.mark.parametrize("text", ["100%", "150%"])
def test_parse_remind_before_rejects_whole_sla(text: str) -> None:
    with pytest.raises(ValueError, match=f'^bad reminder lead "{text}": a percentage must be below 100%'):
        parse_remind_before(text)


OPENED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DUE = datetime(2026, 3, 6, 10, 0, tzinfo=UTC)


def test_reminder_at_with_a_duration() -> None:
    assert reminder_at(OPENED, DUE, parse_remind_before("1d")) == datetime(2026, 3, 5, 10, 0, tzinfo=UTC)


def test_reminder_at_with_a_percentage_of_real_time() -> None:
    # Four days from opening to deadline: 25% of that is one day, 10% is 9h36m.
    assert reminder_at(OPENED, DUE, parse_remind_before("25%")) == datetime(2026, 3, 5, 10, 0, tzinfo=UTC)
    assert reminder_at(OPENED, DUE, parse_remind_before("10%")) == datetime(2026, 3, 6, 0, 24, tzinfo=UTC)


def test_reminder_at_returns_utc_for_local_input() -> None:
    moscow = ZoneInfo("Europe/Moscow")
    at = reminder_at(OPENED.astimezone(moscow), DUE.astimezone(moscow), parse_remind_before("2h"))
    assert at is not None
    assert at.tzinfo is UTC
    assert at == datetime(2026, 3, 6, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("lead", [None, "0", "0%", "4d", "5d"])
def test_no_reminder_without_a_lead_or_when_it_would_not_follow_the_opening(lead: str | None) -> None:
    assert reminder_at(OPENED, DUE, None if lead is None else parse_remind_before(lead)) is None


def test_reminder_at_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        reminder_at(OPENED.replace(tzinfo=None), DUE, parse_remind_before("1h"))


# --- working time between two instants, and a pause in a working-time SLA ----------------------

MOSCOW = ZoneInfo("Europe/Moscow")  # UTC+3 all year
OFFICE = WorkingCalendar(MOSCOW)  # Monday to Friday, 09:00-18:00, no holidays
# Monday 9 March 2026 a holiday, Saturday 7 March a working day given in exchange.
SWAPPED = WorkingCalendar(
    MOSCOW, holidays=frozenset({date(2026, 3, 9)}), extra_working=frozenset({date(2026, 3, 7)})
)
HOLIDAY_MONDAY = WorkingCalendar(MOSCOW, holidays=frozenset({date(2026, 3, 9)}))


# Any minute of 2026 in Moscow.
MINUTES_OF_2026 = st.integers(min_value=0, max_value=60 * 24 * 364).map(
    lambda minutes: datetime(2026, 1, 1, tzinfo=MOSCOW) + timedelta(minutes=minutes)
)


def msk(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment of March 2026 in Moscow: the 2nd is a Monday, the 6th a Friday, the 7th and 8th a weekend."""
    return datetime(2026, 3, day, hour, minute, tzinfo=MOSCOW)


@pytest.mark.parametrize(
    ("start", "end", "worked"),
    [
        (msk(3, 10), msk(3, 12, 30), timedelta(hours=2, minutes=30)),  # inside one day
        (msk(3, 7), msk(3, 20), timedelta(hours=9)),  # a whole day, from before opening to after closing
        (msk(3, 9), msk(3, 18), timedelta(hours=9)),  # opening to closing exactly
        (msk(3, 17), msk(4, 10), timedelta(hours=2)),  # across a night
        (msk(2, 17), msk(5, 10), timedelta(hours=20)),  # across three nights: 1 + 9 + 9 + 1
        (msk(6, 17), msk(9, 9), timedelta(hours=1)),  # across a weekend, ending at Monday's opening
        (msk(6, 17), msk(9, 11), timedelta(hours=3)),
        (msk(7, 10), msk(8, 20), timedelta(0)),  # all on the weekend
        (msk(3, 19), msk(4, 8), timedelta(0)),  # all in one night
        (msk(3, 18), msk(4, 9), timedelta(0)),  # from closing to the next opening
        (msk(3, 12), msk(3, 12), timedelta(0)),  # no time at all
        (msk(4, 12), msk(3, 12), timedelta(0)),  # backwards
    ],
)
def test_working_time_between(start: datetime, end: datetime, worked: timedelta) -> None:
    assert OFFICE.working_time_between(start, end) == worked


def test_working_time_between_skips_holidays_and_counts_working_weekend_days() -> None:
    friday_1700, tuesday_1000 = msk(6, 17), msk(10, 10)
    assert OFFICE.working_time_between(friday_1700, tuesday_1000) == timedelta(hours=11)
    assert HOLIDAY_MONDAY.working_time_between(friday_1700, tuesday_1000) == timedelta(hours=2)
    assert SWAPPED.working_time_between(friday_1700, tuesday_1000) == timedelta(hours=11)  # Sat, not Mon
    assert SWAPPED.working_time_between(msk(7, 8), msk(7, 12)) == timedelta(hours=3)


def test_working_time_between_reads_the_instants_in_the_calendars_zone() -> None:
    # 14:00-16:00 UTC on Friday is 17:00-19:00 in Moscow: one working hour, not two.
    start, end = datetime(2026, 3, 6, 14, tzinfo=UTC), datetime(2026, 3, 6, 16, tzinfo=UTC)
    assert OFFICE.working_time_between(start, end) == timedelta(hours=1)
    tokyo = WorkingCalendar(ZoneInfo("Asia/Tokyo"))  # 23:00-01:00 there: nothing
    assert tokyo.working_time_between(start, end) == timedelta(0)


def test_working_time_between_follows_the_wall_clock_on_a_dst_change() -> None:
    # Berlin springs forward at 02:00 on Sunday 29 March 2026; a shift working 01:00-05:00 every day
    # has the four wall-clock hours that its SLAs count, though only three real ones passed.
    berlin = ZoneInfo("Europe/Berlin")
    nights = WorkingCalendar(berlin, time(1), time(5), weekends=frozenset())
    start, end = datetime(2026, 3, 29, 0, tzinfo=berlin), datetime(2026, 3, 29, 6, tzinfo=berlin)
    assert nights.working_time_between(start, end) == timedelta(hours=4)


def test_working_time_between_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.working_time_between(msk(3, 10).replace(tzinfo=None), msk(3, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.working_time_between(msk(3, 10), msk(3, 12).replace(tzinfo=None))


@given(
    start=MINUTES_OF_2026,
    minutes=st.integers(min_value=1, max_value=60 * 200),
)
def test_working_time_between_undoes_adding_working_time(start: datetime, minutes: int) -> None:
    amount = timedelta(minutes=minutes)
    for calendar in (OFFICE, SWAPPED):
        end = calendar.add_working_time(start, amount)
        assert calendar.working_time_between(start, end) == amount
    hours = minutes // 60 + 1
    assert OFFICE.working_time_between(start, OFFICE.add(start, Sla.working_hours(hours))) == timedelta(
        hours=hours
    )


def test_adding_working_time() -> None:
    assert OFFICE.add_working_time(msk(9, 17), timedelta(hours=1)) == msk(9, 18)  # ends at closing
    assert OFFICE.add_working_time(msk(9, 18), timedelta(hours=1)) == msk(10, 10)
    assert OFFICE.add_working_time(msk(6, 17), timedelta(hours=2)) == msk(9, 10)
    assert HOLIDAY_MONDAY.add_working_time(msk(6, 17), timedelta(hours=2)) == msk(10, 10)
    # Nothing to add: the instant stays as it is, out of hours too, instead of moving to an opening.
    assert OFFICE.add_working_time(msk(7, 12), timedelta(0)) == msk(7, 12)
    assert OFFICE.add_working_time(msk(7, 12), timedelta(0)).tzinfo is UTC
    with pytest.raises(ValueError, match="negative"):
        OFFICE.add_working_time(msk(3, 10), timedelta(hours=-1))


SIXTEEN_HOURS = parse_sla("16wh")


def test_a_pause_moves_a_working_hours_deadline_by_the_working_time_it_took() -> None:
    # 16 working hours from Friday 10:00 are due on Monday at 17:00. Asked on Friday at 17:00 and
    # answered on Monday at 09:00, the ticket waited one working hour (Friday 17:00-18:00): due at 18:00.
    due = deadline(msk(6, 10), SIXTEEN_HOURS, OFFICE)
    assert due == msk(9, 17)
    assert deadline_after_pause(due, msk(6, 17), msk(9, 9), SIXTEEN_HOURS, OFFICE) == msk(9, 18)
    # Monday a holiday: due on Tuesday at 17:00, and the wait until Tuesday 09:00 still took one hour.
    due = deadline(msk(6, 10), SIXTEEN_HOURS, HOLIDAY_MONDAY)
    assert due == msk(10, 17)
    assert deadline_after_pause(due, msk(6, 17), msk(10, 9), SIXTEEN_HOURS, HOLIDAY_MONDAY) == msk(10, 18)


def test_a_pause_moves_a_working_days_deadline_by_the_working_time_it_took() -> None:
    two_days = parse_sla("2wd")
    due = deadline(msk(2, 10), two_days, OFFICE)
    assert due == msk(4, 18)
    # Two working hours on Tuesday: two hours into Thursday, where the stopped clock would have run out.
    assert deadline_after_pause(due, msk(3, 12), msk(3, 14), two_days, OFFICE) == msk(5, 11)


def test_a_pause_out_of_working_hours_moves_nothing() -> None:
    due = msk(9, 17)
    assert deadline_after_pause(due, msk(6, 19), msk(8, 23), SIXTEEN_HOURS, OFFICE) == due
    assert deadline_after_pause(due, msk(9, 12), msk(9, 12), SIXTEEN_HOURS, OFFICE) == due


def test_a_pause_in_an_elapsed_sla_moves_it_by_the_real_time() -> None:
    due = msk(9, 10)
    moved = deadline_after_pause(due, msk(6, 17), msk(9, 9), parse_sla("3d"), OFFICE)
    assert moved == due + timedelta(hours=64)
    assert moved.tzinfo is UTC
    assert deadline_after_pause(due, msk(6, 17), msk(9, 9), timedelta(days=3)) == due + timedelta(hours=64)


def test_a_pause_in_a_working_sla_needs_a_working_calendar() -> None:
    with pytest.raises(ValueError, match="working calendar"):
        deadline_after_pause(msk(9, 17), msk(6, 17), msk(9, 9), SIXTEEN_HOURS, ELAPSED_TIME)


@given(
    opened=MINUTES_OF_2026,
    hours=st.integers(min_value=1, max_value=80),
    before_pause=st.integers(min_value=0, max_value=60 * 24 * 10),
    pause=st.integers(min_value=0, max_value=60 * 24 * 10),
)
def test_a_paused_deadline_is_where_the_stopped_clock_would_run_out(
    opened: datetime, hours: int, before_pause: int, pause: int
) -> None:
    sla = Sla.working_hours(hours)
    for calendar in (OFFICE, SWAPPED):
        due = deadline(opened, sla, calendar)
        paused_at = opened + timedelta(minutes=before_pause)
        resumed_at = paused_at + timedelta(minutes=pause)
        left = calendar.working_time_between(paused_at, due)  # the SLA not yet spent when it stopped
        moved = deadline_after_pause(due, paused_at, resumed_at, sla, calendar)
        if left:
            assert moved == calendar.add_working_time(resumed_at, left)
        # Working time from opening to the new deadline, less what the pause took, is the whole SLA.
        worked = calendar.working_time_between(opened, moved)
        assert worked - calendar.working_time_between(paused_at, resumed_at) == timedelta(hours=hours)
