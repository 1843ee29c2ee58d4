"""Long polling that stores every update before Telegram is told it arrived.

aiogram's own polling confirms an update as soon as it hands it to a task, so a crash loses whatever
was in flight. Here each batch is written to the `inbox` table first; the next getUpdates call (which
confirms the batch) happens only after that commit, and an update leaves the inbox only once handled.
After a crash the inbox is handled again, and the outbox keys derived from each update keep the
second pass from sending anything twice.
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
from bot.delivery.outbox import Origin, current_origin
from bot.domain import Platform
from storage.db import Database
from storage.repository import Repository

log = logging.getLogger(__name__)


class DurablePolling:
    def __init__(
        self,
        bot: Bot,
        dispatcher: Dispatcher,
        db: Database,
        clock: Clock,
        *,
        timeout: int = 25,
        concurrency: int = 64,
        allowed_updates: list[str] | None = None,
    ) -> None:
        self.bot = bot
        self.dispatcher = dispatcher
        self.db = db
        self.clock = clock
        self.timeout = timeout
        self.allowed_updates = allowed_updates
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await self._replay_inbox()
        offset: int | None = None
        failures = 0
        while not self._stopping.is_set():
            request = GetUpdates(offset=offset, timeout=self.timeout, allowed_updates=self.allowed_updates)
            try:
                updates = await self._until_stopped(self.bot(request))
            except (TelegramNetworkError, TelegramServerError) as error:
                failures += 1
                delay = min(1.0 * 2 ** min(failures, 5), 30.0)
                log.warning("getUpdates failed (%s); again in %.0fs", error.message, delay)
                await self._pause(delay)
                continue
            except TelegramRetryAfter as error:
                await self._pause(error.retry_after)
                continue
            if updates is None:
                break
            failures = 0
            if not updates:
                continue
            stored = await self._store(updates)
            offset = updates[-1].update_id + 1
            for item_id, update in stored:
                self._spawn(item_id, update)
        await self.drain()

    def stop(self) -> None:
        self._stopping.set()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _until_stopped(self, request: Any) -> Any:
        """Await a request unless stop() is called first; None then."""
        task = asyncio.ensure_future(request)
        stopper = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task in done:
            return task.result()
        task.cancel()
        return None

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return

    async def _store(self, updates: list[Update]) -> list[tuple[int, Update]]:
        now = self.clock.now()
        async with self.db.transaction() as conn:
            repo = Repository(conn)
            for update in updates:
                payload = update.model_dump(mode="json", exclude_none=True, by_alias=True)
                await repo.store_inbox(Platform.telegram, str(update.update_id), payload, now)
            ids = await repo.inbox_ids(Platform.telegram, [str(u.update_id) for u in updates])
        return [(ids[str(u.update_id)], u) for u in updates if str(u.update_id) in ids]

    async def _replay_inbox(self) -> None:
        async with self.db.read() as conn:
            items = await Repository(conn).inbox_items(Platform.telegram, limit=100_000)
        if items:
            log.info("handling %d updates stored before the last stop", len(items))
        for item_id, _ in items:
            async with self.db.read() as conn:
                payload = await Repository(conn).inbox_payload(item_id)
            if payload is not None:
                self._spawn(item_id, Update.model_validate(payload, context={"bot": self.bot}))

    def _spawn(self, item_id: int, update: Update) -> None:
        task = asyncio.create_task(self._handle(item_id, update))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, item_id: int, update: Update) -> None:
        key = str(update.update_id)
        async with self._slots:
            async with self.db.read() as conn:
                seen = await Repository(conn).was_processed(Platform.telegram, key)
            if not seen:
                token = current_origin.set(Origin(f"tg:{key}"))
                try:
                    await self.dispatcher.feed_update(self.bot, update)
                except Exception:
                    # One bad update must not stop the others; it is logged and not retried forever.
                    log.exception("update %s failed", key)
                finally:
                    current_origin.reset(token)
            async with self.db.transaction() as conn:
                repo = Repository(conn)
                await repo.mark_processed(Platform.telegram, key, self.clock.now())
                await repo.drop_inbox(item_id)
