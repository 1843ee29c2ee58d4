"""Tests for bot.sla: the SLA and reminder syntax and deadline computation on elapsed time.
Working calendars are tested in test_calendar.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.sla import (
    ELAPSED_TIME,
    RemindBefore,
    Sla,
    deadline,
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
