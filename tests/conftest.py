"""Fixtures that build a fresh world per test: a migrated database, a routing, a clock, the fakes.

The database is a SQLite file, or with `--db=postgres` (TEST_DATABASE=postgres) a database of its own on
the PostgreSQL server at TEST_POSTGRES_URL; see tests/databases.py. The PostgreSQL pass runs only the
tests that use a database; `@pytest.mark.sqlite_only(reason)` and `@pytest.mark.postgres_only(reason)`
keep a test to one backend.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.config import Routing, Settings, parse_routing
from storage.db import Database
from tests.databases import BACKENDS, Backend, PostgresBackend, backend_named

TEST_ROUTING = """
timezone = "Europe/Moscow"
default_locale = "ru"
ticket_prefix = "T"

[coordinators]
chat_id = -1009000000001

[[agencies]]
id = "roads"
name = { ru = "Управление дорог", en = "Roads department" }
chat_id = -1001000000010

[[agencies]]
id = "waste"
name = { ru = "Региональный оператор", en = "Waste operator" }
chat_id = -1001000000020

[[categories]]
id = "potholes"
title = { ru = "Дороги и ямы", en = "Roads and potholes" }
agency = "roads"
sla = "3d"
emoji = "🕳"

[[categories]]
id = "garbage"
title = { ru = "Вывоз мусора", en = "Garbage collection" }
agency = "waste"
sla = "1d"
emoji = "🗑"
"""

ROADS_CHAT = -1001000000010
WASTE_CHAT = -1001000000020
COORDINATORS_CHAT = -1009000000001
TOKEN = "123456:TEST-token-not-a-secret"
VK_TOKEN = "vk1.a.test-group-token"
VK_GROUP = 222000


@pytest.fixture
def routing() -> Routing:
    return parse_routing(TEST_ROUTING)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


DATABASE_FIXTURES = frozenset({"database_backend", "database_url", "empty_database_url"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=BACKENDS,
        default=os.environ.get("TEST_DATABASE") or "sqlite",
        help="database backend of the tests that use one (default: TEST_DATABASE or sqlite); "
        "postgres uses the server at TEST_POSTGRES_URL and runs only those tests",
    )


def pytest_configure(config: pytest.Config) -> None:
    for backend in BACKENDS:
        config.addinivalue_line(
            "markers", f"{backend}_only(reason): the test runs only with --db={backend}, for that reason"
        )


def pytest_report_header(config: pytest.Config) -> str:
    return f"database backend: {config.getoption('--db')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    backend = config.getoption("--db")
    if backend != "sqlite":
        # Tests that touch no database ran in the SQLite pass already.
        kept = [item for item in items if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    for item in items:
        for other in BACKENDS:
            marker = item.get_closest_marker(f"{other}_only")
            if marker is not None and other != backend:
                reason = marker.args[0] if marker.args else f"needs --db={other}"
                item.add_marker(pytest.mark.skip(reason=f"{other} only: {reason}"))


@pytest.fixture(scope="session")
def database_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    backend = backend_named(request.config.getoption("--db"))
    if isinstance(backend, PostgresBackend) and (reason := backend.check()):
        pytest.skip(reason)
    yield backend
    backend.close()


@pytest.fixture
async def database_url(database_backend: Backend, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    url = await asyncio.to_thread(database_backend.create, tmp_path, migrated=True)
    yield url
    await asyncio.to_thread(database_backend.drop, url)


@pytest.fixture
async def empty_database_url(database_backend: Backend, tmp_path: Path) -> AsyncIterator[str]:
    """A database of this test's own with no tables yet, for `bot migrate` to fill."""
    url = await asyncio.to_thread(database_backend.create, tmp_path, migrated=False)
    yield url
    await asyncio.to_thread(database_backend.drop, url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.close()


def make_settings(database_url: str, api_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "telegram_bot_token": TOKEN,
        "telegram_api_url": api_url,
        "database_url": database_url,
        "album_wait_seconds": 0.3,
        "outbox_poll_seconds": 0.2,
        "polling_timeout": 1,
        # Stories send a citizen several messages at once; pacing them is tested on its own.
        "telegram_private_rate": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]
