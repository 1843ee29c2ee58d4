"""Fresh databases for tests, on SQLite (a file per test) or PostgreSQL (a database per test).

The suite runs once per backend: `pytest` for SQLite, `pytest --db=postgres` (or TEST_DATABASE=postgres)
for the server at TEST_POSTGRES_URL. `python -m tests.databases` exits 0 when that server answers and
prints why not otherwise; `make test` uses it to decide on the PostgreSQL pass.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from storage.db import migrate

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgres")
# Names of the databases a PostgreSQL pass creates; each is dropped when its test ends.
PREFIX = "civicdesk_test_"


def postgres_url() -> str:
    return os.environ.get("TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Backend(Protocol):
    name: str

    def create(self, directory: Path, *, migrated: bool) -> str:
        """A new empty (or migrated) database: its URL."""

    def drop(self, url: str) -> None: ...

    def close(self) -> None: ...


class SQLiteBackend:
    name = "sqlite"

    def create(self, directory: Path, *, migrated: bool) -> str:
        url = f"sqlite+aiosqlite:///{directory / 'civicdesk.db'}"
        if migrated:
            migrate(url)
        return url

    def drop(self, url: str) -> None:
        """The file goes with the test's temporary directory."""

    def close(self) -> None:
        pass


class PostgresBackend:
    """Databases on one server, created through its maintenance database (the one in the URL). A migrated
    one is a copy of a template migrated once per session, so the migrations run once, not per test."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.session = uuid.uuid4().hex[:8]
        self._template: str | None = None
        self._lock = threading.Lock()

    def check(self) -> str | None:
        """None when the server answers; otherwise why not."""
        try:
            run(self._execute("SELECT 1"))
        except Exception as error:
            return f"PostgreSQL pass skipped: no server at {shown(str(self.url))} ({error})"
        return None

    def create(self, directory: Path, *, migrated: bool) -> str:
        name = f"{PREFIX}{self.session}_{uuid.uuid4().hex[:10]}"
        if migrated:
            run(self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._migrated_template()}"'))
        else:
            run(self._execute(f'CREATE DATABASE "{name}"'))
        return self._url_of(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        assert name is not None and name.startswith(PREFIX)
        # FORCE: connections a killed bot process left behind go too.
        run(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        if self._template is not None:
            self.drop(self._url_of(self._template))
            self._template = None

    def _migrated_template(self) -> str:
        with self._lock:
            if self._template is None:
                name = f"{PREFIX}{self.session}_template"
                run(self._execute(f'CREATE DATABASE "{name}"'))
                migrate(self._url_of(name))
                self._template = name
            return self._template

    def _url_of(self, database: str) -> str:
        url: URL = self.url.set(database=database)
        return url.render_as_string(hide_password=False)

    async def _execute(self, statement: str) -> None:
        engine = create_async_engine(
            self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args={"timeout": 5}
        )
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql(statement)
        finally:
            await engine.dispose()


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to the end from synchronous code, inside or outside a running loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def backend_named(name: str) -> Backend:
    if name == "postgres":
        return PostgresBackend(postgres_url())
    return SQLiteBackend()


class Peek:
    """Synchronous raw SQL with `?` placeholders, for tests that look into the database of another process."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connection: Any = None

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        if self.url.get_backend_name() == "sqlite":
            assert self.url.database is not None
            connection = sqlite3.connect(self.url.database, timeout=30)
            try:
                return list(connection.execute(sql, params))
            finally:
                connection.close()
        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))
        rows = self._call(self._fetch(numbered, params))
        return [tuple(row) for row in rows]

    def close(self) -> None:
        if self._loop is None:
            return
        if self._connection is not None:
            self._call(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join()
        self._loop.close()
        self._loop = None

    async def _fetch(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        if self._connection is None:
            dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._connection = await asyncpg.connect(dsn)
        return list(await self._connection.fetch(sql, *params))

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        # asyncpg's connection lives on a loop of its own, so the caller's loop may be busy or absent.
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)


if __name__ == "__main__":
    reason = PostgresBackend(postgres_url()).check()
    print(reason or f"PostgreSQL pass: pytest --db=postgres against {shown(postgres_url())}", flush=True)
    sys.exit(1 if reason else 0)
