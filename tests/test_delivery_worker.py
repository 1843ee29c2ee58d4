"""The outbox worker with a recording messenger: order per chat, waits, retries, permanent failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bot.clock import ManualClock, SystemClock
from bot.delivery.base import (
    ChatMigrated,
    DeliveryError,
    PermanentError,
    Progress,
    RetryAfter,
    TransientError,
)
from bot.delivery.outbox import Outbox
from bot.delivery.worker import DeliveryWorker
from bot.domain import Platform
from bot.messages import Outgoing, Ref
from storage.db import Database
from storage.repository import Repository
from storage.schema import outbox as outbox_table


class RecordingMessenger:
    platform = Platform.telegram

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, int | None]] = []
        self.edits: list[tuple[int, int, str]] = []
        self.failures: dict[str, list[DeliveryError]] = {}
        self.next_id = 100

    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        queue = self.failures.get(message.text)
        if queue:
            raise queue.pop(0)
        self.sent.append((chat_id, message.text, reply_to))
        self.next_id += 1
        return [self.next_id]

    async def edit(self, chat_id: int, message_id: int, message: Outgoing) -> None:
        queue = self.failures.get(message.text)
        if queue:
            raise queue.pop(0)
        self.edits.append((chat_id, message_id, message.text))


async def queue(outbox: Outbox, chat_id: int, *messages: Outgoing) -> None:
    async with outbox.unit() as u:
        for message in messages:
            await u.send(Platform.telegram, chat_id, message)


async def statuses(db: Database) -> list[tuple[str, str]]:
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(outbox_table.c.payload, outbox_table.c.status).order_by(outbox_table.c.id)
        )
        return [(r.payload["text"], r.status) for r in rows]


def make(db: Database, clock: ManualClock) -> tuple[Outbox, RecordingMessenger, DeliveryWorker]:
    messenger = RecordingMessenger()
    return (
        Outbox(db, clock),
        messenger,
        DeliveryWorker(db, {Platform.telegram: messenger}, clock, max_attempts=3),
    )


async def test_messages_to_one_chat_go_in_order(db: Database, clock: ManualClock) -> None:
    outbox, messenger, worker = make(db, clock)
    await queue(outbox, 1, Outgoing("a"), Outgoing("b"))
    await queue(outbox, 2, Outgoing("x"))
    await queue(outbox, 1, Outgoing("c"))
    assert await worker.deliver_due() == 4
    assert [text for chat, text, _ in messenger.sent if chat == 1] == ["a", "b", "c"]


class GatedMessenger(RecordingMessenger):
    """Sends to one chat only as the test lets them through; tells of every message sent."""

    def __init__(self, gated_chat: int) -> None:
        super().__init__()
        self.gated_chat = gated_chat
        self.gate = asyncio.Semaphore(0)
        self.went: asyncio.Queue[str] = asyncio.Queue()
        self.held: asyncio.Queue[str] = asyncio.Queue()

    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        if chat_id == self.gated_chat:
            self.held.put_nowait(message.text)
            await self.gate.acquire()
        ids = await super().send(chat_id, message, reply_to, nonce, progress)
        self.went.put_nowait(message.text)
        return ids

    async def next_sent(self) -> str:
        return await asyncio.wait_for(self.went.get(), 5)

    async def let_through(self, count: int) -> list[str]:
        """Let `count` held sends go; returns the next `count` messages sent."""
        for _ in range(count):
            self.gate.release()
        return [await self.next_sent() for _ in range(count)]

    async def next_held(self) -> str:
        return await asyncio.wait_for(self.held.get(), 5)


def gated_worker(db: Database, clock: ManualClock) -> tuple[GatedMessenger, DeliveryWorker, Outbox]:
    """A worker that chat -100's sends wait in until let through, told of every commit; its poll never
    comes during a test, so only being woken moves it."""
    messenger = GatedMessenger(gated_chat=-100)
    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, poll_seconds=3600)
    outbox = Outbox(db, clock)
    outbox.subscribe(worker.wake)
    return messenger, worker, outbox


async def idle(worker: DeliveryWorker) -> None:
    """Until the worker has no lane going and nothing to look at."""
    async with asyncio.timeout(5):
        while True:
            if worker._lanes:
                await asyncio.gather(*worker._lanes.values())
            elif worker._wakeup.is_set():
                await asyncio.sleep(0)  # the worker's loop takes the wake-up
            else:
                return


@asynccontextmanager
async def running(worker: DeliveryWorker) -> AsyncIterator[None]:
    """The worker's loop, as the app runs it, for the length of the block; stopped as the app stops it."""
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await asyncio.wait_for(task, 5)


async def test_a_chat_stuck_on_a_slow_send_holds_up_no_other_chat(db: Database, clock: ManualClock) -> None:
    messenger, worker, outbox = gated_worker(db, clock)
    await queue(outbox, -100, Outgoing("card 1"), Outgoing("card 2"))
    async with running(worker):
        assert await messenger.next_held() == "card 1"
        await queue(outbox, 5, Outgoing("answer to a citizen"))
        assert await messenger.next_sent() == "answer to a citizen"
        await queue(outbox, 6, Outgoing("another answer"))
        assert await messenger.next_sent() == "another answer"
        assert await messenger.let_through(2) == ["card 1", "card 2"]


async def test_a_cancelled_worker_takes_its_lanes_along(db: Database, clock: ManualClock) -> None:
    messenger = GatedMessenger(gated_chat=-100)
    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, poll_seconds=3600)
    await queue(Outbox(db, clock), -100, Outgoing("card"))
    task = asyncio.create_task(worker.run())
    assert await messenger.next_held() == "card"
    lanes = list(worker._lanes.values())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert lanes and all(lane.cancelled() for lane in lanes)
    assert await statuses(db) == [("card", "pending")], "sent next time"


async def test_a_message_queued_while_its_chat_is_sending_goes_right_after(
    db: Database, clock: ManualClock
) -> None:
    messenger, worker, outbox = gated_worker(db, clock)
    await queue(outbox, -100, Outgoing("card 1"))
    async with running(worker):
        # The chat's lane read its messages and waits on the first when the second is queued.
        assert await messenger.next_held() == "card 1"
        await queue(outbox, -100, Outgoing("card 2"))
        await queue(outbox, 5, Outgoing("answer"))
        assert await messenger.next_sent() == "answer"
        assert await messenger.let_through(2) == ["card 1", "card 2"]


async def test_a_chat_is_read_again_only_for_what_was_queued_after_its_lane_read_it(
    db: Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look through the database while a lane sends finds the lane's own messages: no second read."""
    reads: list[int] = []
    looks = asyncio.Queue[None]()
    chat_outbox, due_chats = Repository.chat_outbox, Repository.due_outbox_chats

    async def read_chat(repo: Repository, platform: Platform, chat_id: int, limit: int) -> list[Any]:
        reads.append(chat_id)
        return await chat_outbox(repo, platform, chat_id, limit)

    async def look(repo: Repository, *args: Any, **kwargs: Any) -> list[Any]:
        found = await due_chats(repo, *args, **kwargs)
        looks.put_nowait(None)
        return found

    monkeypatch.setattr(Repository, "chat_outbox", read_chat)
    monkeypatch.setattr(Repository, "due_outbox_chats", look)
    messenger, worker, outbox = gated_worker(db, clock)
    await queue(outbox, -100, Outgoing("card 1"))
    async with running(worker):
        await asyncio.wait_for(looks.get(), 5)  # the look at start
        assert await messenger.next_held() == "card 1"
        worker.wake()
        await asyncio.wait_for(looks.get(), 5)
        assert await messenger.let_through(1) == ["card 1"]
        await idle(worker)
        await queue(outbox, -100, Outgoing("card 2"))
        assert await messenger.let_through(1) == ["card 2"]
        await idle(worker)
    assert reads == [-100, -100]


async def test_a_retry_falls_due_while_other_chats_keep_the_worker_busy(db: Database) -> None:
    messenger = GatedMessenger(gated_chat=0)  # holds nothing back; tells of every message sent
    messenger.failures["retried"] = [TransientError("502")]
    clock = SystemClock()
    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, poll_seconds=0.3, backoff_base=0.05)
    outbox = Outbox(db, clock)
    outbox.subscribe(worker.wake)
    await queue(outbox, 1, Outgoing("retried"))

    async def busy() -> None:
        # A message to another chat every few milliseconds: the worker never sits out a whole poll.
        for index in range(10_000):
            await queue(outbox, 2, Outgoing(f"busy {index}"))
            await asyncio.sleep(0.005)

    async with running(worker):
        flood = asyncio.create_task(busy())
        try:
            async with asyncio.timeout(5):
                while await messenger.next_sent() != "retried":
                    pass
            assert not flood.done()
        finally:
            flood.cancel()


async def test_retry_after_holds_back_only_that_chat_and_exactly_as_long_as_asked(
    db: Database, clock: ManualClock
) -> None:
    outbox, messenger, worker = make(db, clock)
    messenger.failures["a"] = [RetryAfter(5)]
    await queue(outbox, 1, Outgoing("a"), Outgoing("b"))
    await queue(outbox, 2, Outgoing("x"))
    await worker.deliver_due()
    assert [t for _, t, _ in messenger.sent] == ["x"]
    clock.advance(timedelta(seconds=4))
    await worker.deliver_due()
    assert [t for _, t, _ in messenger.sent] == ["x"]
    clock.advance(timedelta(seconds=1))
    await worker.deliver_due()
    assert [t for _, t, _ in messenger.sent] == ["x", "a", "b"]


async def test_transient_errors_are_retried_then_given_up(db: Database, clock: ManualClock) -> None:
    outbox, messenger, worker = make(db, clock)
    messenger.failures["a"] = [TransientError("502"), TransientError("502"), TransientError("502")]
    messenger.failures["b"] = [TransientError("timeout")]
    await queue(outbox, 1, Outgoing("a"))
    await queue(outbox, 2, Outgoing("b"))
    for _ in range(4):
        await worker.deliver_due()
        clock.advance(timedelta(minutes=10))
    assert await statuses(db) == [("a", "failed"), ("b", "sent")]


async def test_a_permanent_failure_does_not_block_the_chat(db: Database, clock: ManualClock) -> None:
    outbox, messenger, worker = make(db, clock)
    messenger.failures["a"] = [PermanentError("blocked", "Forbidden: bot was blocked by the user")]
    await queue(outbox, 1, Outgoing("a"), Outgoing("b"))
    await worker.deliver_due()
    assert await statuses(db) == [("a", "failed"), ("b", "sent")]


async def test_a_chat_out_of_reach_is_told_of_before_its_message_is_recorded_failed(
    db: Database, clock: ManualClock
) -> None:
    """The process dies while the failure is being told (here: the telling raises). The message must stay
    to be sent again, which fails again and tells again: recorded failed first, nobody would be told."""
    outbox, messenger, _ = make(db, clock)

    async def dies(*_: object) -> None:
        raise RuntimeError("the process dies here")

    worker = DeliveryWorker(db, {Platform.telegram: messenger}, clock, max_attempts=3, on_unreachable=dies)
    messenger.failures["a"] = [PermanentError("blocked", "Forbidden: bot was blocked by the user")]
    await queue(outbox, 1, Outgoing("a"))
    await worker.deliver_due()  # the lane logs the failure and ends
    assert await statuses(db) == [("a", "pending")]


async def test_a_migrated_chat_takes_its_queue_along(db: Database, clock: ManualClock) -> None:
    outbox, messenger, worker = make(db, clock)
    messenger.failures["a"] = [ChatMigrated(-1002)]
    await queue(outbox, -1001, Outgoing("a"), Outgoing("b"))
    await worker.deliver_due()
    await worker.deliver_due()
    assert messenger.sent == [(-1002, "a", None), (-1002, "b", None)]


async def test_sent_messages_are_linked_so_replies_and_edits_find_them(
    db: Database, clock: ManualClock
) -> None:
    outbox, messenger, worker = make(db, clock)
    async with outbox.unit() as u:
        ticket = await u.repo.insert_ticket(
            citizen_id=(await u.repo.ensure_citizen(Platform.telegram, 5, "", "ru", u.now)).id,
            category_id="potholes",
            agency_id="roads",
            status="new",
            text="hole",
            created_at=u.now,
            updated_at=u.now,
            due_at=u.now,
        )
    await queue(
        outbox,
        1,
        Outgoing("card", link_ticket_id=ticket.id, link_role="card"),
        Outgoing("reply", reply_to=Ref(ticket_id=ticket.id, role="card")),
        Outgoing("card v2", edit=Ref(ticket_id=ticket.id, role="card")),
    )
    await worker.deliver_due()
    card_id = 101
    assert messenger.sent[1] == (1, "reply", card_id)
    assert messenger.edits == [(1, card_id, "card v2")]
    async with outbox.read() as repo:
        assert await repo.linked_ticket(Platform.telegram, 1, card_id) == (ticket.id, "card")


async def test_an_edit_that_cannot_be_made_goes_as_a_new_message_where_the_message_asks(
    db: Database, clock: ManualClock
) -> None:
    outbox, messenger, worker = make(db, clock)
    messenger.failures["next step"] = [PermanentError("bad_request", "Bad Request: message can't be edited")]
    messenger.failures["card v2"] = [PermanentError("bad_request", "Bad Request: message to edit not found")]
    messenger.failures["to a blocker"] = [PermanentError("blocked", "Forbidden: bot was blocked by the user")]
    await queue(
        outbox,
        1,
        Outgoing("next step", edit=Ref(message_id=5), or_send=True),
        Outgoing("card v2", edit=Ref(message_id=6)),
        # Its message was never sent: nothing to edit, so the words go on their own.
        Outgoing("never sent", edit=Ref(ticket_id=1, role="prompt"), or_send=True),
    )
    await queue(outbox, 2, Outgoing("to a blocker", edit=Ref(message_id=7), or_send=True))
    assert await worker.deliver_due() == 4
    assert messenger.sent == [(1, "next step", None), (1, "never sent", None)]
    assert messenger.edits == []
    # A chat that blocked the bot takes no new message either.
    assert await statuses(db) == [
        ("next step", "sent"),
        ("card v2", "failed"),
        ("never sent", "sent"),
        ("to a blocker", "failed"),
    ]


class TwoPartMessenger(RecordingMessenger):
    """Sends every message as two calls, like a card with photos: the album, then its text."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        async def part(name: str) -> list[int]:
            queue = self.failures.get(name)
            if queue:
                raise queue.pop(0)
            self.calls.append(name)
            self.next_id += 1
            return [self.next_id]

        album = await progress.part("album", lambda: part(f"{message.text}/album"))
        text = await progress.part("text0", lambda: part(f"{message.text}/text"))
        return [*text, *album]


async def test_a_retry_sends_only_the_parts_that_did_not_go_even_from_a_new_worker(
    db: Database, clock: ManualClock
) -> None:
    messenger = TwoPartMessenger()
    messenger.failures["card/text"] = [TransientError("502")]
    await queue(Outbox(db, clock), 1, Outgoing("card"))
    await DeliveryWorker(db, {Platform.telegram: messenger}, clock).deliver_due()
    assert messenger.calls == ["card/album"]
    clock.advance(timedelta(minutes=10))
    # A restarted process knows only what the database knows.
    await DeliveryWorker(db, {Platform.telegram: messenger}, clock).deliver_due()
    assert messenger.calls == ["card/album", "card/text"]
    assert await statuses(db) == [("card", "sent")]
