"""Write transactions on a SQLite file that run side by side share one commit (`Database._grouped`):
each in a savepoint, each returning only once the shared transaction is committed."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

import storage.db as db_module
from storage.db import Database
from storage.repository import Repository
from storage.schema import cursors
from tests.test_sqlite_driver import path_of

pytestmark = pytest.mark.sqlite_only("group commit of SQLite write transactions")

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
Body = Callable[[AsyncConnection], Awaitable[None]]


class Commits:
    """The writer's COMMITs, and the cursors committed since (read by a connection of the test's own)."""

    def __init__(self, db: Database, database_url: str) -> None:
        self.count = 0
        self.path = path_of(database_url)
        self.before: set[str] = set()
        self.before = self.committed()
        event.listen(db._writer.sync_engine, "commit", self._counted)

    def _counted(self, *_: Any) -> None:
        self.count += 1

    def committed(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return {name for (name,) in conn.execute("SELECT name FROM cursors")} - self.before


def saving(*names: str, then: Body | None = None) -> Body:
    async def body(conn: AsyncConnection) -> None:
        for name in names:
            await Repository(conn).save_cursor(name, "1", NOW)
        if then is not None:
            await then(conn)

    return body


def duplicate_of(name: str) -> Body:
    async def body(conn: AsyncConnection) -> None:
        await conn.execute(cursors.insert().values(name=name, value="again", updated_at=NOW))

    return body


duplicate = duplicate_of("a")


async def write(db: Database, body: Body, seen: dict[str, set[str]], commits: Commits, name: str) -> None:
    """`body` in a write transaction; what is committed as it returns goes into `seen`."""
    async with db.transaction() as conn:
        await body(conn)
    seen[name] = commits.committed()


async def test_writes_side_by_side_share_one_commit_and_each_returns_once_committed(
    database_url: str, db: Database
) -> None:
    commits = Commits(db, database_url)
    seen: dict[str, set[str]] = {}
    names = [f"c{i}" for i in range(10)]
    await asyncio.gather(*(write(db, saving(name), seen, commits, name) for name in names))
    assert commits.count == 1
    assert all(name in seen[name] for name in names), "each returned with its write committed"


async def test_a_write_alone_commits_at_once(database_url: str, db: Database) -> None:
    commits = Commits(db, database_url)
    seen: dict[str, set[str]] = {}
    for name in ("a", "b", "c"):
        await asyncio.wait_for(write(db, saving(name), seen, commits, name), 5)
    assert commits.count == 3
    assert seen["a"] == {"a"}


async def test_at_most_the_limit_share_a_commit(
    database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "GROUP_LIMIT", 3)
    commits = Commits(db, database_url)
    seen: dict[str, set[str]] = {}
    await asyncio.gather(*(write(db, saving(f"c{i}"), seen, commits, f"c{i}") for i in range(7)))
    assert commits.count == 3  # 3 + 3 + 1
    assert len(commits.committed()) == 7


async def test_a_failing_write_is_undone_alone_and_the_others_commit_before_its_error_goes_on(
    database_url: str, db: Database
) -> None:
    commits = Commits(db, database_url)
    async with db.transaction() as conn:
        await Repository(conn).save_cursor("a", "1", NOW)
    checkouts: list[int] = []
    event.listen(db._writer.sync_engine.pool, "checkout", lambda *_: checkouts.append(1))
    seen: dict[str, set[str]] = {}
    seen_by_failed: set[str] = set()

    async def failing() -> None:
        try:
            async with db.transaction() as conn:
                await saving("d", then=duplicate)(conn)
        except IntegrityError:
            # What a retry would read: the writes before it in the group are committed.
            seen_by_failed.update(commits.committed())
            raise

    results = await asyncio.gather(
        write(db, saving("b"), seen, commits, "b"),
        failing(),
        write(db, saving("e"), seen, commits, "e"),
        return_exceptions=True,
    )
    assert isinstance(results[1], IntegrityError)
    assert results[0] is None and results[2] is None
    assert seen_by_failed == {"a", "b"}
    assert commits.committed() == {"a", "b", "e"}, "the failed write's own row is undone"
    assert checkouts == [], "the writer keeps its connection"


async def test_the_first_write_of_a_group_failing_leaves_the_next_to_commit(
    database_url: str, db: Database
) -> None:
    commits = Commits(db, database_url)
    seen: dict[str, set[str]] = {}
    results = await asyncio.gather(
        write(db, saving("d", then=duplicate_of("d")), seen, commits, "d"),
        write(db, saving("b"), seen, commits, "b"),
        write(db, saving("e"), seen, commits, "e"),
        return_exceptions=True,
    )
    assert isinstance(results[0], IntegrityError)
    assert results[1:] == [None, None]
    assert commits.committed() == {"b", "e"}
    assert commits.count == 1, "the two after it share a commit"


async def test_a_write_cancelled_midway_is_undone_alone(database_url: str, db: Database) -> None:
    commits = Commits(db, database_url)
    inside = asyncio.Event()

    async def stuck(conn: AsyncConnection) -> None:
        inside.set()
        await asyncio.Event().wait()

    seen: dict[str, set[str]] = {}
    first = asyncio.create_task(write(db, saving("a"), seen, commits, "a"))
    cancelled = asyncio.create_task(write(db, saving("x", then=stuck), seen, commits, "x"))
    last = asyncio.create_task(write(db, saving("b"), seen, commits, "b"))
    await asyncio.wait_for(inside.wait(), 5)
    cancelled.cancel()
    await asyncio.wait_for(asyncio.gather(first, last), 5)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert commits.committed() == {"a", "b"}


async def test_an_error_that_ends_the_shared_transaction_fails_every_write_in_it(
    database_url: str, db: Database
) -> None:
    async with db.transaction() as conn:  # the writer's connection, opened
        await Repository(conn).save_cursor("before", "1", NOW)
    commits = Commits(db, database_url)
    checkouts: list[int] = []
    event.listen(db._writer.sync_engine.pool, "checkout", lambda *_: checkouts.append(1))

    async def transaction_gone(conn: AsyncConnection) -> None:
        # As SQLite itself does on a full disk or an I/O error: the whole transaction is rolled back.
        raw = await conn.get_raw_connection()
        raw.driver_connection._conn.execute("ROLLBACK")  # type: ignore[union-attr]
        raise RuntimeError("disk full")

    seen: dict[str, set[str]] = {}
    results = await asyncio.gather(
        write(db, saving("a"), seen, commits, "a"),
        write(db, saving("b", then=transaction_gone), seen, commits, "b"),
        return_exceptions=True,
    )
    assert isinstance(results[0], OperationalError), "the write before it fails too, as SQLAlchemy reports"
    assert isinstance(results[1], RuntimeError), "the failing write raises its own error"
    assert commits.committed() == set()
    await write(db, saving("c"), seen, commits, "c")
    assert commits.committed() == {"c"}
    assert len(checkouts) == 1, "the failed group let its connection go; the next took one anew"


async def test_a_commit_that_fails_fails_every_write_of_the_group(database_url: str, db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(sa.text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        await conn.execute(
            sa.text(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER"
                " REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    commits = Commits(db, database_url)

    async def orphan(conn: AsyncConnection) -> None:
        # Checked only at COMMIT.
        await conn.execute(sa.text("INSERT INTO child (parent_id) VALUES (404)"))

    seen: dict[str, set[str]] = {}
    results = await asyncio.gather(
        write(db, saving("a"), seen, commits, "a"),
        write(db, orphan, seen, commits, "orphan"),
        return_exceptions=True,
    )
    assert [type(result) for result in results] == [IntegrityError, IntegrityError]
    assert commits.committed() == set()
    await write(db, saving("b"), seen, commits, "b")
    assert commits.committed() == {"b"}


async def test_closing_commits_the_open_group(database_url: str) -> None:
    db = Database(database_url)
    commits = Commits(db, database_url)
    seen: dict[str, set[str]] = {}
    inside = asyncio.Event()

    async def signal(conn: AsyncConnection) -> None:
        inside.set()

    task = asyncio.create_task(write(db, saving("a", then=signal), seen, commits, "a"))
    await asyncio.wait_for(inside.wait(), 5)
    await db.close()  # waits for the turn before the group's committer
    await asyncio.wait_for(task, 5)
    assert seen["a"] == {"a"}
