"""/healthz and /metrics on the bot's HTTP server: the app as production starts it (Telegram polling, the
server on because HTTP_PORT is set), time moved by hand with the ManualClock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from bot.app import App
from bot.clock import ManualClock
from bot.config import Routing
from bot.domain import Platform, TicketStatus
from bot.metrics import Metrics, render
from bot.web import HttpServer
from storage.db import Database
from storage.schema import outbox
from tests.conftest import ROADS_CHAT
from tests.telegram_world import TIMEOUT, World, running_world

ALICE = 1001
LAG = 300
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


@pytest.fixture
async def world(database_url: str, routing: Routing, clock: ManualClock) -> AsyncIterator[World]:
    async with running_world(
        database_url, routing, clock, http_port=0, health_max_outbox_lag=LAG, outbox_backoff_base=1.0
    ) as world:
        world.tg.add_user(user_id=ALICE, first_name="Алиса", language_code="ru")
        yield world


async def get(app: App | HttpServer, path: str) -> tuple[int, str, str]:
    server = app.http if isinstance(app, App) else app
    assert server is not None
    async with aiohttp.ClientSession() as session, session.get(server.base_url + path) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def health(app: App | HttpServer) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        server = app.http if isinstance(app, App) else app
        assert server is not None
        async with session.get(server.base_url + "/healthz") as response:
            return response.status, await response.json()


def samples(text: str) -> dict[str, float]:
    """The exposition's samples by name and labels as written, e.g. 'civicdesk_tickets{status="new"}'."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


async def retry_recorded(app: App) -> None:
    """Wait until the worker has written a failed attempt down: only then may the clock move, or the
    retry would be put off from the moved time and never fall due."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            async with app.db.read() as conn:
                failed = await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(outbox)
                    .where(outbox.c.status == "pending", outbox.c.last_error.is_not(None))
                )
            if failed:
                return
            await asyncio.sleep(0.02)


def greetings(world: World) -> int:
    return len([m for m in world.tg.bot_messages(ALICE) if world.tg.button_data(m)[:1] == ["m:new"]])


async def test_healthz_turns_degraded_when_the_outbox_lags_and_recovers(
    world: World, clock: ManualClock
) -> None:
    tg, app = world.tg, world.app
    await world.settled()
    assert await health(app) == (
        200,
        {"status": "ok", "database": True, "outbox": {"pending": 0, "oldest_age_seconds": 0}},
    )

    tg.fail_next("sendMessage", error_code=429, retry_after=3600)
    await tg.send_command(ALICE, "/start")
    await tg.wait_until(lambda: tg.stats.too_many_requests == 1)
    await retry_recorded(app)
    status, body = await health(app)
    assert status == 200 and body["outbox"]["pending"] >= 1 and body["outbox"]["oldest_age_seconds"] == 0

    clock.advance(timedelta(seconds=LAG))
    assert (await health(app))[0] == 200, "a lag of exactly the threshold is still fine"
    clock.advance(timedelta(seconds=1))
    status, body = await health(app)
    assert (status, body["status"], body["database"]) == (503, "degraded", True)
    assert body["outbox"]["pending"] >= 1  # the greeting still waits
    assert body["outbox"]["oldest_age_seconds"] == LAG + 1

    clock.advance(timedelta(hours=1))  # Telegram's retry_after is over: the worker sends it
    await tg.wait_until(lambda: greetings(world) == 1)
    await world.settled()
    assert await health(app) == (
        200,
        {"status": "ok", "database": True, "outbox": {"pending": 0, "oldest_age_seconds": 0}},
    )


async def test_healthz_is_503_when_the_database_does_not_answer(tmp_path: Path, clock: ManualClock) -> None:
    broken = Database(f"sqlite+aiosqlite:///{tmp_path}")  # a directory is no database file
    server = HttpServer(
        "127.0.0.1",
        0,
        db=broken,
        clock=clock,
        metrics=Metrics(),
        platforms=[Platform.telegram],
        max_outbox_lag=LAG,
    )
    await server.start()
    try:
        assert await health(server) == (
            503,
            {
                "status": "degraded",
                "database": False,
                "outbox": {"pending": None, "oldest_age_seconds": None},
            },
        )
        status, _, text = await get(server, "/metrics")
        assert status == 200
        found = samples(text)
        assert found["civicdesk_database_up"] == 0
        assert not any(name.startswith("civicdesk_tickets") for name in found)
    finally:
        await server.stop()
        await broken.close()


async def test_metrics_after_some_traffic(world: World, clock: ManualClock) -> None:
    tg, app = world.tg, world.app
    number = await world.file_report(ALICE)
    await world.card(ROADS_CHAT, number)

    tg.fail_next("sendMessage", error_code=502, chat_id=ALICE)
    sent = len(tg.calls("sendMessage"))
    await tg.send_command(ALICE, "/help")
    await tg.wait_until(lambda: len(tg.calls("sendMessage")) > sent)
    await retry_recorded(app)
    clock.advance(timedelta(seconds=10))  # past the backoff
    await world.settled()
    tg.fail_next("sendMessage", error_code=429, retry_after=5, chat_id=ALICE)
    await tg.send_command(ALICE, "/start")
    await tg.wait_until(lambda: tg.stats.too_many_requests == 1)
    await retry_recorded(app)
    clock.advance(timedelta(seconds=10))
    await tg.wait_until(lambda: greetings(world) >= 1)
    tg.fail_next(
        "sendMessage", error_code=400, description="Bad Request: message text is empty", chat_id=ALICE
    )
    await tg.send_command(ALICE, "/help")
    await world.settled()
    await app.jobs.scan()

    status, content_type, text = await get(app, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(text)
    handled = found['civicdesk_updates_handled_total{platform="telegram",result="ok"}']
    assert handled >= 8  # /new, category, text, address, confirm, /help, /start, /help
    assert found["civicdesk_database_up"] == 1
    assert found['civicdesk_tickets{status="new"}'] == 1
    assert all(
        found[f'civicdesk_tickets{{status="{s.value}"}}'] == 0 for s in TicketStatus if s.value != "new"
    )
    assert found['civicdesk_outbox_pending{platform="telegram"}'] == 0
    assert found['civicdesk_outbox_oldest_pending_age_seconds{platform="telegram"}'] == 0
    assert found['civicdesk_send_errors_total{kind="transient",reason=""}'] == 1
    assert found['civicdesk_send_errors_total{kind="retry_after",reason=""}'] == 1
    assert found['civicdesk_send_errors_total{kind="permanent",reason="bad_request"}'] == 1
    scans = found["civicdesk_scheduler_scan_seconds_count"]
    assert scans >= 1 and found['civicdesk_scheduler_scan_seconds_bucket{le="+Inf"}'] == scans
    assert found["civicdesk_scheduler_scan_seconds_sum"] >= 0
    assert found["civicdesk_scheduler_scan_failures_total"] == 0
    assert "# TYPE civicdesk_scheduler_scan_seconds histogram" in text
    assert "# TYPE civicdesk_send_errors_total counter" in text


def test_exposition_escapes_labels_and_keeps_buckets_cumulative() -> None:
    metrics = Metrics()
    metrics.send_error("permanent", 'odd "reason"\\with\nnewline')
    for seconds in (0.001, 0.02, 0.02, 100.0):
        metrics.scan_finished(seconds, ok=True)
    metrics.scan_finished(1.0, ok=False)
    text = render(metrics, None)
    assert (
        'civicdesk_send_errors_total{kind="permanent",reason="odd \\"reason\\"\\\\with\\nnewline"} 1' in text
    )
    assert 'civicdesk_scheduler_scan_seconds_bucket{le="0.005"} 1' in text
    assert 'civicdesk_scheduler_scan_seconds_bucket{le="0.025"} 3' in text
    assert 'civicdesk_scheduler_scan_seconds_bucket{le="30.0"} 3' in text
    assert 'civicdesk_scheduler_scan_seconds_bucket{le="+Inf"} 4' in text
    assert "civicdesk_scheduler_scan_seconds_count 4" in text
    assert "civicdesk_scheduler_scan_failures_total 1" in text
    assert text.endswith("\n")
