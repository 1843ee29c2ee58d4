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

    def next_key(self) -> str:
        return f"{self.platform.value}:{self.key}:{next(self.counter)}"


current_origin: ContextVar[Origin | None] = ContextVar("current_origin", default=None)


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
                if origin.inbox_id is not None:
                    await unit.repo.drop_inbox(origin.inbox_id)
                origin.recorded = True
        if unit.queued:
            for wake in self._listeners:
                wake(unit.queued)

    @asynccontextmanager
    async def read(self, *, offload: bool = False) -> AsyncIterator[Repository]:
        async with self.db.read(offload=offload) as conn:
            yield Repository(conn)
