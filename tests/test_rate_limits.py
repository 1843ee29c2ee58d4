"""The delivery pacing: the limiter's windows on a hand-moved clock, the worker holding chats back
without counting a failed try, and the bot against the fake Telegram's enforced limits drawing no 429."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from bot.clock import ManualClock, SystemClock
from bot.config import Routing
from bot.delivery.base import Progress
from bot.delivery.limits import Permit, RateLimiter, Rates, Window, cost, telegram_cost, vk_cost
from bot.delivery.outbox import Outbox
from bot.delivery.telegram import CAPTION_LIMIT, CAPTION_SPARE
from bot.delivery.worker import DeliveryWorker
from bot.domain import Attachment, MediaKind, Platform
from bot.messages import Button, Outgoing, Ref
from storage.db import Database
from storage.repository import Repository
from storage.schema import outbox as outbox_table
from tests.conftest import ROADS_CHAT
from tests.telegram_world import World, running_world
from tests.test_delivery_worker import RecordingMessenger, queue

TG = Platform.telegram
VK = Platform.vk
CITIZEN, OTHER_CITIZEN = 7001, 7002
GROUP = -1001000000099


class Ticking:
    """A monotonic time source the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def tg_photo(n: int) -> Attachment:
    return Attachment(MediaKind.photo, TG, f"AgACphoto{n}", f"u{n}")


def photos(count: int, platform: Platform = TG) -> list[Attachment]:
    if platform is VK:
        return [Attachment(MediaKind.photo, VK, f"photo-1_{n}", url=f"https://vk/{n}") for n in range(count)]
    return [tg_photo(n) for n in range(count)]


def limiter(**rates: int) -> tuple[RateLimiter, Ticking]:
    now = Ticking()
    return RateLimiter(Rates(**rates), now), now


def granted(permit: Permit) -> bool:
    permit.finish()
    return permit.granted


# --- what a message costs ---------------------------------------------------------------------------


def test_a_text_costs_one_message_per_part() -> None:
    assert telegram_cost(Outgoing("hello")) == 1
    assert telegram_cost(Outgoing("word " * 2000)) == 3  # 10 000 characters: three 4096-unit parts


def test_an_album_costs_one_message_per_photo_and_its_caption_rides_along() -> None:
    assert telegram_cost(Outgoing("short caption", photos=photos(4))) == 4
    assert telegram_cost(Outgoing("", photos=photos(1))) == 1
    assert telegram_cost(Outgoing("x", photos=photos(12))) == 10, "the messenger sends ten at most"


def test_photos_with_buttons_or_a_long_text_cost_the_text_too() -> None:
    buttons = [[Button("Take", "t:take:1:new")]]
    assert telegram_cost(Outgoing("card", photos=photos(3), buttons=buttons)) == 4
    assert telegram_cost(Outgoing("ask", photos=photos(2), force_reply=True)) == 3
    assert telegram_cost(Outgoing("y" * 1025, photos=photos(2))) == 3
    assert telegram_cost(Outgoing("word " * 2000, photos=photos(2), buttons=buttons)) == 5


def test_one_photo_carries_a_text_with_buttons_that_leaves_room_for_edits() -> None:
    buttons = [[Button("Take", "t:take:1:new")]]
    assert telegram_cost(Outgoing("card", photos=photos(1), buttons=buttons)) == 1
    assert (
        telegram_cost(Outgoing("y" * (CAPTION_LIMIT - CAPTION_SPARE), photos=photos(1), buttons=buttons)) == 1
    )
    assert telegram_cost(Outgoing("y" * 900, photos=photos(1), buttons=buttons)) == 2
    document = Attachment(MediaKind.document, TG, "doc-1", name="act.pdf")
    assert telegram_cost(Outgoing("card", photos=[document], buttons=buttons)) == 2


def test_an_edit_costs_one_telegram_call() -> None:
    assert telegram_cost(Outgoing("v2", edit=Ref(message_id=5))) == 1
    assert telegram_cost(Outgoing("", edit=Ref(message_id=5), buttons_only=True)) == 1


def test_vk_counts_requests_each_upload_being_three() -> None:
    assert vk_cost(Outgoing("hello")) == 1
    assert vk_cost(Outgoing("word " * 2000)) == 3
    assert vk_cost(Outgoing("<b>answer</b>", photos=photos(2, TG))) == 1 + 2 * 3
    assert vk_cost(Outgoing("answer", photos=photos(2, VK))) == 1, "a VK photo is attached by its id"
    assert vk_cost(Outgoing("answer", photos=photos(12, TG))) == 1 + 10 * 3
    assert vk_cost(Outgoing("v2", edit=Ref(message_id=5))) == 1
    assert vk_cost(Outgoing("", edit=Ref(message_id=5), buttons_only=True)) == 0
    assert cost(VK, Outgoing("x", photos=photos(1, TG))) == 4
    assert cost(TG, Outgoing("x", photos=photos(1, TG))) == 1


# --- the windows ------------------------------------------------------------------------------------


def test_telegram_all_chats_together_get_30_a_second() -> None:
    limits, now = limiter(telegram_global=30)
    assert all(granted(limits.acquire(TG, 100 + n, 1)) for n in range(30))
    held = limits.acquire(TG, 200, 1)
    assert not held.granted
    assert held.wait == pytest.approx(1.0)
    now.advance(0.5)
    assert limits.acquire(TG, -5, 1).wait == pytest.approx(0.5), "groups count in the same window"
    now.advance(0.5)
    assert granted(limits.acquire(TG, 200, 1))


def test_the_limiter_tells_what_fits_without_counting_it() -> None:
    limits, now = limiter(telegram_global=3, telegram_private=1)
    assert limits.room(TG) == 3 and limits.room(VK) is None, "VK has no window here"
    assert limits.wait(TG, CITIZEN) == 0.0
    assert granted(limits.acquire(TG, CITIZEN, 1))
    assert limits.wait(TG, CITIZEN) == pytest.approx(1.0), "the chat's own window"
    assert limits.wait(TG, OTHER_CITIZEN) == 0.0
    assert limits.room(TG) == 2
    assert granted(limits.acquire(TG, OTHER_CITIZEN, 2))
    assert limits.room(TG) == 0 and limits.wait(TG, 7003) == pytest.approx(1.0), "the window for all"
    now.advance(1.0)
    assert limits.room(TG) == 3 and limits.wait(TG, CITIZEN) == 0.0


def test_the_global_window_slides_rather_than_refilling_at_once() -> None:
    limits, now = limiter(telegram_global=3)
    for step in (0.0, 0.4, 0.4):
        now.advance(step)
        assert granted(limits.acquire(TG, 1, 1))
    now.advance(0.3)  # 1.1 s after the first: only the first left the window
    assert granted(limits.acquire(TG, 1, 1))
    assert limits.acquire(TG, 1, 1).wait == pytest.approx(0.3)


def test_one_message_a_second_per_private_chat_and_chats_do_not_share() -> None:
    limits, now = limiter(telegram_private=1)
    assert granted(limits.acquire(TG, CITIZEN, 1))
    assert limits.acquire(TG, CITIZEN, 1).wait == pytest.approx(1.0)
    assert granted(limits.acquire(TG, OTHER_CITIZEN, 1))
    now.advance(0.99)
    assert not limits.acquire(TG, CITIZEN, 1).granted
    now.advance(0.01)
    assert granted(limits.acquire(TG, CITIZEN, 1))


def test_twenty_messages_a_minute_per_group() -> None:
    limits, now = limiter(telegram_group=20, telegram_private=1)
    for _ in range(20):
        assert granted(limits.acquire(TG, GROUP, 1))
        now.advance(1.0)
    # 20 s in: the first message leaves the window 60 s after it went.
    assert limits.acquire(TG, GROUP, 1).wait == pytest.approx(40.0)
    assert granted(limits.acquire(TG, GROUP - 1, 1)), "another group has a window of its own"
    assert granted(limits.acquire(TG, CITIZEN, 1)), "a private chat is not held by a group's window"
    now.advance(40.0)
    assert granted(limits.acquire(TG, GROUP, 1))
    assert limits.acquire(TG, GROUP, 1).wait == pytest.approx(1.0)


def test_an_album_takes_one_place_per_photo() -> None:
    limits, _ = limiter(telegram_group=20)
    album = Outgoing("caption", photos=photos(10))
    assert granted(limits.acquire(TG, GROUP, telegram_cost(album)))
    assert granted(limits.acquire(TG, GROUP, telegram_cost(album)))
    assert not limits.acquire(TG, GROUP, 1).granted, "two albums of ten fill the minute"


def test_an_album_bigger_than_the_window_goes_alone_and_the_next_message_waits_for_every_photo() -> None:
    limits, now = limiter(telegram_private=1)
    assert granted(limits.acquire(TG, CITIZEN, 4))
    assert limits.acquire(TG, CITIZEN, 1).wait == pytest.approx(4.0)
    now.advance(3.9)
    assert not limits.acquire(TG, CITIZEN, 1).granted
    now.advance(0.1)
    assert granted(limits.acquire(TG, CITIZEN, 1))


def test_a_send_counts_from_when_it_was_answered() -> None:
    limits, now = limiter(telegram_private=1)
    permit = limits.acquire(TG, CITIZEN, 1)
    now.advance(0.3)  # the request took this long
    permit.finish()
    now.advance(0.9)
    assert limits.acquire(TG, CITIZEN, 1).wait == pytest.approx(0.1)


def test_vk_gets_20_requests_a_second_for_all_peers_and_does_not_touch_telegram() -> None:
    limits, now = limiter(vk=20, telegram_global=30)
    assert granted(limits.acquire(VK, 1, 4))
    assert all(granted(limits.acquire(VK, 2, 1)) for _ in range(16))
    assert limits.acquire(VK, 3, 1).wait == pytest.approx(1.0)
    assert granted(limits.acquire(TG, 1, 1))
    now.advance(1.0)
    assert granted(limits.acquire(VK, 3, 1))


def test_a_limit_set_to_zero_is_off() -> None:
    limits, _ = limiter()
    assert all(
        granted(limits.acquire(platform, chat, 10))
        for _ in range(100)
        for platform, chat in ((TG, CITIZEN), (TG, GROUP), (VK, CITIZEN))
    )
    limits, _ = limiter(telegram_global=30, telegram_private=0, telegram_group=0)
    assert all(granted(limits.acquire(TG, CITIZEN, 1)) for _ in range(30))
    assert not limits.acquire(TG, GROUP, 1).granted, "the global limit still holds"


def test_a_send_that_costs_nothing_is_always_let_through() -> None:
    limits, _ = limiter(vk=1)
    assert granted(limits.acquire(VK, 1, 1))
    assert granted(limits.acquire(VK, 1, vk_cost(Outgoing("", edit=Ref(message_id=1), buttons_only=True))))


def test_idle_chats_are_forgotten() -> None:
    limits, now = limiter(telegram_private=1)
    for chat in range(1, 1025):
        limits.acquire(TG, chat, 1).finish()
    now.advance(2.0)
    limits.acquire(TG, 5000, 1).finish()
    assert list(limits._chats) == [(TG, 5000)]


def test_a_window_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        Window(0, 1.0)


# --- the worker -------------------------------------------------------------------------------------


def paced_worker(db: Database, clock: ManualClock) -> tuple[Outbox, RecordingMessenger, DeliveryWorker]:
    messenger = RecordingMessenger()
    worker = DeliveryWorker(
        db,
        {TG: messenger},
        clock,
        telegram_private_rate=1,
        telegram_group_rate=20,
        telegram_global_rate=30,
        # The limiter reads the same hand-moved clock as the worker.
        monotonic=lambda: clock.now().timestamp(),
    )
    return Outbox(db, clock), messenger, worker


async def rows(db: Database) -> list[tuple[str, int, object, str]]:
    async with db.read() as conn:
        result = await conn.execute(
            sa.select(
                outbox_table.c.payload,
                outbox_table.c.attempts,
                outbox_table.c.next_attempt_at,
                outbox_table.c.status,
            ).order_by(outbox_table.c.id)
        )
        return [(r.payload["text"], r.attempts, r.next_attempt_at, r.status) for r in result]


async def test_one_private_chat_gets_one_message_a_second_and_another_chat_goes_its_own_pace(
    db: Database, clock: ManualClock
) -> None:
    outbox, messenger, worker = paced_worker(db, clock)
    await queue(outbox, CITIZEN, Outgoing("a1"), Outgoing("a2"), Outgoing("a3"))
    await queue(outbox, OTHER_CITIZEN, Outgoing("b1"), Outgoing("b2"))
    before = await rows(db)

    assert await worker.deliver_due() == 2
    assert sorted(text for _, text, _ in messenger.sent) == ["a1", "b1"]
    assert worker.limiter_wait == pytest.approx(1.0)
    held = [row for row in await rows(db) if row[3] == "pending"]
    assert held == [row for row in before if row[0] in ("a2", "a3", "b2")], "a wait is not a failed try"

    clock.advance(timedelta(seconds=0.5))
    assert await worker.deliver_due() == 0
    assert worker.limiter_wait == pytest.approx(0.5)

    clock.advance(timedelta(seconds=0.5))
    assert await worker.deliver_due() == 2
    clock.advance(timedelta(seconds=1))
    assert await worker.deliver_due() == 1
    assert await worker.deliver_due() == 0
    assert worker.limiter_wait is None, "nothing is held back any more"
    assert [text for chat, text, _ in messenger.sent if chat == CITIZEN] == ["a1", "a2", "a3"]
    assert [text for chat, text, _ in messenger.sent if chat == OTHER_CITIZEN] == ["b1", "b2"]


async def test_a_held_back_message_keeps_the_rest_of_its_chat_behind_it(
    db: Database, clock: ManualClock
) -> None:
    outbox, messenger, worker = paced_worker(db, clock)
    album = Outgoing("album", photos=photos(3))
    await queue(outbox, CITIZEN, album, Outgoing("after"))
    await worker.deliver_due()
    for _ in range(2):
        clock.advance(timedelta(seconds=1))
        await worker.deliver_due()
        assert [text for _, text, _ in messenger.sent] == ["album"], "three photos take three seconds"
    clock.advance(timedelta(seconds=1))
    await worker.deliver_due()
    assert [text for _, text, _ in messenger.sent] == ["album", "after"]


async def test_chats_are_read_only_as_fast_as_the_limits_let_them_send(
    db: Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    messenger = RecordingMessenger()
    worker = DeliveryWorker(
        db, {TG: messenger}, clock, telegram_global_rate=3, monotonic=lambda: clock.now().timestamp()
    )
    outbox = Outbox(db, clock)
    for chat_id in range(1, 11):
        await queue(outbox, chat_id, Outgoing(f"to {chat_id}"))
    reads: list[int] = []
    chat_outbox = Repository.chat_outbox

    async def counted(self: Repository, platform: Platform, chat_id: int, limit: int) -> object:
        reads.append(chat_id)
        return await chat_outbox(self, platform, chat_id, limit)

    monkeypatch.setattr(Repository, "chat_outbox", counted)
    # (Lanes run side by side: on PostgreSQL their reads may come in any order.)
    assert await worker.deliver_due() == 3
    assert sorted(reads) == [1, 2, 3], "ten citizens behind three messages a second: three chats read"
    assert await worker.deliver_due() == 0
    assert len(reads) == 3 and worker.limiter_wait == pytest.approx(1.0)
    clock.advance(timedelta(seconds=1))
    assert await worker.deliver_due() == 3
    assert sorted(reads[3:]) == [4, 5, 6], "the longest waiting first"
    assert sorted(chat for chat, _, _ in messenger.sent) == [1, 2, 3, 4, 5, 6]


class SignallingMessenger(RecordingMessenger):
    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()

    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        ids = await super().send(chat_id, message, reply_to, nonce, progress)
        async with self.changed:
            self.changed.notify_all()
        return ids

    async def wait_for(self, count: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.sent) >= count)


async def test_the_running_worker_wakes_when_the_window_opens_not_at_the_next_poll(db: Database) -> None:
    messenger = SignallingMessenger()
    worker = DeliveryWorker(db, {TG: messenger}, SystemClock(), poll_seconds=30, telegram_private_rate=1)
    await queue(Outbox(db, SystemClock()), CITIZEN, Outgoing("first"), Outgoing("second"))
    started = time.monotonic()
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(messenger.wait_for(2), timeout=5.0)
    finally:
        worker.stop()
        await task
    assert 0.95 <= time.monotonic() - started < 5.0


# --- against the fake Telegram's enforced limits -------------------------------------------------------


async def send_all(world: World, chat_id: int, messages: list[Outgoing]) -> None:
    async with world.app.outbox.unit() as u:
        for message in messages:
            await u.send(TG, chat_id, message)


def texts(world: World, chat_id: int) -> list[str]:
    return [str(m.get("text") or m.get("caption") or "") for m in world.tg.bot_messages(chat_id)]


async def test_a_burst_to_one_citizen_is_paced_and_draws_no_429(database_url: str, routing: Routing) -> None:
    async with running_world(database_url, routing, telegram_private_rate=1) as world:
        world.tg.enforce_limits = True
        world.tg.add_user(CITIZEN, "Анна")
        started = time.monotonic()
        await send_all(world, CITIZEN, [Outgoing(f"note {n}") for n in range(4)])
        await world.tg.wait_until(lambda: len(world.tg.bot_messages(CITIZEN)) == 4, timeout=10.0)
        assert time.monotonic() - started >= 3.0
        assert texts(world, CITIZEN) == [f"note {n}" for n in range(4)]
        assert world.tg.stats.too_many_requests == 0


class Fast:
    """Monotonic time running 30 times faster, shared by the fake and the limiter: the fake's minute
    for a group passes in two seconds, and both sides count it alike."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def __call__(self) -> float:
        return self.origin + (time.monotonic() - self.origin) * 30


async def test_more_than_a_group_may_take_in_a_minute_arrives_whole_without_a_429(
    database_url: str, routing: Routing
) -> None:
    async with running_world(database_url, routing, telegram_group_rate=20) as world:
        fast = Fast()
        world.tg.clock = fast
        world.app.worker.limiter.now = fast
        world.tg.enforce_limits = True
        albums = [Outgoing(f"album {n}", photos=photos(5)) for n in range(2)]
        notes = [Outgoing(f"note {n}") for n in range(15)]
        # 2 albums of 5 and 15 texts: 25 messages, five more than the group's minute allows.
        await send_all(world, ROADS_CHAT, [albums[0], *notes[:7], albums[1], *notes[7:]])
        await world.tg.wait_until(lambda: len(world.tg.bot_messages(ROADS_CHAT)) == 25, timeout=15.0)
        assert world.tg.stats.too_many_requests == 0
        shown = [text for text in texts(world, ROADS_CHAT) if text]
        assert shown == [
            "album 0",
            *[f"note {n}" for n in range(7)],
            "album 1",
            *[f"note {n}" for n in range(7, 15)],
        ]


async def test_without_the_limit_the_same_burst_draws_a_429(database_url: str, routing: Routing) -> None:
    async with running_world(database_url, routing, telegram_group_rate=0) as world:
        fast = Fast()
        world.tg.clock = fast
        world.app.worker.limiter.now = fast
        world.tg.enforce_limits = True
        await send_all(world, ROADS_CHAT, [Outgoing(f"note {n}") for n in range(25)])
        await world.tg.wait_until(lambda: world.tg.stats.too_many_requests > 0, timeout=10.0)
