"""SQLite statements run on the event loop; only a wait for another process's write lock, and the
checkpoint, go to the connection's thread (storage/sqlite_driver.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import engine as async_engine

from bot.domain import Platform
from storage.db import Database
from storage.repository import Repository
from storage.schema import cursors

pytestmark = pytest.mark.sqlite_only("the SQLite driver")

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


class Trips(list[str]):
    """What went to a connection's thread: the statement, or the name of the function sent."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    async def wait_for(self, statement: str) -> None:
        async with asyncio.timeout(10):
            while statement not in self:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trips]:
    sent = Trips()
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(" ".join(a for a in args if isinstance(a, str)) or getattr(fn, "__name__", "?"))
        sent.changed.set()
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    yield sent


def path_of(url: str) -> str:
    database = make_url(url).database
    assert database is not None
    return database


async def open_connections(db: Database, trips: Trips) -> None:
    """Open the writer's connection and a reader's, and forget their trips: opening one does go to its
    thread (connect, SQLite functions)."""
    async with db.transaction() as conn:
        await Repository(conn).save_cursor("poll", "42", NOW)
    async with db.read() as conn:
        await Repository(conn).cursor("poll")
    trips.clear()


async def test_reads_and_writes_make_no_trip_to_the_connection_thread(db: Database, trips: Trips) -> None:
    await open_connections(db, trips)

    async with db.transaction() as conn:
        repo = Repository(conn)
        assert await repo.mark_processed(Platform.telegram, "u1", NOW)
        await repo.save_cursor("poll", "42", NOW)
    async with db.read() as conn:
        repo = Repository(conn)
        assert await repo.processed_among(Platform.telegram, ["u1", "u2"]) == {"u1"}
        assert await repo.cursor("poll") == "42"

    assert trips == []


async def test_a_failing_statement_raises_as_sqlalchemy_would_and_rolls_back(db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with db.transaction() as conn:
            await conn.execute(cursors.insert().values(name="twice", value="1", updated_at=NOW))
            await conn.execute(cursors.insert().values(name="twice", value="2", updated_at=NOW))
    with pytest.raises(OperationalError):
        async with db.read() as conn:
            await conn.exec_driver_sql("SELECT * FROM no_such_table")
    async with db.read() as conn:
        assert await Repository(conn).cursor("twice") is None


async def test_a_writer_waits_for_another_process_on_its_thread_while_the_loop_goes_on(
    database_url: str, db: Database, trips: Trips
) -> None:
    async with db.read() as conn:  # the bot is up: the file is in WAL mode
        assert await Repository(conn).cursor("after") is None
    other = sqlite3.connect(path_of(database_url), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:

        async def write() -> None:
            async with db.transaction() as conn:
                await Repository(conn).save_cursor("after", "1", NOW)

        writer = asyncio.create_task(write())
        # The writer asked for the lock on its connection's thread and waits there ...
        await trips.wait_for("BEGIN IMMEDIATE")
        # ... while the loop goes on: reads still answer from their snapshot.
        async with db.read() as conn:
            assert await Repository(conn).cursor("after") is None
        assert not writer.done()
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(writer, 10)
    async with db.read() as conn:
        assert await Repository(conn).cursor("after") == "1"


async def test_a_writer_that_cannot_have_the_lock_in_time_fails_as_sqlalchemy_reports_it(
    database_url: str, db: Database
) -> None:
    async with db.transaction() as conn:  # the writer's one connection keeps its pragmas
        await conn.exec_driver_sql("PRAGMA busy_timeout=50")
    other = sqlite3.connect(path_of(database_url), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            async with db.transaction() as conn:
                await Repository(conn).save_cursor("never", "1", NOW)
    finally:
        other.execute("COMMIT")
        other.close()
    async with db.transaction() as conn:  # and the connection is fit for the next writer
        await Repository(conn).save_cursor("after", "1", NOW)
    async with db.read() as conn:
        assert [await Repository(conn).cursor(name) for name in ("never", "after")] == [None, "1"]


async def test_the_writer_keeps_its_connection_a_failed_transaction_too(database_url: str) -> None:
    db = Database(database_url)
    checkouts: list[int] = []
    event.listen(db._writer.sync_engine.pool, "checkout", lambda *_: checkouts.append(1))
    for name in ("a", "b", "c"):
        async with db.transaction() as conn:
            await Repository(conn).save_cursor(name, "1", NOW)
    assert len(checkouts) == 1, "three transactions, one connection taken from the pool"

    # A failed transaction is undone alone (its savepoint, tests/test_write_groups.py); a connection
    # is let go only when SQLite's transaction itself fails.
    with pytest.raises(IntegrityError):
        async with db.transaction() as conn:
            await Repository(conn).save_cursor("d", "1", NOW)
            await conn.execute(cursors.insert().values(name="a", value="again", updated_at=NOW))
    async with db.transaction() as conn:
        await Repository(conn).save_cursor("e", "1", NOW)
    assert len(checkouts) == 1
    async with db.read() as conn:
        assert [await Repository(conn).cursor(n) for n in "abcde"] == ["1", "1", "1", None, "1"]
    await db.close()
    assert db._writer.sync_engine.pool.checkedout() == 0, "closing the database gives it back"


async def test_readers_keep_their_connections_and_each_read_is_a_snapshot_of_its_own(
    database_url: str,
) -> None:
    db = Database(database_url)
    pool = db.engine.sync_engine.pool
    checkouts: list[int] = []
    event.listen(pool, "checkout", lambda *_: checkouts.append(1))
    for _ in range(3):
        async with db.read() as conn:
            assert await Repository(conn).cursor("a") is None
    assert len(checkouts) == 1, "three reads, one connection taken from the pool"
    async with db.read() as one, db.read() as two:
        assert await Repository(one).cursor("a") is None and await Repository(two).cursor("a") is None
    assert len(checkouts) == 2, "two reads at once, two connections"

    async with db.transaction() as conn:
        await Repository(conn).save_cursor("a", "1", NOW)
    for _ in range(2):  # on each kept connection: the snapshot of an earlier read ended with it
        async with db.read() as one, db.read() as two:
            assert [await Repository(c).cursor("a") for c in (one, two)] == ["1", "1"]
    assert len(checkouts) == 2

    with pytest.raises(OperationalError):
        async with db.read() as conn:
            await conn.execute(sa.text("SELECT * FROM nowhere"))
    assert pool.checkedout() == 1, "a read that failed closed its connection"
    await db.close()
    assert pool.checkedout() == 0, "closing the database gives the kept ones back"


async def test_the_repository_runs_statements_on_the_loop_without_a_greenlet(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's asyncio API hops into a greenlet for every statement; ours never wait, and go through
    the synchronous API instead. Reads sent to the connection's thread still await it."""
    spawned: list[object] = []
    spawn = async_engine.greenlet_spawn

    def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        spawned.append(fn)
        return spawn(fn, *args, **kwargs)

    monkeypatch.setattr(async_engine, "greenlet_spawn", counted)
    async with db.transaction() as conn:
        spawned.clear()
        repo = Repository(conn)
        await repo.save_cursor("a", "1", NOW)
        assert await repo.cursor("a") == "1"
        assert spawned == []
    async with db.read() as conn:
        spawned.clear()
        assert await Repository(conn).cursor("a") == "1"
        assert spawned == []
    async with db.read(offload=True) as conn:
        spawned.clear()
        assert await Repository(conn).cursor("a") == "1"
        assert spawned != []


async def test_commits_leave_the_checkpoint_to_the_checkpointer(database_url: str, db: Database) -> None:
    def in_database_file() -> int:
        """Rows the database file itself holds, the write-ahead log left out."""
        probe = sqlite3.connect(f"file:{path_of(database_url)}?immutable=1", uri=True)
        try:
            return int(probe.execute("SELECT count(*) FROM cursors WHERE name LIKE 'c%'").fetchone()[0])
        finally:
            probe.close()

    async with db.read() as conn:
        assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    for batch in range(5):  # about 1,500 pages: past SQLite's own checkpoint threshold of 1,000
        async with db.transaction() as conn:
            await conn.execute(
                cursors.insert(),
                [{"name": f"c{batch}-{i}", "value": "x" * 2000, "updated_at": NOW} for i in range(1000)],
            )
    assert in_database_file() == 0

    assert db.checkpointer is not None
    await db.checkpointer.checkpoint()
    assert in_database_file() == 5000


async def test_the_checkpointer_runs_after_writes_and_stops_with_the_database(database_url: str) -> None:
    db = Database(database_url)
    assert db.checkpointer is not None
    db.checkpointer.every = 0.01
    ran = asyncio.Event()
    original = db.checkpointer.checkpoint

    async def checkpoint() -> None:
        await original()
        ran.set()

    db.checkpointer.checkpoint = checkpoint  # type: ignore[method-assign]
    async with db.transaction() as conn:
        await Repository(conn).save_cursor("a", "b", NOW)
    await asyncio.wait_for(ran.wait(), 10)
    await db.close()


async def test_reads_that_scan_much_run_on_the_connection_thread(db: Database, trips: Trips) -> None:
    await open_connections(db, trips)

    async with db.read(offload=True) as conn:
        counts = await Repository(conn).ticket_counts()
        assert await Repository(conn).cursor("poll") == "42"
    assert counts == {}
    assert any("tickets" in trip for trip in trips) and any("cursors" in trip for trip in trips)

    trips.clear()
    async with db.read() as conn:  # the same pooled connection, back on the loop
        assert await Repository(conn).cursor("poll") == "42"
    assert trips == []
