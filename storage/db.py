"""The database handle: engine, SQLite pragmas, write transactions and migrations.

Two backends run the same code and the same migrations: SQLite (one file, the default) and PostgreSQL
(`postgresql+asyncpg://...`). Either way write transactions take turns, so every write sees everything
committed before it and the code needs no retries: SQLite has one writer by design, and on PostgreSQL
each write transaction first takes one transaction-scoped advisory lock, held until it commits. On a
SQLite file, write transactions that run side by side also share one commit (see `Database._grouped`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage.sqlite_driver import Checkpointer, LoopConnection, LoopDBAPI

MIGRATIONS = Path(__file__).parent / "migrations"
# The PostgreSQL advisory lock that write transactions (and migrations) take in turn; any constant unique
# to this application will do ("CivicDsk" in ASCII).
WRITE_LOCK_KEY = 0x436976696344736B
# The execution option that marks a connection opened by `Database.transaction`.
WRITER = "civicdesk_writer"
# At most this many write transactions share a commit.
GROUP_LIMIT = 64


class Database:
    """One engine per process; `transaction()` is the only way to write."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        in_memory = self.is_sqlite and parsed.database in (None, "", ":memory:")
        if self.is_sqlite and not in_memory:
            assert parsed.database is not None
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            kwargs["module"] = LoopDBAPI()
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # Writers take turns: within the process here, so waiting tasks hold no connection (and, on SQLite,
        # never see "database is locked"); between processes (a second instance, `bot migrate`) through
        # SQLite's busy timeout or PostgreSQL's advisory lock. The writer in turn has a connection of its
        # own: it never queues for one behind readers while the others queue behind it.
        self._write_lock = asyncio.Lock()
        # (An in-memory database lives in its one connection.)
        self._writer = (
            self.engine if in_memory else create_async_engine(url, pool_size=1, max_overflow=0, **kwargs)
        )
        # On a SQLite file the writer's connection stays open between transactions (see `_open_group`), and
        # so do the readers' (see `_reading`).
        self._keeps_connections = self.is_sqlite and not in_memory
        self._kept: AsyncConnection | None = None
        self._readers: list[AsyncConnection] = []
        # One fewer than the pool holds, so the others (the checkpointer) still find one waiting there.
        self._readers_kept = 0
        if self._keeps_connections:
            self._readers_kept = max(1, self.engine.pool.size() - 1)  # type: ignore[attr-defined]
        self._closing = False
        # The write transactions sharing one commit (see `_grouped`); whether its commit is on its way;
        # whether the writer's connection is to be let go (a group failed on it).
        self._group: _Group | None = None
        self._commit_due = False
        self._stale = False
        # Tasks waiting for the writer's turn.
        self._waiting = 0
        self.checkpointer: Checkpointer | None = None
        if self.is_sqlite:
            for engine in {self.engine, self._writer}:
                _configure_sqlite(engine)
            self.checkpointer = Checkpointer(self.engine)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        if self._keeps_connections:
            async with self._grouped() as conn:
                yield conn
            return
        async with self._write_lock, self._writing() as conn:
            if self.is_sqlite:
                async with _sqlite_transaction(conn):
                    yield conn
            else:
                async with conn.begin():
                    # Taken first, so each statement after it (READ COMMITTED) sees every earlier
                    # write: the same one-writer-at-a-time world as SQLite's BEGIN IMMEDIATE.
                    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(WRITE_LOCK_KEY)))
                    yield conn
        if self.checkpointer is not None:
            self.checkpointer.wrote()

    @asynccontextmanager
    async def _grouped(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a SQLite file, committed together with those that run just before and
        after it (group commit). They run in turn as ever, in one SQLite transaction they share, each
        but the first in a savepoint, and each returns once that transaction is committed. The commit
        waits until the tasks ready to run have had their turn, and what of them writes joins it: a
        batch of updates handled side by side pays for BEGIN, COMMIT and the log pages they all touch
        once.

        A transaction that fails is undone alone (its savepoint) and the others' work is committed
        before its error goes on, so a retry sees everything before it. An error that ends SQLite's whole
        transaction (a full disk, say) fails them all, as it would each of them alone."""
        self._waiting += 1
        try:
            await self._write_lock.acquire()
        except BaseException:
            self._commit_later()  # it was to commit the open group when done
            raise
        finally:
            self._waiting -= 1
        try:
            group = self._group or await self._open_group()
            group.size += 1
            # The first needs none: while it runs, the transaction holds nothing else.
            savepoint = f"w{group.size}" if group.size > 1 else None
            if savepoint and not self._on_driver(group, f"SAVEPOINT {savepoint}"):
                await group.committed  # raises the group's error
            try:
                yield group.conn
            except BaseException:
                if savepoint is None:
                    self._discard(group)
                elif self._on_driver(group, f"ROLLBACK TO {savepoint}"):
                    self._end(group)
                raise
            if savepoint is None or self._on_driver(group, f"RELEASE {savepoint}"):
                if group.size >= GROUP_LIMIT:
                    self._end(group)
                else:
                    self._commit_later()
        finally:
            self._write_lock.release()
        await asyncio.shield(group.committed)

    async def _open_group(self) -> _Group:
        """BEGIN IMMEDIATE on the writer's connection. On a SQLite file it is kept from one transaction to
        the next (taking it from the pool and giving it back cost twice an empty transaction's BEGIN
        and COMMIT); marked as the writer's (see `_writing`). A group that failed let it go, so the next
        starts on a connection as fresh as the pool gives."""
        if self._stale:
            self._stale = False
            await self._let_go()
        if self._kept is None:
            conn = await self._writer.connect().start()
            await conn.execution_options(**{WRITER: True})
            self._kept = conn
        try:
            await self._kept.begin()
        except BaseException:
            await self._let_go()
            raise
        self._group = _Group(self._kept)
        return self._group

    def _commit_later(self) -> None:
        """Commit the open group once the tasks ready to run now have had their turn."""
        if self._group is not None and not self._commit_due:
            self._commit_due = True
            asyncio.get_running_loop().call_soon(self._commit_if_idle)

    def _commit_if_idle(self) -> None:
        self._commit_due = False
        # Whoever holds the turn or waits for it commits the group when done, or asks for this again.
        if self._group is not None and not self._write_lock.locked() and not self._waiting:
            self._end(self._group)

    def _on_driver(self, group: _Group, statement: str) -> bool:
        """A savepoint statement, straight to the driver as BEGIN is; False if it failed, which fails
        the group (it cannot fail unless SQLite's transaction is gone)."""
        try:
            group.driver.run_now(statement)
        except sqlite3.Error as error:
            self._fail(group, sa.exc.DBAPIError.instance(statement, (), error, sqlite3.Error))
            return False
        return True

    def _end(self, group: _Group) -> None:
        """Commit the group; each member returns (or raises what the commit raised)."""
        self._group = None
        try:
            group.sync.commit()
        except Exception as error:
            self._fail(group, error)
            return
        group.committed.set_result(None)
        if self.checkpointer is not None:
            self.checkpointer.wrote()

    def _fail(self, group: _Group, error: BaseException) -> None:
        """Roll the group back; each member raises `error`. The connection is let go before the next."""
        self._discard(group)
        self._stale = True
        group.committed.set_exception(error)
        group.committed.exception()  # each member raises it; none of them need be waiting

    def _discard(self, group: _Group) -> None:
        """Roll back a group (one that holds only the transaction that failed: no one waits on it)."""
        self._group = None
        try:
            group.sync.rollback()
        except Exception:
            self._stale = True

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """The connection for one write transaction (on PostgreSQL and in-memory SQLite), marked as the
        writer's: only a writer asks SQLite for the write lock up front (see _configure_sqlite); reads
        begin deferred, so they never queue behind a writer for a snapshot."""
        async with self._connect(self._writer) as conn:
            await conn.execution_options(**{WRITER: True})
            yield conn

    async def _let_go(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            await kept.close()

    @asynccontextmanager
    async def read(self, *, offload: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot. `offload`: reads that scan much, which on SQLite then run on the
        connection's thread rather than on the event loop (see storage/sqlite_driver.py)."""
        async with self._reading() as conn:
            if self.is_postgres:
                # One snapshot for all the reads, as SQLite gives; a write here fails loudly.
                await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            if not (offload and self.is_sqlite):
                yield conn
                return
            adapted = (await conn.get_raw_connection()).dbapi_connection
            adapted.offload = True  # type: ignore[union-attr]
            try:
                yield conn
            finally:
                adapted.offload = False  # type: ignore[union-attr]

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one read. On a SQLite file, connections are kept between reads (one fewer
        than the pool holds), as the writer's is: taking one from the pool and giving it back cost more than
        the read's BEGIN and ROLLBACK. The snapshot ends with the read (the ROLLBACK), so a kept
        connection holds back no checkpoint; one that a read left in error is closed."""
        if not self._keeps_connections:
            async with self._connect(self.engine) as conn:
                yield conn
            return
        conn = self._readers.pop() if self._readers else await self.engine.connect().start()
        try:
            yield conn
            # On the loop, as the read's statements ran (storage/sqlite_driver.py).
            assert conn.sync_connection is not None
            conn.sync_connection.rollback()
        except BaseException:
            await conn.close()
            raise
        if self._closing or len(self._readers) >= self._readers_kept:
            await conn.close()
        else:
            self._readers.append(conn)

    @asynccontextmanager
    async def _connect(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        if not self.is_sqlite:
            async with engine.connect() as conn:
                yield conn
            return
        # SQLAlchemy closes a connection in a task of its own, so a cancellation cannot cut the close
        # short while it waits on the server. On SQLite the close runs on the loop without waiting, and
        # a task per connection would only cost a turn of the loop.
        conn = await engine.connect().start()
        try:
            yield conn
        finally:
            await conn.close()

    async def close(self) -> None:
        self._closing = True
        async with self._write_lock:
            if self._group is not None:
                self._end(self._group)
            await self._let_go()
        while self._readers:
            await self._readers.pop().close()
        if self.checkpointer is not None:
            await self.checkpointer.close()
        if self._writer is not self.engine:
            await self._writer.dispose()
        await self.engine.dispose()


@asynccontextmanager
async def _sqlite_transaction(conn: AsyncConnection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE through SQLAlchemy's asyncio API, as it may have to wait on the connection's
    thread for another process's write lock; COMMIT or ROLLBACK on the loop through the synchronous
    API, as the statements ran (storage/sqlite_driver.py)."""
    await conn.begin()
    sync = conn.sync_connection
    assert sync is not None
    try:
        yield
    except BaseException:
        sync.rollback()
        raise
    sync.commit()


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below be the only transaction control; pysqlite's implicit one
        # would begin DEFERRED and fail to upgrade to a write lock under contention.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # Switching to WAL needs a lock another process's writer may hold; once the file is in WAL mode
        # (it stays so) a new connection only asks.
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock at BEGIN, so it never fails to upgrade a read lock later; a read
        # takes a WAL snapshot and no lock at all (an IMMEDIATE read would wait on every writer).
        statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITER) else "BEGIN"
        # Straight to the driver: through SQLAlchemy the statement costs ten times the BEGIN itself.
        dbapi = conn.dialect.loaded_dbapi
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        except dbapi.Error as error:
            # As SQLAlchemy reports a failed statement (a lock not had within the busy timeout, say).
            raise sa.exc.DBAPIError.instance(statement, (), error, dbapi.Error) from error
        finally:
            cursor.close()


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`; safe to run on every start."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)


class _Group:
    """Write transactions sharing one SQLite transaction, each in a savepoint of its own."""

    __slots__ = ("committed", "conn", "driver", "size", "sync")

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        assert conn.sync_connection is not None
        # SQLAlchemy's synchronous side of it, for COMMIT and ROLLBACK on the loop (as the statements run).
        self.sync: Connection = conn.sync_connection
        self.driver: LoopConnection = self.sync.connection.dbapi_connection  # type: ignore[assignment]
        self.size = 0
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
