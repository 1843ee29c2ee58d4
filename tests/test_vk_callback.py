"""VK Callback API mode: FakeVK POSTs every event to the bot's HTTP server as VK does (with the secret,
again until answered "ok"); the real vkbottle client sends the answers; the agency side is FakeTelegram."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from bot.config import Routing
from handlers.vk.callback import VkCallback
from storage.schema import inbox, processed_updates
from tests.conftest import ROADS_CHAT, VK_GROUP, VK_TOKEN
from tests.fakes.vk import FakeVK
from tests.telegram_world import TIMEOUT, running_world
from tests.test_vk_e2e import VkWorld

ANNA = 5001
SECRET = "vk-callback-secret-42"
CODE = "a1b2c3d4"


@pytest.fixture
async def both(
    database_url: str, routing: Routing, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[VkWorld]:
    monkeypatch.chdir(tmp_path)
    async with FakeVK(token=VK_TOKEN, group_id=VK_GROUP) as vk:
        vk.add_user(user_id=ANNA, first_name="Анна", last_name="Иванова", lang="ru")
        async with running_world(
            database_url,
            routing,
            vk_group_token=VK_TOKEN,
            vk_group_id=VK_GROUP,
            vk_api_url=vk.api_url,
            vk_mode="callback",
            vk_callback_secret=SECRET,
            vk_confirmation_code=CODE,
            http_port=0,
        ) as world:
            vk.set_callback(callback_url(world.app), SECRET)
            yield VkWorld(vk, world)


def callback_url(app: Any) -> str:
    assert app.http is not None
    return f"{app.http.base_url}/vk"


def receiver(both: VkWorld) -> VkCallback:
    found = [r for r in both.world.app.pollers if isinstance(r, VkCallback)]
    assert len(found) == 1
    return found[0]


async def settled(both: VkWorld) -> list[Any]:
    """The inbox once every event taken in so far is handled."""
    await asyncio.wait_for(receiver(both).intake.drain(), TIMEOUT)
    async with both.world.app.db.read() as conn:
        return list(await conn.execute(sa.select(inbox)))


async def handled_keys(both: VkWorld) -> list[str]:
    async with both.world.app.db.read() as conn:
        return [r.key for r in await conn.execute(sa.select(processed_updates.c.key))]


async def unsent_event(vk: FakeVK, user_id: int, text: str) -> dict[str, Any]:
    """A real message_new event that the fake does not post itself: the test posts it."""
    server, vk.callback = vk.callback, None
    try:
        await vk.send_text(user_id, text)
    finally:
        vk.callback = server
    return dict(vk.events[-1])


async def test_confirmation_returns_the_code_for_our_community_only(both: VkWorld) -> None:
    vk, url = both.vk, callback_url(both.world.app)
    assert await vk.confirm_callback(url) == (200, CODE)
    status, text = await vk.callback_post(url, {"type": "confirmation", "group_id": VK_GROUP + 1})
    assert status == 403 and CODE not in text


async def test_callback_mode_never_long_polls(both: VkWorld) -> None:
    await both.vk.send_text(ANNA, "Начать")
    await both.says_key(ANNA, "dialog.greeting", name="Анна")
    assert both.vk.calls("groups.getLongPollServer") == []
    assert both.vk.lp_requests == []


async def test_a_report_through_the_callback_api_reaches_the_agency(both: VkWorld) -> None:
    number = await both.file_report(ANNA, text="Яма у школы № 3")
    card = await both.world.card(ROADS_CHAT, number)
    assert "Яма у школы № 3" in card["text"]
    assert both.vk.callback_posts and all(p["text"] == "ok" for p in both.vk.callback_posts)
    assert await settled(both) == []


async def test_a_wrong_or_missing_secret_is_403_and_nothing_is_stored(both: VkWorld) -> None:
    vk, url = both.vk, callback_url(both.world.app)
    event = await unsent_event(vk, ANNA, "Начать")
    for secret in (None, "", "wrong", SECRET + "x", 42):
        body = dict(event) if secret is None else {**event, "secret": secret}
        assert await vk.callback_post(url, body) == (403, "wrong secret"), secret
    other = {**event, "secret": SECRET, "group_id": VK_GROUP + 1}
    assert (await vk.callback_post(url, other))[0] == 403
    for junk in ({"secret": SECRET}, {"type": 5, "secret": SECRET}):
        assert (await vk.callback_post(url, junk))[0] == 400
    assert await settled(both) == []
    assert await handled_keys(both) == []
    assert vk.bot_messages(ANNA) == []


async def test_vk_retries_until_answered_ok(both: VkWorld) -> None:
    vk = both.vk
    vk.set_callback(callback_url(both.world.app), "not-the-secret")
    await vk.send_text(ANNA, "Начать")
    await vk.wait_until(lambda: len(vk.callback_posts) >= 2, timeout=TIMEOUT)
    assert {(p["status"], p["text"]) for p in vk.callback_posts} == {(403, "wrong secret")}
    assert vk.bot_messages(ANNA) == []
    vk.set_callback(callback_url(both.world.app), SECRET)
    await both.says_key(ANNA, "dialog.greeting", name="Анна")
    assert vk.callback_posts[-1]["text"] == "ok"


async def test_an_event_delivered_again_is_handled_once(both: VkWorld) -> None:
    vk = both.vk
    await vk.send_text(ANNA, "Начать")
    await both.says_key(ANNA, "dialog.greeting", name="Анна")
    first = vk.events[-1]
    vk.replay(first)
    await vk.wait_until(lambda: len(vk.callback_posts) == 2, timeout=TIMEOUT)
    assert [p["event_id"] for p in vk.callback_posts] == [first["event_id"]] * 2
    assert await settled(both) == []
    assert len(vk.bot_messages(ANNA)) == 1
    assert await handled_keys(both) == [first["event_id"]]


async def test_the_same_event_posted_at_once_twice_is_handled_once(both: VkWorld) -> None:
    vk, url = both.vk, callback_url(both.world.app)
    event = {**await unsent_event(vk, ANNA, "Начать"), "secret": SECRET}
    answers = await asyncio.gather(vk.callback_post(url, event), vk.callback_post(url, event))
    assert answers == [(200, "ok"), (200, "ok")]
    await both.says_key(ANNA, "dialog.greeting", name="Анна")
    assert await settled(both) == []
    assert len(vk.bot_messages(ANNA)) == 1
    assert await handled_keys(both) == [event["event_id"]]


async def test_ok_is_sent_only_once_the_event_is_stored_without_its_secret(both: VkWorld) -> None:
    vk, url = both.vk, callback_url(both.world.app)
    callback = receiver(both)
    route = callback.intake.handler
    gate = asyncio.Event()

    async def held(payload: dict[str, Any]) -> None:
        await gate.wait()
        await route(payload)

    callback.intake.handler = held
    event = {**await unsent_event(vk, ANNA, "Начать"), "secret": SECRET}
    assert await vk.callback_post(url, event) == (200, "ok")
    async with both.world.app.db.read() as conn:
        stored = list(await conn.execute(sa.select(inbox)))
    assert [r.key for r in stored] == [event["event_id"]]
    assert "secret" not in stored[0].payload and SECRET not in str(stored[0].payload)
    gate.set()
    await both.says_key(ANNA, "dialog.greeting", name="Анна")
    assert await settled(both) == []


async def test_a_body_that_is_not_json_is_400(both: VkWorld) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(callback_url(both.world.app), data=b"{oops") as r,
    ):
        assert r.status == 400
    assert await settled(both) == []
