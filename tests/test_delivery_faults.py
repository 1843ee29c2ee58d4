"""Delivery under faults: the fake Telegram answers message sends with 429s, server errors and dropped
connections at random while citizens report and staff answer; every outbox row still arrives exactly
once, and no chat hears anything before the wait a 429 asked for is over. Also the worker's own
handling of migrations, backoff and errors no messenger translated."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bot.clock import ManualClock
from bot.config import Routing
from bot.delivery.base import ChatMigrated, Progress, TransientError
from bot.delivery.limits import telegram_cost
from bot.delivery.outbox import Outbox
from bot.delivery.telegram import split_text
from bot.delivery.worker import DeliveryWorker
from bot.domain import Platform
from bot.messages import Outgoing
from storage.db import Database
from storage.schema import outbox as outbox_table
from tests.conftest import ROADS_CHAT
from tests.fakes.telegram import FakeTelegram
from tests.telegram_world import ROADS_STAFF, World, running_world
from tests.test_delivery_worker import RecordingMessenger, queue

CITIZENS = (2001, 2002, 2003)
# The calls that put something into a chat; only these are made to fail.
MESSAGE_CALLS = frozenset(
    {"sendMessage", "sendPhoto", "sendMediaGroup", "editMessageText", "editMessageReplyMarkup"}
)
RETRY_AFTER = 1


@dataclass
class Call:
    at: float
    method: str
    chat_id: int | None
    fate: str  # "ok", "429", "5xx" or "drop"


class Chaos(list[tuple[str, dict[str, Any]]]):
    """Stands in for FakeTelegram.requests. The fake appends each request here before it checks for
    injected failures, so arming fail_next/drop_next in append decides the fate of that very request;
    each call is also timed on the fake's clock."""

    def __init__(self, tg: FakeTelegram, seed: int, rates: dict[str, float]) -> None:
        super().__init__(tg.requests)
        self.tg = tg
        self.rng = random.Random(seed)
        self.rates = rates
        self.calls: list[Call] = []
        self.on = True

    def append(self, item: tuple[str, dict[str, Any]]) -> None:
        super().append(item)
        method, params = item
        chat_id = params.get("chat_id")
        fate = self._draw() if self.on and method in MESSAGE_CALLS else "ok"
        if fate == "429":
            self.tg.fail_next(method, error_code=429, retry_after=RETRY_AFTER)
        elif fate == "5xx":
            self.tg.fail_next(method, error_code=self.rng.choice((500, 502, 503, 504)))
        elif fate == "drop":
            self.tg.drop_next(method)
        self.calls.append(Call(self.tg.clock(), method, chat_id if isinstance(chat_id, int) else None, fate))

    def _draw(self) -> str:
        roll = self.rng.random()
        for fate, rate in self.rates.items():
            if roll < rate:
                return fate
            roll -= rate
        return "ok"

    def faults(self, fate: str) -> int:
        return sum(1 for call in self.calls if call.fate == fate)


@pytest.fixture
async def world(database_url: str, routing: Routing) -> AsyncIterator[World]:
    async with running_world(
        database_url,
        routing,
        outbox_backoff_base=0.05,
        outbox_max_attempts=50,
        # Pacing has tests of its own (test_rate_limits); here it would only make the story slower.
        telegram_private_rate=0,
    ) as world:
        for user_id in CITIZENS:
            world.tg.add_user(user_id=user_id, first_name=f"Житель {user_id}", language_code="ru")
        yield world


def assert_each_row_arrived_once(world: World, rows: list[Any]) -> None:
    assert [row.id for row in rows if row.status != "sent"] == []
    by_chat: dict[int, list[Outgoing]] = {}
    for row in rows:
        message = Outgoing.from_json(row.payload)
        if message.edit is None:
            by_chat.setdefault(row.chat_id, []).append(message)
    for chat_id, messages in by_chat.items():
        delivered = world.tg.bot_messages(chat_id)
        assert len(delivered) == sum(telegram_cost(m) for m in messages), f"chat {chat_id}"
        # Text messages never edited still carry the HTML they were sent with: none may be there twice.
        expected = Counter(part for m in messages for part in split_text(m.text))
        seen = Counter(m["_html"] for m in delivered if "text" in m and m["_edits"] == 0)
        assert not seen - expected, f"chat {chat_id} got a text more often than it was queued"


def assert_retry_after_was_honoured(chaos: Chaos) -> None:
    for index, call in enumerate(chaos.calls):
        if call.fate != "429":
            continue
        later = [c for c in chaos.calls[index + 1 :] if c.chat_id == call.chat_id]
        early = [c for c in later if c.at < call.at + RETRY_AFTER]
        assert not early, f"chat {call.chat_id}: {early[0].method} {early[0].at - call.at:.3f}s after a 429"


async def test_reports_and_answers_get_through_random_faults_exactly_once(world: World) -> None:
    tg = world.tg
    chaos = Chaos(tg, seed=20260302, rates={"429": 0.1, "5xx": 0.1, "drop": 0.1})
    tg.requests = chaos
    numbers = [await world.file_report(user_id, text=f"Яма у дома {user_id}") for user_id in CITIZENS]
    for user_id, number in zip(CITIZENS, numbers, strict=True):
        card = await world.card(ROADS_CHAT, number)
        await tg.press(ROADS_STAFF, card, f"t:take:{number}:new")
        await tg.send_text(ROADS_STAFF, f"Ответ по {number}", chat_id=ROADS_CHAT, reply_to=card["message_id"])
        await world.bot_says(user_id, lambda m, n=number: f"Ответ по {n}" in (m.get("text") or ""))
    rows = await world.settled()
    chaos.on = False

    assert chaos.faults("429") and chaos.faults("5xx") and chaos.faults("drop"), (
        "every kind of fault happened"
    )
    assert tg.stats.too_many_requests == chaos.faults("429")
    assert_each_row_arrived_once(world, rows)
    assert_retry_after_was_honoured(chaos)


async def test_a_card_with_photos_is_not_repeated_when_its_text_fails(world: World) -> None:
    # The card goes as the photos, then its text with the buttons; the text's send fails once.
    world.tg.fail_next("sendMessage", error_code=502, chat_id=ROADS_CHAT)
    await world.file_report(CITIZENS[0], photos=2)
    rows = await world.settled()
    assert_each_row_arrived_once(world, rows)


# --- the worker alone, with a recording messenger -------------------------------------------------


async def test_a_migration_moves_the_queue_and_then_tells_whoever_listens(
    db: Database, clock: ManualClock
) -> None:
    messenger = RecordingMessenger()
    seen: list[tuple[Platform, int, int, list[int]]] = []

    async def on_migrated(platform: Platform, old: int, new: int) -> None:
        async with db.read() as conn:
            chats = await conn.scalars(
                sa.select(outbox_table.c.chat_id).where(outbox_table.c.status == "pending")
            )
            seen.append((platform, old, new, list(chats)))

    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, on_migrated=on_migrated)
    messenger.failures["a"] = [ChatMigrated(-1002)]
    await queue(Outbox(db, clock), -1001, Outgoing("a"), Outgoing("b"))
    await worker.deliver_due()
    assert seen == [(Platform.telegram, -1001, -1002, [-1002, -1002])]
    await worker.deliver_due()
    assert messenger.sent == [(-1002, "a", None), (-1002, "b", None)]


async def next_attempt(db: Database) -> tuple[datetime, int]:
    async with db.read() as conn:
        row = (await conn.execute(sa.select(outbox_table.c.next_attempt_at, outbox_table.c.attempts))).one()
    return row.next_attempt_at, row.attempts


async def test_backoff_starts_from_the_configured_base_and_doubles(db: Database, clock: ManualClock) -> None:
    messenger = RecordingMessenger()
    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, backoff_base=0.2, max_attempts=10)
    messenger.failures["a"] = [TransientError("502")] * 3
    await queue(Outbox(db, clock), 1, Outgoing("a"))
    for attempt in range(3):
        before = clock.now()
        await worker.deliver_due()
        at, attempts = await next_attempt(db)
        assert attempts == attempt + 1
        delay = (at - before).total_seconds()
        assert 0.2 * 2**attempt * 0.5 <= delay <= 0.2 * 2**attempt * 1.5
        clock.set(at)
    await worker.deliver_due()
    assert messenger.sent == [(1, "a", None)]


class Exploding(RecordingMessenger):
    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        if chat_id == 1:
            raise RuntimeError("an answer nobody translated")
        await asyncio.sleep(0)  # still going when chat 1 has failed
        return await super().send(chat_id, message, reply_to, nonce, progress)


async def test_an_untranslated_error_backs_off_and_other_chats_finish_their_round(
    db: Database, clock: ManualClock
) -> None:
    messenger = Exploding()
    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock)
    outbox = Outbox(db, clock)
    await queue(outbox, 1, Outgoing("a"))
    await queue(outbox, 2, Outgoing("x"), Outgoing("y"))
    assert await worker.deliver_due() == 2
    assert messenger.sent == [(2, "x", None), (2, "y", None)]
    async with db.read() as conn:
        row = (await conn.execute(sa.select(outbox_table).where(outbox_table.c.chat_id == 1))).one()
    assert row.status == "pending" and row.attempts == 1
    assert row.next_attempt_at > clock.now()
    assert "RuntimeError" in row.last_error
    clock.advance(timedelta(seconds=0.1))
    assert await worker.deliver_due() == 0, "the row waits for its backoff, not for the next poll"
