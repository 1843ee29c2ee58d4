"""The durable outbox: messages are written in the same transaction as the change that owes them.

`Outbox.unit()` is the one way the service and the dialog change data and queue messages together;
the delivery worker (`bot.delivery.worker`) sends what was queued.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime

from bot.clock import Clock
from bot.domain import Platform
from bot.messages import Outgoing
from storage.db import Database
from storage.repository import Repository


@dataclass
class Origin:
    """The update being handled: messages it causes get keys derived from it, so handling the same
    update again after a crash queues nothing new; and the first transaction that queues a message
    also records the update as handled, so its change is never applied twice."""

    platform: Platform
    key: str
    # Its row in the inbox, which leaves with the "handled" mark.
    inbox_id: int | None = None
    counter: itertools.count[int] = field(default_factory=itertools.count)
    recorded: bool = False
    # Updates handled as part of this one (the other parts of an album): marked handled in its
    # transaction, so a crash before it leaves them all in the inbox, to be handled together again.
    joined: list[Origin] = field(default_factory=list)
    # This update was taken into another's handling (`joined` there): that one marks it handled.
    taken: bool = False

    def join(self, other: Origin) -> None:
        other.taken = True
        self.joined.append(other)

    def next_key(self) -> str:
        return f"{self.platform.value}:{self.key}:{next(self.counter)}"


current_origin: ContextVar[Origin | None] = ContextVar("current_origin", default=None)


async def record_handled(
    repo: Repository, origin: Origin, now: datetime, *, first_marked: bool = False
) -> None:
    """Mark the update and those joined to it handled, and take them out of the inbox (`first_marked`:
    the update itself is marked already)."""
    for handled in [origin, *origin.joined]:
        if handled.recorded:
            continue
        if handled is not origin or not first_marked:
            await repo.mark_processed(handled.platform, handled.key, now)
        if handled.inbox_id is not None:
            await repo.drop_inbox(handled.inbox_id)
        handled.recorded = True


class AlreadyHandled(Exception):
    """The update was handled meanwhile (by another instance, or an earlier run's replay): this
    handling's transaction is rolled back, so its effect happens once."""


@dataclass
class Unit:
    repo: Repository
    now: datetime
    # The chats messages were queued for.
    queued: set[tuple[Platform, int]] = field(default_factory=set)
    # Messages asked for, new or not: a replay's are ignored as already queued, yet its change must still
    # be checked against the update's "handled" mark.
    asked: int = 0

    async def send(
        self,
        platform: Platform,
        chat_id: int,
        message: Outgoing,
        *,
        ticket_id: int | None = None,
        dedupe_key: str | None = None,
    ) -> None:
        if dedupe_key is None and (origin := current_origin.get()) is not None:
            dedupe_key = origin.next_key()
        self.asked += 1
        kind = "edit" if message.edit is not None else "send"
        if await self.repo.enqueue(
            platform=platform,
            chat_id=chat_id,
            kind=kind,
            payload=message.to_json(),
            dedupe_key=dedupe_key,
            ticket_id=ticket_id,
            now=self.now,
        ):
            self.queued.add((platform, chat_id))


class Outbox:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self._listeners: list[Callable[[set[tuple[Platform, int]]], None]] = []

    def subscribe(self, wake: Callable[[set[tuple[Platform, int]]], None]) -> None:
        """`wake` is told, after each commit that queued messages, the chats they were queued for."""
        self._listeners.append(wake)

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[Unit]:
        async with self.db.transaction() as conn:
            unit = Unit(Repository(conn), self.clock.now())
            yield unit
            origin = current_origin.get()
            if unit.asked and origin is not None and not origin.recorded:
                # The update's effect and its "handled" mark commit together: a replay after a crash
                # finds it handled and changes nothing. (Writes that queue nothing, like registering a
                # new citizen, are idempotent by themselves.)
                if not await unit.repo.mark_processed(origin.platform, origin.key, unit.now):
                    raise AlreadyHandled(origin.key)
                await record_handled(unit.repo, origin, unit.now, first_marked=True)
        if unit.queued:
            for wake in self._listeners:
                wake(unit.queued)

    @asynccontextmanager
    async def read(self, *, offload: bool = False) -> AsyncIterator[Repository]:
        async with self.db.read(offload=offload) as conn:
            yield Repository(conn)
