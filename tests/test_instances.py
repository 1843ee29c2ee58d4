"""Several instances on one database: a chat's queue is delivered by one instance at a time, and an
update handled by two instances (a replay racing the platform's redelivery, a sweep racing a slow
handler) changes things once."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from bot.clock import ManualClock
from bot.delivery.base import RetryAfter
from bot.delivery.outbox import Outbox
from bot.delivery.worker import DeliveryWorker
from bot.domain import Platform
from bot.intake import Intake
from bot.messages import Outgoing
from storage.db import Database
from storage.repository import Repository
from storage.schema import cursors, inbox, outbox
from tests.test_delivery_worker import RecordingMessenger, queue

CLAIM = 60.0


def instance(db: Database, clock: ManualClock, name: str) -> tuple[RecordingMessenger, DeliveryWorker]:
    messenger = RecordingMessenger()
    worker = DeliveryWorker(
        db, {Platform.telegram: messenger}, clock, instance=name, claim_seconds=CLAIM, max_attempts=5
    )
    return messenger, worker


async def test_a_chat_is_delivered_by_one_instance_until_its_claim_lapses(
    db: Database, clock: ManualClock
) -> None:
    first, a = instance(db, clock, "a")
    second, b = instance(db, clock, "b")
    first.failures["2"] = [RetryAfter(1)]
    await queue(Outbox(db, clock), 1, Outgoing("1"), Outgoing("2"), Outgoing("3"))
    await queue(Outbox(db, clock), 2, Outgoing("x"))
    await a.deliver_due()  # "a" claims chat 1, sends "1", is told to wait before "2"
    clock.advance(timedelta(seconds=2))
    await b.deliver_due()
    assert [text for _, text, _ in second.sent] == [], "chat 1 is a's while a's claim holds"
    assert [text for _, text, _ in first.sent] == ["1", "x"]

    clock.advance(timedelta(seconds=CLAIM))  # "a" went silent: its claim lapses
    await b.deliver_due()
    assert [text for _, text, _ in second.sent] == ["2", "3"]


async def test_an_instance_that_stops_lets_go_of_its_chats_at_once(db: Database, clock: ManualClock) -> None:
    first, a = instance(db, clock, "a")
    second, b = instance(db, clock, "b")
    first.failures["2"] = [RetryAfter(1)]
    await queue(Outbox(db, clock), 1, Outgoing("1"), Outgoing("2"))
    await a.deliver_due()
    await a.release()
    clock.advance(timedelta(seconds=2))
    await b.deliver_due()
    assert [text for _, text, _ in second.sent] == ["2"]


async def test_two_instances_delivering_side_by_side_send_each_message_once_in_order(
    db: Database, clock: ManualClock
) -> None:
    first, a = instance(db, clock, "a")
    second, b = instance(db, clock, "b")
    box = Outbox(db, clock)
    for chat in range(1, 9):
        await queue(box, chat, *(Outgoing(f"{chat}:{n}") for n in range(5)))
    for _ in range(4):
        await asyncio.gather(a.deliver_due(), b.deliver_due())
        clock.advance(timedelta(seconds=CLAIM))
    sent = [text for _, text, _ in first.sent + second.sent]
    assert sorted(sent) == sorted(f"{chat}:{n}" for chat in range(1, 9) for n in range(5))
    for messenger in (first, second):
        for chat in range(1, 9):
            mine = [text for to, text, _ in messenger.sent if to == chat]
            assert mine == sorted(mine), "a chat's messages keep their order"
    async with db.read() as conn:
        statuses = set(await conn.scalars(sa.select(outbox.c.status)))
    assert statuses == {"sent"}


async def test_an_update_handled_twice_at_once_changes_things_once(db: Database, clock: ManualClock) -> None:
    box = Outbox(db, clock)
    both_started = asyncio.Barrier(2)

    async def handler(payload: dict[str, Any]) -> None:
        # Both instances have checked that the update is not handled yet before either commits.
        await both_started.wait()
        async with box.unit() as u:
            await u.repo.save_cursor(f"effect:{payload['by']}", "done", u.now)
            await u.send(Platform.telegram, 1, Outgoing("answer"))

    one = Intake(db, clock, Platform.telegram, handler)
    other = Intake(db, clock, Platform.telegram, handler)
    async with db.transaction() as conn:
        await Repository(conn).store_inbox(Platform.telegram, [("42", {"by": "x"})], clock.now())
    await one.accept([("42", {"by": "one"})])
    await other.accept([("42", {"by": "other"})])
    await asyncio.wait_for(asyncio.gather(one.drain(), other.drain()), 10)
    async with db.read() as conn:
        effects = list(await conn.scalars(sa.select(cursors.c.name).where(cursors.c.name.like("effect:%"))))
        answers = await conn.scalar(sa.select(sa.func.count()).select_from(outbox))
    assert len(effects) == 1 and answers == 1


async def test_an_update_the_platform_sends_again_after_it_was_handled_is_dropped(
    db: Database, clock: ManualClock
) -> None:
    box = Outbox(db, clock)
    handled: list[int] = []

    async def handler(payload: dict[str, Any]) -> None:
        handled.append(payload["n"])
        async with box.unit() as u:
            await u.send(Platform.telegram, 1, Outgoing("answer"))

    intake = Intake(db, clock, Platform.telegram, handler)
    await intake.accept([("9", {"n": 1})])
    await asyncio.wait_for(intake.drain(), 10)
    # Sent again (the confirmation was lost), and left in the inbox by a run that stopped in between.
    await intake.accept([("9", {"n": 2})])
    await asyncio.wait_for(intake.drain(), 10)
    async with db.transaction() as conn:
        await Repository(conn).store_inbox(Platform.telegram, [("9", {"n": 3})], clock.now())
    assert await intake.replay() == 0
    assert handled == [1]
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(inbox)) == 0
        assert await conn.scalar(sa.select(sa.func.count()).select_from(outbox)) == 1


async def test_an_update_is_handled_while_the_one_before_is_still_finishing(
    db: Database, clock: ManualClock
) -> None:
    """The first update leaves the inbox with its answer but its handler goes on; the next row may get
    the same id from SQLite, and is still handled."""
    box = Outbox(db, clock)
    finish = asyncio.Event()
    answered = {1: asyncio.Event(), 2: asyncio.Event()}

    async def handler(payload: dict[str, Any]) -> None:
        async with box.unit() as u:
            await u.send(Platform.telegram, 1, Outgoing(f"answer {payload['n']}"))
        answered[payload["n"]].set()
        if payload["n"] == 1:
            await finish.wait()

    intake = Intake(db, clock, Platform.telegram, handler)
    await intake.accept([("1", {"n": 1})])
    await asyncio.wait_for(answered[1].wait(), 10)
    await intake.accept([("2", {"n": 2})])
    await asyncio.wait_for(answered[2].wait(), 10)
    finish.set()
    await asyncio.wait_for(intake.drain(), 10)


async def test_a_sweep_handles_what_a_dead_instance_left_only_once_it_is_old(
    db: Database, clock: ManualClock
) -> None:
    handled: list[str] = []

    async def handler(payload: dict[str, Any]) -> None:
        handled.append(payload["text"])

    async with db.transaction() as conn:
        await Repository(conn).store_inbox(Platform.telegram, [("7", {"text": "left behind"})], clock.now())
    survivor = Intake(db, clock, Platform.telegram, handler)
    assert await survivor.replay(received_before=clock.now() - timedelta(seconds=60)) == 0
    clock.advance(timedelta(seconds=61))
    assert await survivor.replay(received_before=clock.now() - timedelta(seconds=60)) == 1
    await asyncio.wait_for(survivor.drain(), 10)
    assert handled == ["left behind"]


async def test_a_restarted_instance_takes_back_its_predecessors_chats_at_once(
    db: Database, clock: ManualClock
) -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # a process of this machine that ran and is no more
    host = socket.gethostname()
    first, a = instance(db, clock, f"{host}:{gone.pid}:aaaaaa")
    first.failures["2"] = [RetryAfter(1)]
    await queue(Outbox(db, clock), 1, Outgoing("1"), Outgoing("2"))
    await a.deliver_due()  # the process dies here, holding chat 1
    clock.advance(timedelta(seconds=2))
    second, b = instance(db, clock, f"{host}:{os.getpid()}:bbbbbb")
    await b.release_dead_neighbours()
    await b.deliver_due()
    assert [text for _, text, _ in second.sent] == ["2"]


async def test_nul_characters_never_reach_the_handler_or_the_database(
    db: Database, clock: ManualClock
) -> None:
    box = Outbox(db, clock)
    seen: list[str] = []

    async def handler(payload: dict[str, Any]) -> None:
        seen.append(payload["message"]["text"])
        async with box.unit() as u:
            await u.repo.save_cursor("report", payload["message"]["text"], u.now)
            await u.send(Platform.telegram, 1, Outgoing(payload["message"]["text"]))

    intake = Intake(db, clock, Platform.telegram, handler)
    await intake.accept([("1", {"message": {"text": "Яма\x00 у дома", "entities": [{"type": "bold\x00"}]}})])
    await asyncio.wait_for(intake.drain(), 10)
    async with db.read() as conn:
        stored = await Repository(conn).cursor("report")
    assert seen == ["Яма у дома"] and stored == "Яма у дома"


async def test_an_update_the_database_failed_stays_to_be_handled_again(
    db: Database, clock: ManualClock
) -> None:
    """A lock not had in time, a lost connection: the change was rolled back, and the update is not
    marked handled but left for the sweep. An update that breaks a rule every time is not retried."""
    box = Outbox(db, clock)
    failures = {
        "1": [OperationalError("INSERT ...", {}, Exception("database is locked"))],
        "2": [ValueError("bad")],
    }
    handled: list[str] = []

    async def handler(payload: dict[str, Any]) -> None:
        key = payload["key"]
        if failures[key]:
            raise failures[key].pop(0)
        async with box.unit() as u:
            await u.send(Platform.telegram, 1, Outgoing(f"answer {key}"))
        handled.append(key)

    intake = Intake(db, clock, Platform.telegram, handler)
    await intake.accept([("1", {"key": "1"}), ("2", {"key": "2"})])
    await asyncio.wait_for(intake.drain(), 10)
    async with db.read() as conn:
        left = set(await conn.scalars(sa.select(inbox.c.key)))
    assert left == {"1"}, "the update the database failed stays; the bad one is done with"
    clock.advance(timedelta(minutes=2))
    assert await intake.replay(received_before=clock.now() - timedelta(minutes=1)) == 1
    await asyncio.wait_for(intake.drain(), 10)
    assert handled == ["1"]
