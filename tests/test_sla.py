"""Tests for bot.sla: the SLA duration syntax and deadline computation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.sla import ELAPSED_TIME, deadline, format_duration, parse_duration


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
        def add(self, start: datetime, sla: timedelta) -> datetime:
            return datetime(2024, 1, 2, 9, 0, tzinfo=ZoneInfo("Europe/Moscow"))

    opened = datetime(2024, 1, 1, 20, 0, tzinfo=UTC)
    assert deadline(opened, timedelta(hours=1), NextMorning()) == datetime(2024, 1, 2, 6, 0, tzinfo=UTC)


def test_deadline_rejects_naive_calendar_result() -> None:
    class Broken:
        def add(self, start: datetime, sla: timedelta) -> datetime:
            return start.replace(tzinfo=None) + sla

    with pytest.raises(ValueError, match="timezone-aware"):
        deadline(datetime(2024, 1, 1, tzinfo=UTC), timedelta(hours=1), Broken())


def test_default_calendar_is_elapsed_time() -> None:
    opened = datetime(2024, 1, 1, tzinfo=UTC)
    assert ELAPSED_TIME.add(opened, timedelta(days=3)) == deadline(opened, timedelta(days=3))
