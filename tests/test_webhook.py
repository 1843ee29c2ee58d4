"""Telegram webhook mode: the real aiogram client and the bot's own HTTP server against FakeTelegram, which
calls the webhook the way Telegram does (through a TLS proxy: the https URL is forwarded to the local
server), with the secret header, retrying until it is answered 200."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from bot.app import App
from bot.config import ConfigError, Routing, Settings, load_settings
from bot.domain import Platform
from handlers.telegram.webhook import SECRET_HEADER, TelegramWebhook
from storage.db import Database
from storage.repository import Repository
from storage.schema import inbox, processed_updates
from tests.conftest import ROADS_CHAT, make_settings
from tests.telegram_world import TIMEOUT, World, running_world

ALICE = 1001
SECRET = "s3cret_Token-for-the-webhook"
WEBHOOK_URL = "https://civicdesk.example.org/telegram"
WEBHOOK = {
    "telegram_mode": "webhook",
    "webhook_url": WEBHOOK_URL,
    "webhook_secret": SECRET,
    "http_port": 0,  # any free port; the fake is told where it is
}


def receiver(app: App) -> TelegramWebhook:
    found = [r for r in app.pollers if isinstance(r, TelegramWebhook)]
    assert len(found) == 1
    return found[0]


def url(app: App, path: str = "/telegram") -> str:
    assert app.http is not None
    return app.http.base_url + path


@pytest.fixture
async def world(database_url: str, routing: Routing) -> AsyncIterator[World]:
    async with running_world(database_url, routing, **WEBHOOK) as world:
        world.tg.add_user(user_id=ALICE, first_name="Алиса", language_code="ru")
        world.tg.forward_webhooks(world.app.http.base_url)  # type: ignore[union-attr]
        yield world


async def post(target: str, body: bytes | dict[str, Any], secret: str | None = SECRET) -> tuple[int, float]:
    """POST as Telegram does; returns the status and the loop time the answer arrived."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session, session.post(target, data=data, headers=headers) as r:
        await r.read()
        return r.status, asyncio.get_running_loop().time()


async def rows(app: App, table: sa.Table) -> list[Any]:
    async with app.db.read() as conn:
        return list(await conn.execute(sa.select(table)))


async def settled(app: App) -> list[Any]:
    """The inbox once every update taken in so far is handled (empty unless handling is stuck)."""
    for taker in app.pollers:
        await asyncio.wait_for(taker.intake.drain(), TIMEOUT)
    return await rows(app, inbox)


def start_update(update_id: int, user_id: int = ALICE, text: str = "/start") -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_770_000_000,
            "chat": {"id": user_id, "type": "private", "first_name": "Алиса"},
            "from": {"id": user_id, "is_bot": False, "first_name": "Алиса", "language_code": "ru"},
            "text": text,
            "entities": [{"type": "bot_command", "offset": 0, "length": len(text)}],
        },
    }


def greetings(world: World, user_id: int = ALICE) -> list[dict[str, Any]]:
    return [m for m in world.tg.bot_messages(user_id) if world.tg.button_data(m)[:1] == ["m:new"]]


# --- start-up ---------------------------------------------------------------------------------------


async def test_start_sets_the_webhook_and_never_polls(world: World) -> None:
    tg = world.tg
    assert tg.webhook is not None
    assert tg.webhook["url"] == WEBHOOK_URL
    assert tg.webhook["secret_token"] == SECRET
    assert not tg.webhook.get("drop_pending_updates")
    assert "message" in tg.webhook["allowed_updates"] and "callback_query" in tg.webhook["allowed_updates"]
    assert tg.calls("deleteWebhook") == []
    assert tg.calls("getUpdates") == []


async def test_no_http_server_in_polling_mode_without_a_port(database_url: str, routing: Routing) -> None:
    app = App(make_settings(database_url, "http://127.0.0.1:9"), routing)
    assert app.http is None
    await app.db.close()


# --- the story through the webhook ----------------------------------------------------------------


async def test_a_report_filed_through_the_webhook_reaches_the_agency(world: World) -> None:
    number = await world.file_report(ALICE)
    card = await world.card(ROADS_CHAT, number)
    assert "Яма на Ленина, 5" in card["text"]
    assert world.tg.webhook_posts and all(p["status"] == 200 for p in world.tg.webhook_posts)
    await world.tg.wait_until(lambda: world.tg.pending_updates == 0)
    assert await settled(world.app) == []


async def test_a_wrong_or_missing_secret_is_refused_and_nothing_is_stored(world: World) -> None:
    target = url(world.app)
    for secret in (None, "", "wrong", SECRET + "x", SECRET[:-1]):
        status, _ = await post(target, start_update(9001), secret=secret)
        assert status == 401, secret
    assert await rows(world.app, inbox) == []
    assert await rows(world.app, processed_updates) == []
    assert greetings(world) == []


async def test_telegram_retries_until_the_secret_matches(world: World) -> None:
    tg = world.tg
    assert tg.webhook is not None
    tg.webhook["secret_token"] = "rotated-elsewhere"
    await tg.send_command(ALICE, "/start")
    await tg.wait_until(lambda: len(tg.webhook_posts) >= 2)
    assert {p["status"] for p in tg.webhook_posts} == {401}
    info = await tg._api_get_webhook_info({}, {})
    assert "401" in info["last_error_message"] and info["pending_update_count"] == 1
    assert await rows(world.app, inbox) == [] and greetings(world) == []

    tg.webhook["secret_token"] = SECRET
    await tg.wait_until(lambda: tg.webhook_posts[-1]["status"] == 200)
    await tg.wait_until(lambda: len(greetings(world)) == 1)


async def test_a_body_that_is_not_an_update_is_400_and_not_stored(world: World) -> None:
    target = url(world.app)
    for body in (b"{not json", b"[1, 2]", b'{"message": {}}', b'{"update_id": "7"}', b"\xff\xfe"):
        status, _ = await post(target, body)
        assert status == 400, body
    assert await rows(world.app, inbox) == []


async def test_an_update_delivered_twice_makes_one_ticket(world: World) -> None:
    tg = world.tg
    number = await world.file_report(ALICE)
    confirm = next(u for u in reversed(tg.updates) if "callback_query" in u)
    assert confirm["callback_query"]["data"] == "d:confirm"
    posts = len(tg.webhook_posts)
    tg.redeliver(confirm)
    await tg.wait_until(lambda: len(tg.webhook_posts) > posts and tg.webhook_posts[-1]["status"] == 200)
    assert await settled(world.app) == []
    assert await world.ticket_count() == 1
    assert len([m for m in tg.bot_messages(ALICE) if f"#T{number}" in (m.get("text") or "")]) == 1


async def test_the_same_update_posted_at_once_twice_is_handled_once(world: World) -> None:
    update = start_update(7001)
    answers = await asyncio.gather(*(post(url(world.app), update) for _ in range(2)))
    assert [status for status, _ in answers] == [200, 200]
    await world.tg.wait_until(lambda: len(greetings(world)) == 1)
    assert await settled(world.app) == []
    again, _ = await post(url(world.app), update)  # after it was handled: still nothing new
    assert again == 200
    assert await settled(world.app) == []
    assert len(greetings(world)) == 1
    assert [r.key for r in await rows(world.app, processed_updates)] == ["7001"]


# --- crash safety -----------------------------------------------------------------------------------


async def test_the_200_is_sent_only_once_the_update_is_stored(world: World) -> None:
    webhook = receiver(world.app)
    handle = webhook.intake.handler
    gate = asyncio.Event()

    async def held(payload: dict[str, Any]) -> None:
        await gate.wait()
        await handle(payload)

    webhook.intake.handler = held
    status, _ = await post(url(world.app), start_update(7002))
    assert status == 200
    # The answer is out and the update is not handled yet: were the bot killed now, the row is what
    # the next start replays.
    stored = await rows(world.app, inbox)
    assert [r.key for r in stored] == ["7002"]
    assert stored[0].payload["message"]["text"] == "/start"
    assert await rows(world.app, processed_updates) == []
    gate.set()
    await world.tg.wait_until(lambda: len(greetings(world)) == 1)
    assert await settled(world.app) == []


async def test_a_failed_store_is_not_answered_200_and_telegram_sends_it_again(world: World) -> None:
    tg = world.tg
    webhook = receiver(world.app)
    accept = webhook.intake.accept
    failures = 0

    async def flaky(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise OSError("disk full")
        await accept(*args, **kwargs)

    webhook.intake.accept = flaky  # type: ignore[method-assign]
    await tg.send_command(ALICE, "/start")
    await tg.wait_until(lambda: len(greetings(world)) == 1)
    assert [p["status"] for p in tg.webhook_posts] == [500, 200]


async def test_updates_stored_before_a_restart_are_handled_on_start(
    database_url: str, routing: Routing
) -> None:
    update = start_update(7003)
    db = Database(database_url)
    async with db.transaction() as conn:
        await Repository(conn).store_inbox(Platform.telegram, [("7003", update)], datetime.now(UTC))
    await db.close()
    async with running_world(database_url, routing, **WEBHOOK) as world:
        world.tg.add_user(user_id=ALICE, first_name="Алиса", language_code="ru")
        await world.tg.wait_until(lambda: len(greetings(world)) == 1)
        assert await settled(world.app) == []
        assert [r.key for r in await rows(world.app, processed_updates)] == ["7003"]


async def test_the_secret_is_not_logged(
    database_url: str, routing: Routing, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_world(database_url, routing, **WEBHOOK) as world:
        world.tg.add_user(user_id=ALICE, first_name="Алиса", language_code="ru")
        status, _ = await post(url(world.app), start_update(7004), secret="wrong")
        assert status == 401
    ours = [
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("civicdesk", "bot", "handlers")
    ]
    assert ours and not any(SECRET in line for line in ours)


# --- settings ------------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in (
        "TELEGRAM_MODE",
        "WEBHOOK_URL",
        "WEBHOOK_SECRET",
        "WEBHOOK_PATH",
        "VK_MODE",
        "VK_CALLBACK_SECRET",
        "VK_CONFIRMATION_CODE",
        "VK_CALLBACK_PATH",
        "HTTP_HOST",
        "HTTP_PORT",
        "HEALTH_MAX_OUTBOX_LAG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_webhook_settings_defaults(env: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None)
    assert settings.telegram_mode == "polling" and settings.vk_mode == "longpoll"
    assert settings.http_host == "127.0.0.1" and settings.http_port is None
    assert settings.http_listen_port is None
    assert settings.webhook_path == "/telegram" and settings.vk_callback_path == "/vk"
    assert settings.health_max_outbox_lag == 300


def test_webhook_mode_reads_its_settings(env: pytest.MonkeyPatch) -> None:
    env.setenv("TELEGRAM_MODE", "Webhook")
    env.setenv("WEBHOOK_URL", WEBHOOK_URL)
    env.setenv("WEBHOOK_SECRET", SECRET)
    settings = load_settings(None)
    assert settings.telegram_mode == "webhook"
    assert settings.http_listen_port == 8080
    assert settings.webhook_secret is not None and settings.webhook_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    env.setenv("HTTP_PORT", "9000")
    assert load_settings(None).http_listen_port == 9000


def test_webhook_mode_needs_url_and_secret(env: pytest.MonkeyPatch) -> None:
    env.setenv("TELEGRAM_MODE", "webhook")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    text = str(caught.value)
    assert "  WEBHOOK_URL is not set: TELEGRAM_MODE=webhook needs" in text
    assert "  WEBHOOK_SECRET is not set" in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_SECRET", "has space"),
        ("WEBHOOK_SECRET", "semi;colon"),
        ("WEBHOOK_SECRET", "ы"),
        ("WEBHOOK_SECRET", "a" * 257),
        ("WEBHOOK_URL", "http://civicdesk.example.org/telegram"),
        ("WEBHOOK_PATH", "telegram"),
        ("WEBHOOK_PATH", "/metrics"),
        ("HTTP_PORT", "65536"),
        ("HEALTH_MAX_OUTBOX_LAG", "0"),
        ("TELEGRAM_MODE", "push"),
    ],
)
def test_bad_webhook_settings_name_the_variable(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv("TELEGRAM_MODE", "webhook")
    env.setenv("WEBHOOK_URL", WEBHOOK_URL)
    env.setenv("WEBHOOK_SECRET", SECRET)
    env.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"(?m)^  {name}: ") as caught:
        load_settings(None)
    if name == "WEBHOOK_SECRET":
        assert value not in str(caught.value)


def test_a_secret_of_256_allowed_characters_is_accepted(env: pytest.MonkeyPatch) -> None:
    env.setenv("WEBHOOK_SECRET", "aZ0_-" * 51 + "x")
    assert load_settings(None).webhook_secret is not None
