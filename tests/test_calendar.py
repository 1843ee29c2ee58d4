"""Tests for working-time SLAs: WorkingCalendar's counting rules, the [calendar] table of the routing
file, and deadlines and reminders computed through Routing."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.config import Routing, RoutingError, load_routing, parse_routing, routing_summary
from bot.sla import Calendar, Sla, WorkingCalendar, deadline, parse_sla

MOSCOW = ZoneInfo("Europe/Moscow")  # UTC+3 all year
BERLIN = ZoneInfo("Europe/Berlin")  # CET, CEST from 29 March 2026 to 25 October 2026
EXAMPLE = Path(__file__).resolve().parent.parent / "routing.example.toml"

# No holidays here: Monday 9 March 2026 is an ordinary working day for this calendar.
PLAIN = WorkingCalendar(MOSCOW)


def msk(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MOSCOW)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture(scope="module")
def russia_2026() -> Routing:
    return load_routing(EXAMPLE)


# --- working days --------------------------------------------------------------------------


def test_default_calendar_is_monday_to_friday_nine_to_six() -> None:
    assert (PLAIN.start, PLAIN.end) == (time(9), time(18))
    assert PLAIN.weekends == frozenset({5, 6})
    assert [PLAIN.is_working_day(date(2026, 3, d)) for d in range(2, 9)] == [True] * 5 + [False] * 2


@pytest.mark.parametrize("hour", [0, 7, 9, 10, 17, 18, 19, 23])
def test_working_days_count_from_the_day_of_arrival_whatever_the_hour(hour: int) -> None:
    # Monday is day 0; Tuesday to Friday are days 1-4 and the next Monday is day 5.
    assert PLAIN.add(msk(2026, 3, 2, hour), parse_sla("5wd")) == msk(2026, 3, 9, 18)


def test_working_days_across_a_weekend() -> None:
    assert PLAIN.add(msk(2026, 3, 5, 11), parse_sla("2wd")) == msk(2026, 3, 9, 18)


@pytest.mark.parametrize(
    "opened",
    [msk(2026, 3, 6, 17), msk(2026, 3, 6, 19), msk(2026, 3, 7, 12), msk(2026, 3, 8, 23, 59)],
    ids=["friday-in-hours", "friday-after-hours", "saturday", "sunday-night"],
)
def test_one_working_day_from_late_week_is_monday_closing(opened: datetime) -> None:
    due = PLAIN.add(opened, Sla.working_days(1))
    assert due == msk(2026, 3, 9, 18)
    assert due.tzinfo is UTC
    assert due == utc(2026, 3, 9, 15)


def test_working_days_across_the_new_year_holidays_2026(russia_2026: Routing) -> None:
    calendar = russia_2026.calendar
    # 1-8 January are holidays, 9 January is the day off moved from Saturday 3 January,
    # 10-11 January are a weekend: the first working day of 2026 is Monday 12 January.
    assert [d for d in range(1, 13) if calendar.is_working_day(date(2026, 1, d))] == [12]
    assert calendar.add(msk(2025, 12, 30, 12), parse_sla("1wd")) == msk(2025, 12, 31, 18)
    assert calendar.add(msk(2025, 12, 31, 12), parse_sla("1wd")) == msk(2026, 1, 12, 18)
    assert calendar.add(msk(2025, 12, 31, 12), parse_sla("3wd")) == msk(2026, 1, 14, 18)


def test_report_on_a_holiday_counts_from_the_next_working_day(russia_2026: Routing) -> None:
    calendar = russia_2026.calendar
    assert not calendar.is_working_day(date(2026, 1, 5))
    assert calendar.add(msk(2026, 1, 5, 11), parse_sla("1wd")) == msk(2026, 1, 12, 18)
    # Sunday 8 March moves its day off to Monday 9 March.
    assert calendar.add(msk(2026, 3, 6, 10), parse_sla("1wd")) == msk(2026, 3, 10, 18)
    assert calendar.add(msk(2026, 3, 9, 10), parse_sla("1wd")) == msk(2026, 3, 10, 18)


def test_report_after_hours_before_a_holiday(russia_2026: Routing) -> None:
    # Thursday 30 April after closing; 1 May (Friday) is a holiday, then a weekend.
    assert russia_2026.calendar.add(msk(2026, 4, 30, 20), parse_sla("1wd")) == msk(2026, 5, 4, 18)


def test_the_2026_calendar_has_247_working_days(russia_2026: Routing) -> None:
    calendar = russia_2026.calendar
    days = [date(2026, 1, 1) + timedelta(days=n) for n in range(365)]
    off = [d for d in days if not calendar.is_working_day(d)]
    assert len(days) - len(off) == 247
    weekday_days_off = sorted(d for d in off if d.weekday() < 5)
    assert weekday_days_off == [
        date(2026, 1, 1),
        date(2026, 1, 2),
        date(2026, 1, 5),
        date(2026, 1, 6),
        date(2026, 1, 7),
        date(2026, 1, 8),
        date(2026, 1, 9),
        date(2026, 2, 23),
        date(2026, 3, 9),
        date(2026, 5, 1),
        date(2026, 5, 11),
        date(2026, 6, 12),
        date(2026, 11, 4),
        date(2026, 12, 31),
    ]
    assert calendar.extra_working == frozenset()


# A hypothetical transfer: Monday 4 May off, Saturday 16 May worked instead.
TRANSFERRED = WorkingCalendar(
    MOSCOW, holidays=frozenset({date(2026, 5, 4)}), extra_working=frozenset({date(2026, 5, 16)})
)


def test_transferred_working_saturday() -> None:
    assert TRANSFERRED.is_working_day(date(2026, 5, 16))
    assert not TRANSFERRED.is_working_day(date(2026, 5, 17))
    assert not TRANSFERRED.is_working_day(date(2026, 5, 4))
    assert TRANSFERRED.add(msk(2026, 5, 15, 10), parse_sla("1wd")) == msk(2026, 5, 16, 18)
    assert TRANSFERRED.add(msk(2026, 5, 15, 10), parse_sla("2wd")) == msk(2026, 5, 18, 18)
    # The working Saturday is day 0 for a report that arrives on it.
    assert TRANSFERRED.add(msk(2026, 5, 16, 10), parse_sla("1wd")) == msk(2026, 5, 18, 18)
    assert TRANSFERRED.add(msk(2026, 5, 1, 10), parse_sla("1wd")) == msk(2026, 5, 5, 18)


def test_transferred_working_saturday_counts_working_hours() -> None:
    assert TRANSFERRED.add(msk(2026, 5, 15, 17), parse_sla("2wh")) == msk(2026, 5, 16, 10)
    assert TRANSFERRED.add(msk(2026, 5, 16, 10), parse_sla("2wh")) == msk(2026, 5, 16, 12)


# --- working hours -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opened", "sla", "due"),
    [
        (msk(2026, 3, 6, 17), "2wh", msk(2026, 3, 9, 10)),  # Friday evening to Monday morning
        (msk(2026, 3, 3, 10), "2wh", msk(2026, 3, 3, 12)),  # within one day
        (msk(2026, 3, 3, 17), "1wh", msk(2026, 3, 3, 18)),  # used up exactly at closing
        (msk(2026, 3, 3, 16), "9wh", msk(2026, 3, 4, 16)),  # one working day, across a night
        (msk(2026, 3, 3, 7), "1wh", msk(2026, 3, 3, 10)),  # before opening
        (msk(2026, 3, 3, 18), "1wh", msk(2026, 3, 4, 10)),  # at closing
        (msk(2026, 3, 3, 22), "1wh", msk(2026, 3, 4, 10)),  # at night
        (msk(2026, 3, 7, 12), "1wh", msk(2026, 3, 9, 10)),  # on Saturday
        (msk(2026, 3, 2, 9), "40wh", msk(2026, 3, 6, 13)),  # four 9-hour days and 4 hours
        (msk(2026, 3, 3, 17, 30), "1wh", msk(2026, 3, 4, 9, 30)),  # half an hour either side of night
    ],
)
def test_working_hours(opened: datetime, sla: str, due: datetime) -> None:
    assert PLAIN.add(opened, parse_sla(sla)) == due


def test_working_hours_across_holidays(russia_2026: Routing) -> None:
    calendar = russia_2026.calendar
    # Thursday 30 April 17:00: one hour that day, then 1-3 May off, then Monday 4 May.
    assert calendar.add(msk(2026, 4, 30, 17), parse_sla("2wh")) == msk(2026, 5, 4, 10)
    assert calendar.add(msk(2026, 1, 8, 12), parse_sla("1wh")) == msk(2026, 1, 12, 10)


def test_custom_working_hours() -> None:
    short = WorkingCalendar(MOSCOW, time(8, 30), time(12, 45))
    assert short.add(msk(2026, 3, 3, 12), parse_sla("1wh")) == msk(2026, 3, 4, 8, 45)
    assert short.add(msk(2026, 3, 3, 13), parse_sla("1wd")) == msk(2026, 3, 4, 12, 45)


# --- elapsed SLAs ---------------------------------------------------------------------------


@pytest.mark.parametrize("opened", [msk(2026, 3, 6, 19), msk(2026, 3, 7, 3), msk(2026, 1, 1, 12)], ids=str)
def test_elapsed_slas_ignore_the_calendar(opened: datetime, russia_2026: Routing) -> None:
    for calendar in (PLAIN, russia_2026.calendar):
        assert calendar.add(opened, parse_sla("3d")) == opened + timedelta(days=3)
        assert calendar.add(opened, parse_sla("4h")) == opened + timedelta(hours=4)
        assert calendar.add(opened, timedelta(minutes=90)) == opened + timedelta(minutes=90)


def test_elapsed_sla_is_real_time_across_dst() -> None:
    calendar = WorkingCalendar(BERLIN)
    opened = datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN)
    due = calendar.add(opened, parse_sla("1d"))
    assert due - opened == timedelta(hours=24)
    assert due.astimezone(BERLIN).hour == 13


# --- time zones and DST ----------------------------------------------------------------------


def test_a_dst_free_zone_is_offset_by_its_constant_offset() -> None:
    tokyo = WorkingCalendar(ZoneInfo("Asia/Tokyo"))
    due = tokyo.add(datetime(2026, 3, 6, 19, tzinfo=ZoneInfo("Asia/Tokyo")), parse_sla("1wd"))
    assert due == utc(2026, 3, 9, 9)


def test_opening_instant_is_read_in_the_calendars_zone() -> None:
    # 22:00 UTC on Friday is already Saturday 01:00 in Moscow.
    assert PLAIN.add(utc(2026, 3, 6, 22), parse_sla("1wh")) == utc(2026, 3, 9, 7)
    assert PLAIN.add(utc(2026, 3, 6, 14), parse_sla("1wh")) == utc(2026, 3, 6, 15)


def test_working_time_across_spring_forward_in_berlin() -> None:
    calendar = WorkingCalendar(BERLIN)
    friday = datetime(2026, 3, 27, 17, 0, tzinfo=BERLIN)  # CET, UTC+1
    assert friday.utcoffset() == timedelta(hours=1)
    # Local opening hours still apply on Monday, now in CEST (UTC+2).
    assert calendar.add(friday, parse_sla("2wh")) == utc(2026, 3, 30, 8)
    assert calendar.add(friday, parse_sla("1wd")) == utc(2026, 3, 30, 16)
    assert calendar.add(friday, parse_sla("1wd")).astimezone(BERLIN).time() == time(18)


def test_working_time_across_fall_back_in_berlin() -> None:
    calendar = WorkingCalendar(BERLIN)
    friday = datetime(2026, 10, 23, 17, 0, tzinfo=BERLIN)  # CEST, UTC+2
    assert calendar.add(friday, parse_sla("2wh")) == utc(2026, 10, 26, 9)  # Monday 10:00 CET


def test_a_working_day_lasts_its_wall_clock_hours_on_a_dst_change() -> None:
    # Night shifts on every day of the week: the 01:00-05:00 window of 29 March has only three real
    # hours, as 02:00 jumps to 03:00, and counting follows the wall clock.
    nights = WorkingCalendar(BERLIN, time(1), time(5), weekends=frozenset())
    opened = datetime(2026, 3, 29, 1, 0, tzinfo=BERLIN)
    due = nights.add(opened, parse_sla("2wh"))
    assert due.astimezone(BERLIN).time() == time(3)
    assert due == utc(2026, 3, 29, 1)
    assert due - opened == timedelta(hours=1)


# --- next working moment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (msk(2026, 3, 3, 10, 15), msk(2026, 3, 3, 10, 15)),
        (msk(2026, 3, 3, 9), msk(2026, 3, 3, 9)),
        (msk(2026, 3, 3, 6), msk(2026, 3, 3, 9)),
        (msk(2026, 3, 3, 18), msk(2026, 3, 4, 9)),
        (msk(2026, 3, 6, 19), msk(2026, 3, 9, 9)),
        (msk(2026, 3, 8, 9, 30), msk(2026, 3, 9, 9)),
    ],
)
def test_next_working_moment(moment: datetime, expected: datetime) -> None:
    found = PLAIN.next_working_moment(moment)
    assert found == expected
    assert found.tzinfo is UTC


def test_next_working_moment_skips_holidays(russia_2026: Routing) -> None:
    assert russia_2026.calendar.next_working_moment(msk(2026, 1, 1, 10)) == msk(2026, 1, 12, 9)


# --- the calendar object ---------------------------------------------------------------------


def test_working_calendar_is_a_calendar_for_deadline() -> None:
    calendar: Calendar = PLAIN
    assert deadline(msk(2026, 3, 6, 19), parse_sla("1wd"), calendar) == utc(2026, 3, 9, 15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": time(18), "end": time(9)}, "working hours must end after they start, got 18:00-09:00"),
        ({"start": time(9), "end": time(9)}, "working hours must end after they start"),
        ({"start": time(9, tzinfo=UTC)}, "local wall-clock times"),
        ({"weekends": frozenset(range(7))}, "every day of the week is a weekend"),
        ({"weekends": frozenset({7})}, "weekday numbers 0 \\(Monday\\) to 6"),
        (
            {"holidays": frozenset({date(2026, 5, 16)}), "extra_working": frozenset({date(2026, 5, 16)})},
            "2026-05-16: both a holiday and a working day",
        ),
    ],
)
def test_working_calendar_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkingCalendar(MOSCOW, **kwargs)  # type: ignore[arg-type]


def test_working_calendar_rejects_naive_datetimes() -> None:
    naive = datetime(2026, 3, 2, 10, 0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="timezone-aware"):
        PLAIN.add(naive, parse_sla("1wd"))
    with pytest.raises(ValueError, match="timezone-aware"):
        PLAIN.next_working_moment(naive)


def test_seven_day_week() -> None:
    every_day = WorkingCalendar(MOSCOW, weekends=frozenset())
    assert every_day.add(msk(2026, 3, 6, 19), parse_sla("1wd")) == msk(2026, 3, 7, 18)


# --- through the routing file ------------------------------------------------------------------

BASE = """
timezone = "Europe/Moscow"

[coordinators]
chat_id = -1001000000001

[[agencies]]
id = "housing"
name = { ru = "ЖКХ", en = "Housing" }
chat_id = -1001000000012

[[categories]]
id = "buildings"
title = { ru = "Дома", en = "Buildings" }
agency = "housing"
sla = "5wd"
remind_before = "1d"

[[categories]]
id = "lifts"
title = { ru = "Лифты", en = "Lifts" }
agency = "housing"
sla = "8wh"
remind_before = "25%"

[[categories]]
id = "heating"
title = { ru = "Отопление", en = "Heating" }
agency = "housing"
sla = "12h"
"""

CALENDAR = """
[calendar]
working_hours = "08:00-17:00"
weekends = ["sun"]
holidays = ["2026-03-09", 2026-03-10]
working_days = ["2026-03-15"]
"""


def routing_error(text: str) -> str:
    with pytest.raises(RoutingError) as caught:
        parse_routing(text)
    return str(caught.value)


def test_calendar_section_builds_the_calendar() -> None:
    routing = parse_routing(BASE + CALENDAR)
    calendar = routing.calendar
    assert calendar == WorkingCalendar(
        MOSCOW,
        time(8),
        time(17),
        frozenset({6}),
        frozenset({date(2026, 3, 9), date(2026, 3, 10)}),
        frozenset({date(2026, 3, 15)}),
    )
    # Saturday 7 March works in a six-day week; 9-10 March are off; Sunday 15 March is transferred.
    assert routing.deadline("buildings", msk(2026, 3, 6, 12)) == msk(2026, 3, 14, 17)
    assert routing.deadline("buildings", msk(2026, 3, 12, 12)) == msk(2026, 3, 17, 17)


def test_routing_deadline_uses_the_routing_calendar() -> None:
    routing = parse_routing(BASE)
    assert routing.deadline("buildings", msk(2026, 3, 2, 10)) == utc(2026, 3, 9, 15)
    assert routing.deadline("lifts", msk(2026, 3, 6, 17)) == msk(2026, 3, 9, 16)
    assert routing.deadline("heating", msk(2026, 3, 6, 19)) == msk(2026, 3, 7, 7)


def test_reminder_with_a_duration_before_a_working_day_deadline() -> None:
    routing = parse_routing(BASE)
    opened = msk(2026, 3, 2, 10)
    due = routing.deadline("buildings", opened)
    assert routing.reminder_at("buildings", opened, due) == msk(2026, 3, 8, 18)


def test_reminder_with_a_percentage_of_real_time() -> None:
    routing = parse_routing(BASE)
    # 8wh from Friday 17:00 is one hour on Friday and seven on Monday: due Monday 16:00, 71 real
    # hours after opening, a quarter of which is 17h45m.
    opened = msk(2026, 3, 6, 17)
    due = routing.deadline("lifts", opened)
    assert due == msk(2026, 3, 9, 16)
    assert routing.reminder_at("lifts", opened, due) == msk(2026, 3, 8, 22, 15)


def test_no_reminder_for_a_category_with_a_zero_lead() -> None:
    routing = parse_routing(BASE.replace('sla = "12h"', 'sla = "12h"\nremind_before = "0"'))
    opened = msk(2026, 3, 6, 19)
    assert routing.reminder_at("heating", opened, routing.deadline("heating", opened)) is None


def test_no_reminder_when_a_fixed_lead_exceeds_the_time_left() -> None:
    routing = parse_routing(BASE.replace('sla = "12h"', 'sla = "12h"\nremind_before = "1d"'))
    opened = msk(2026, 3, 6, 19)
    assert routing.reminder_at("heating", opened, routing.deadline("heating", opened)) is None


def test_example_reminders(russia_2026: Routing) -> None:
    opened = msk(2026, 3, 2, 10)
    # 5wd from Monday 2 March skips Monday 9 March, a holiday in 2026: due Tuesday 10 March 18:00.
    due = russia_2026.deadline("buildings", opened)
    assert due == msk(2026, 3, 10, 18)
    assert russia_2026.reminder_at("buildings", opened, due) == due - (due - opened) / 4
    assert russia_2026.reminder_at("buildings", opened, due) == msk(2026, 3, 8, 16)
    heating_due = russia_2026.deadline("heating", opened)
    assert heating_due == msk(2026, 3, 2, 22)
    assert russia_2026.reminder_at("heating", opened, heating_due) == msk(2026, 3, 2, 19)


def test_summary_describes_the_calendar() -> None:
    summary = routing_summary(parse_routing(BASE + CALENDAR))
    assert (
        "Calendar: working hours 08:00-17:00, weekends sun; 2 holidays and 1 transferred working days"
        in summary
    )
    assert "buildings: Buildings, SLA 5wd, reminder 1d before" in summary
    assert "lifts: Lifts, SLA 8wh, reminder 25% before" in summary
    assert "heating: Heating, SLA 12h, reminder 25% before" in summary


def test_summary_names_the_default_calendar() -> None:
    summary = routing_summary(parse_routing(BASE))
    assert (
        "Calendar: none in the file; working-day SLAs count 09:00-18:00, weekends sat, sun, no holidays"
        in summary
    )


def test_calendar_defaults_inside_the_section() -> None:
    routing = parse_routing(BASE + '[calendar]\nholidays = ["2026-03-09"]\n')
    assert routing.calendar == WorkingCalendar(MOSCOW, holidays=frozenset({date(2026, 3, 9)}))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'working_hours = "9-18"',
            'calendar: working_hours "9-18" is invalid: use local times as "HH:MM-HH:MM"',
        ),
        ('working_hours = "09:00-24:00"', 'calendar: working_hours "09:00-24:00" is invalid'),
        ('working_hours = "09:60-18:00"', 'calendar: working_hours "09:60-18:00" is invalid'),
        ("working_hours = 9", "calendar: working_hours 9 is invalid"),
        (
            'working_hours = "18:00-09:00"',
            'calendar: working_hours "18:00-09:00" is invalid: the working day must end after it starts',
        ),
        ('weekends = ["sat", "sunday", "sn"]', 'calendar: weekends: unknown weekday "sn" (use mon, tue, wed'),
        ("weekends = [6]", "calendar: weekends: unknown weekday 6"),
        ('weekends = "sat"', "calendar: weekends must be a list of weekday names"),
        (
            'weekends = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]',
            "calendar: weekends: every day of the week is a weekend",
        ),
        ('holidays = ["2026-02-30"]', 'calendar: holidays: bad date "2026-02-30": use YYYY-MM-DD'),
        ('holidays = ["01.01.2026"]', 'calendar: holidays: bad date "01.01.2026"'),
        ('holidays = ["20260101"]', 'calendar: holidays: bad date "20260101"'),
        ("holidays = [2026-01-01T10:00:00]", "calendar: holidays: bad date 2026-01-01 10:00:00"),
        ('working_days = ["2026-13-01"]', 'calendar: working_days: bad date "2026-13-01"'),
        (
            'holidays = "2026-01-01"',
            'calendar: holidays must be a list of dates, e.g. holidays = ["2026-01-01"]',
        ),
        (
            'holidays = ["2026-05-16", "2026-01-01"]\nworking_days = ["2026-05-16"]',
            "calendar: 2026-05-16: listed both in holidays and in working_days",
        ),
        ("holiday = []", "calendar: holiday: Extra inputs are not permitted"),
    ],
)
def test_calendar_errors_name_the_entry(line: str, message: str) -> None:
    error = routing_error(BASE + f"[calendar]\n{line}\n")
    assert error.startswith(f"routing.toml: {message}"), error


def test_bad_remind_before_names_the_category() -> None:
    error = routing_error(BASE.replace('remind_before = "25%"', 'remind_before = "quarter"'))
    assert error.startswith('routing.toml: category "lifts": remind_before: bad reminder lead "quarter"')
