"""Telegram long polling through the inbox: a batch is stored before the next getUpdates confirms it.

aiogram's own polling confirms an update as soon as it hands it to a task, so a crash would lose what
was in flight; here `Intake.accept` commits the batch first.

The inbox keeps each update as Telegram sent it, and aiogram's objects are built once, when the update
is handled: not also on arrival only to be turned back into JSON for storing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetUpdates
from aiogram.types import Update

from bot.clock import Clock
from bot.domain import Platform
from bot.intake import Handler, Intake, pause, until_stopped
from storage.db import Database

log = logging.getLogger(__name__)


class GetRawUpdates(GetUpdates):
    """getUpdates answered with the updates' JSON (as `dict`s) instead of aiogram's `Update`s."""

    __returning__ = list[dict[str, Any]]


def feeder(bot: Bot, dispatcher: Dispatcher) -> Handler:
    """Hands a stored Telegram update to the dispatcher, however it arrived."""

    async def feed(payload: dict[str, Any]) -> None:
        await dispatcher.feed_update(bot, Update.model_validate(payload, context={"bot": bot}))

    return feed


class DurablePolling:
    def __init__(
        self,
        bot: Bot,
        dispatcher: Dispatcher,
        db: Database,
        clock: Clock,
        *,
        timeout: int = 25,
        allowed_updates: list[str] | None = None,
    ) -> None:
        self.bot = bot
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.allowed_updates = allowed_updates
        self.intake = Intake(db, clock, Platform.telegram, feeder(bot, dispatcher))
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await self.intake.replay()
        offset: int | None = None
        failures = 0
        while not self._stopping.is_set():
            request = GetRawUpdates(offset=offset, timeout=self.timeout, allowed_updates=self.allowed_updates)
            try:
                updates: list[dict[str, Any]] | None = await until_stopped(self._stopping, self.bot(request))
            except (TelegramNetworkError, TelegramServerError) as error:
                failures += 1
                delay = min(2.0 ** min(failures, 5), 30.0)
                log.warning("getUpdates failed (%s); again in %.0fs", error.message, delay)
                await pause(self._stopping, delay)
                continue
            except TelegramRetryAfter as error:
                await pause(self._stopping, error.retry_after)
                continue
            if updates is None:
                break
            failures = 0
            if updates:
                await self.intake.accept([(str(update["update_id"]), update) for update in updates])
                offset = int(updates[-1]["update_id"]) + 1
        await self.intake.drain()

    def stop(self) -> None:
        self._stopping.set()
