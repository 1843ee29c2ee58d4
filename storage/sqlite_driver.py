"""SQLite statements run where they are asked for, on the event loop, unless they may have to wait.

SQLAlchemy's aiosqlite adapter sends every step of a statement (open a cursor, execute, fetch the
rows, close the cursor) to the thread that owns the sqlite3 connection and back: each trip wakes that
thread, hands the GIL over and wakes the loop through its self-pipe, about 50 µs of CPU, while a point
query on a local file takes 5. A citizen's message made about ninety such trips. Yet a statement on a
WAL database only waits for one thing, the write lock, and for nothing once the write lock is held.

So here:
- a statement runs on the loop, in one call that brings back everything SQLAlchemy asks of it (rows,
  description, row count, last row id);
- `BEGIN IMMEDIATE` is tried on the loop without waiting; only if another process holds the write lock
  does it go to the connection's thread to wait there, under the busy timeout;
- COMMIT and ROLLBACK run on the loop: in WAL mode with synchronous=NORMAL a commit appends to the log
  and does not sync;
- the one slow part of committing, the checkpoint that copies the log into the database file and syncs
  it, is switched off on these connections (`wal_autocheckpoint=0`) and done off the loop by
  `Checkpointer`, on the connection's thread;
- reads known to scan much go to the thread too (`Database.read(offload=True)`);
- as nothing else waits, the repository runs statements through SQLAlchemy's synchronous API
  (`OnTheLoop`): the greenlet its asyncio API hops into for each statement, so that a driver may
  await, costs as much as the rest of a point query.

Server-side cursors stay SQLAlchemy's own. The aiosqlite connection is used through `_execute` and
`_conn`, as SQLAlchemy's own adapter does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import CursorResult, ScalarResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_, in_greenlet

log = logging.getLogger(__name__)

# What a finished statement leaves: description, rows (None without a description), rowcount, lastrowid.
Outcome = tuple[Any, list[Any] | None, int, int | None]
Run = Callable[[sqlite3.Connection, str, Any], Outcome]
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"


def _run(conn: sqlite3.Connection, operation: str, parameters: Any) -> Outcome:
    """The statement, its rows and its counts, in one go."""
    cursor = conn.execute(operation, parameters)
    try:
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _run_many(conn: sqlite3.Connection, operation: str, seq_of_parameters: Iterable[Any]) -> Outcome:
    cursor = conn.executemany(operation, seq_of_parameters)
    try:
        return cursor.description, None, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _begin_at_once(conn: sqlite3.Connection, operation: str) -> Outcome | None:
    """`BEGIN IMMEDIATE` if the write lock is free now; None if another process holds it."""
    (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout=0")
    try:
        return _run(conn, operation, ())
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode != sqlite3.SQLITE_BUSY:
            raise
        return None
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(timeout)}")


async def _on_thread(connection: aiosqlite.Connection, run: Run, operation: str, parameters: Any) -> Outcome:
    """On the connection's own thread, where it may wait (SQLite's busy timeout) without stopping the loop."""
    outcome: Outcome = await connection._execute(run, connection._conn, operation, parameters)  # type: ignore[no-untyped-call]
    return outcome


class LoopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor: each statement opens, runs and closes an sqlite3 cursor in one call."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        # Nothing stays open in SQLite; the rows and the description stay here until read.
        return

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        parameters = () if parameters is None else parameters
        try:
            if operation.startswith(BEGIN_IMMEDIATE):
                outcome = await_(self._waiting(_run, operation, parameters))
            elif self._adapt_connection.offload:  # type: ignore[attr-defined]
                outcome = await_(self._on_thread(_run, operation, parameters))
            else:
                outcome = self._here(_run, operation, parameters)
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._keep(outcome)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        try:
            outcome = self._here(_run_many, operation, seq_of_parameters)
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._keep(outcome)

    def _here(self, run: Run, operation: str, parameters: Any) -> Outcome:
        """The statement on the loop. Through SQLAlchemy's asyncio API it runs in SQLAlchemy's greenlet,
        which insists that a statement awaits something: a coroutine that never suspends is run to its
        end by that await, without a turn of the loop. Through the synchronous API (`on_the_loop`) it
        runs as it is, no greenlet around it."""
        if in_greenlet():
            return await_(self._at_once(run, operation, parameters))
        if self._adapt_connection._execute_mutex.locked():
            # Only a statement on the connection's thread holds it, and one task at a time uses a
            # connection, awaiting each statement before the next.
            raise RuntimeError("an SQLite connection used by two tasks at once")
        return run(self._connection._conn, operation, parameters)

    async def _at_once(self, run: Run, operation: str, parameters: Any) -> Outcome:
        async with self._adapt_connection._execute_mutex:
            return run(self._connection._conn, operation, parameters)

    async def _on_thread(self, run: Run, operation: str, parameters: Any) -> Outcome:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            return await _on_thread(connection, run, operation, parameters)

    async def _waiting(self, run: Run, operation: str, parameters: Any) -> Outcome:
        """`BEGIN IMMEDIATE`: at once if the write lock is free, else on the connection's thread."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            outcome = _begin_at_once(connection._conn, operation)
            if outcome is not None:
                return outcome
            return await _on_thread(connection, run, operation, parameters)

    def _keep(self, outcome: Outcome) -> None:
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows) if rows else collections.deque()


class LoopConnection(AsyncAdapt_aiosqlite_connection):
    """`offload`: while set, statements run on the connection's thread: for the few reads that scan
    much (a daily digest, the metrics' counts over every ticket), so the loop goes on meanwhile and a
    timeout around them can fire."""

    __slots__ = ("offload",)
    _cursor_cls = LoopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.offload = False

    def commit(self) -> None:
        self._on_loop("commit")

    def rollback(self) -> None:
        self._on_loop("rollback")

    def run_now(self, statement: str) -> None:
        """A statement without rows (SAVEPOINT and the like), on the loop; sqlite3's error as it is."""
        self._connection._conn.execute(statement).close()

    def _on_loop(self, name: str) -> None:
        if self._connection._connection:
            try:
                getattr(self._connection._conn, name)()
            except Exception as error:
                self._handle_exception(error)


class LoopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Given to `create_async_engine(module=...)` in place of the aiosqlite dialect's own; the engine's
    `connect_args` must allow the sqlite3 connection to be used off its thread (`check_same_thread`)."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> LoopConnection:
        connection = aiosqlite.connect(*arg, **kw)
        # As SQLAlchemy does: the connection's thread must not keep the process alive.
        connection._thread.daemon = True
        try:
            opened = await_(connection)
        except BaseException:
            # A failed connect stops the connection's thread without waiting for it; waited for here, it
            # does not outlive the event loop it reports to.
            await_(asyncio.to_thread(connection._thread.join, 5.0))
            raise
        adapted = LoopConnection(self, opened)
        # Commits never checkpoint on the loop; the Checkpointer does it on a thread.
        _run(adapted._connection._conn, "PRAGMA wal_autocheckpoint=0", ())
        return adapted


# What a statement gives back, whatever its columns.
AnyResult = CursorResult[*tuple[Any, ...]]


class Statements:
    """Where the repository runs its statements: SQLAlchemy's asyncio API, whose every call hops into a
    greenlet in which the driver may await (PostgreSQL's asyncpg does)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> AnyResult:
        return await self.conn.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        return await self.conn.scalar(statement, parameters)

    async def scalars(self, statement: Executable, parameters: Any = None) -> ScalarResult[Any]:
        return await self.conn.scalars(statement, parameters)


class OnTheLoop(Statements):
    """Statements on one of our SQLite connections go through SQLAlchemy's synchronous API: they run
    on the loop and never wait (`LoopCursor`), so the greenlet the asyncio API hops into for each,
    half the cost of a point query, would be there for nothing. While the connection's reads are sent
    to its thread (`offload`), they are awaited through the asyncio API as before."""

    def __init__(self, conn: AsyncConnection) -> None:
        super().__init__(conn)
        sync = conn.sync_connection
        assert sync is not None, "a started connection"
        self.sync = sync
        self.driver: LoopConnection = sync.connection.dbapi_connection  # type: ignore[assignment]

    async def execute(self, statement: Executable, parameters: Any = None) -> AnyResult:
        if self.driver.offload:
            return await super().execute(statement, parameters)
        return self.sync.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Any = None) -> Any:
        if self.driver.offload:
            return await super().scalar(statement, parameters)
        return self.sync.scalar(statement, parameters)

    async def scalars(self, statement: Executable, parameters: Any = None) -> ScalarResult[Any]:
        if self.driver.offload:
            return await super().scalars(statement, parameters)
        return self.sync.scalars(statement, parameters)


def statements(conn: AsyncConnection) -> Statements:
    """The way to run statements on `conn`: on the loop if its driver is ours."""
    return (
        OnTheLoop(conn) if isinstance(conn.sync_engine.dialect.loaded_dbapi, LoopDBAPI) else Statements(conn)
    )


class Checkpointer:
    """Copies the write-ahead log into the database file now and then, off the event loop.

    A PASSIVE checkpoint neither waits for nor blocks readers and writers; what it cannot copy yet (pages
    a reader still needs) the next one does. Run only while something was written since the last.
    """

    def __init__(self, engine: AsyncEngine, every: float = 1.0) -> None:
        self.engine = engine
        self.every = every
        self.dirty = False
        self._task: asyncio.Task[None] | None = None

    def wrote(self) -> None:
        self.dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.dirty:
            await asyncio.sleep(self.every)
            self.dirty = False
            try:
                await self.checkpoint()
            except Exception as error:
                # Harmless to skip: the log just grows until the next one succeeds.
                log.warning("WAL checkpoint failed: %s", error)

    async def checkpoint(self) -> None:
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: aiosqlite.Connection = raw.driver_connection  # type: ignore[assignment]
            # Outside any transaction, on the connection's thread.
            await _on_thread(driver, _run, CHECKPOINT, ())

    async def close(self) -> None:
        """Stop. What is left in the log the last connection to close copies over (SQLite does that)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
