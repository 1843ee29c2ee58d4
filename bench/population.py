"""Filling a real SQLite file fast: raw `executemany` inserts, one transaction per call, into the schema
the migrations create (`storage/schema.py`).

Times are written the way SQLAlchemy stores an aware UTC datetime in SQLite (naive UTC text with
microseconds), so the application reads these rows exactly as rows it wrote itself.

Every hundredth ticket is due: overdue, with its next alert time passed. Of the rest, a fifth are open
and wait for something still ahead (a reminder, an alert at the deadline, a "still in work" note, the
auto-close of a resolved ticket, the timeout of a question to the citizen) and the others are closed.
"""

from __future__ import annotations

import functools
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

DUE_EVERY = 100  # 1% of tickets are due
TICKETS_PER_CITIZEN = 10
CITIZEN_ID_BASE = 700_000_000  # Telegram user ids of the populated citizens
LOAD_CACHE_KIB = 512 * 1024
INDEX_REBUILD_ABOVE = 50_000
CATEGORIES = (("potholes", "roads"), ("garbage", "waste"))
TICKET_COLUMNS = (
    "id",
    "number",
    "citizen_id",
    "category_id",
    "agency_id",
    "status",
    "text",
    "address",
    "created_at",
    "updated_at",
    "due_at",
    "first_response_at",
    "resolved_at",
    "closed_at",
    "reminder_level",
    "remind_at",
    "next_alert_at",
    "overdue_level",
    "waiting_since",
    "next_update_at",
)
# Built from the constant column list above, no outside input.
INSERT_TICKET = "INSERT INTO tickets ({}) VALUES ({})".format(  # noqa: S608
    ", ".join(TICKET_COLUMNS), ", ".join("?" * len(TICKET_COLUMNS))
)
INSERT_CITIZEN = (
    "INSERT INTO citizens (id, platform, external_id, display_name, locale, created_at) "
    "VALUES (?, 'tg', ?, ?, 'ru', ?)"
)


def stored(when: datetime) -> str:
    """A datetime as SQLAlchemy keeps an aware UTC one in SQLite (naive here means UTC already)."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat(" ", "microseconds")


def is_due(ticket_id: int) -> bool:
    return ticket_id % DUE_EVERY == 0


def citizen_of(ticket_id: int) -> int:
    return (ticket_id - 1) // TICKETS_PER_CITIZEN + 1


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    connection.execute("PRAGMA synchronous=OFF")
    # The indexes of a million tickets do not fit SQLite's default 2 MB page cache.
    connection.execute(f"PRAGMA cache_size=-{LOAD_CACHE_KIB}")
    return connection


def ticket_count(path: Path) -> int:
    connection = connect(path)
    try:
        return int(connection.execute("SELECT count(*) FROM tickets").fetchone()[0])
    finally:
        connection.close()


def grow(path: Path, total: int, now: datetime, seed: int = 1) -> int:
    """Add tickets (and their citizens) to a migrated database until it holds `total`; returns how many
    were added. One transaction, one executemany per table."""
    connection = connect(path)
    try:
        have = int(connection.execute("SELECT coalesce(max(id), 0) FROM tickets").fetchone()[0])
        if have >= total:
            return 0
        citizens_have = int(connection.execute("SELECT coalesce(max(id), 0) FROM citizens").fetchone()[0])
        indexes = _secondary_indexes(connection) if total - have > INDEX_REBUILD_ABOVE else []
        connection.execute("BEGIN")
        # A bulk load goes faster into bare tables with the indexes built afterwards (one sort each)
        # than through index maintenance row by row; the indexes come back exactly as they were.
        for name, _ in indexes:
            connection.execute(f'DROP INDEX "{name}"')
        connection.executemany(INSERT_CITIZEN, _citizens(citizens_have + 1, citizen_of(total), now))
        connection.executemany(INSERT_TICKET, _tickets(have + 1, total, now, random.Random(seed + have)))
        for _, sql in indexes:
            connection.execute(sql)
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return total - have
    finally:
        connection.close()


def _secondary_indexes(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    """(name, CREATE statement) of the explicit indexes on the loaded tables; the automatic ones that
    back primary keys and unique constraints have no statement and stay."""
    rows = connection.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('tickets', 'citizens')"
    )
    return [(str(name), str(sql)) for name, sql in rows]


def postpone_due(path: Path, now: datetime) -> int:
    """Move every due ticket's next alert a month ahead: nothing is due any more."""
    connection = connect(path)
    try:
        ahead = stored(now + timedelta(days=30))
        cursor = connection.execute(
            "UPDATE tickets SET next_alert_at = ?, due_at = ? WHERE id % ? = 0", (ahead, ahead, DUE_EVERY)
        )
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return cursor.rowcount
    finally:
        connection.close()


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst, pages=65536)
    finally:
        dst.close()
        src.close()


def _citizens(first: int, last: int, now: datetime) -> Iterator[tuple[object, ...]]:
    created = stored(now - timedelta(days=400))
    for citizen_id in range(first, last + 1):
        yield (citizen_id, CITIZEN_ID_BASE + citizen_id, f"Citizen {citizen_id}", created)


def _tickets(first: int, last: int, now: datetime, rng: random.Random) -> Iterator[tuple[object, ...]]:
    # Times are whole minutes from `now`, formatted once each: formatting dominates the load otherwise.
    at = functools.lru_cache(maxsize=None)(
        lambda minutes: stored(now + timedelta(minutes=minutes)) if minutes is not None else None
    )
    day = 24 * 60
    for ticket_id in range(first, last + 1):
        category, agency = CATEGORIES[ticket_id % 2]
        text = f"Report {ticket_id}: the road is broken near house {ticket_id % 97}, please repair it soon"
        address = f"Lenina street, {ticket_id % 211}"
        kind = ticket_id % DUE_EVERY
        jitter = rng.randrange(day)
        first_response = resolved = closed = remind = alert = waiting = update = None
        reminder_level = overdue_level = 0
        if kind == 0:
            # Overdue: the deadline passed, the next alert's time has come.
            status = ("new", "in_progress")[ticket_id % 3 == 0]
            created = -5 * day - jitter
            due = -2 * day - jitter
            alert = due + rng.randrange(60)
            update = 2 * day + jitter
            reminder_level = 1
        elif kind < 20:
            created = -day - jitter
            due = 2 * day + jitter
            if kind < 5:
                status, resolved = "resolved", -day + jitter // 2
            elif kind < 8:
                status, waiting = "need_info", -2 * day + jitter
            else:
                status = ("new", "in_progress")[kind % 2]
                remind = due - 18 * 60
                alert = due
                update = day + jitter
        else:
            status = "closed"
            created = -(30 + ticket_id % 700) * day - jitter // 60 * 60
            due = created + 3 * day
            first_response = created + 120
            resolved = created + day
            closed = resolved + day
        yield (
            ticket_id,
            ticket_id,
            citizen_of(ticket_id),
            category,
            agency,
            status,
            text,
            address,
            at(created),
            at(closed if closed is not None else created),
            at(due),
            at(first_response),
            at(resolved),
            at(closed),
            reminder_level,
            at(remind),
            at(alert),
            overdue_level,
            at(waiting),
            at(update),
        )
