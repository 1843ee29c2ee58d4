"""Fixtures that build a fresh world per test: a migrated SQLite file, a routing, a clock, the fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.clock import ManualClock
from bot.config import Routing, Settings, parse_routing
from storage.db import Database, migrate

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


@pytest.fixture
async def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'civicdesk.db'}"
    await asyncio.to_thread(migrate, url)
    return url


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
