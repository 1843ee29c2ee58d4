"""The inbox: every update is stored before the platform learns it arrived, then handled exactly once.

A poller hands each batch to `Intake.accept` and asks the platform for the next batch only after it
returns (that next request is what confirms the batch to Telegram; for VK the saved cursor plays that
part). An update leaves the inbox in the transaction that marks it handled: the first one that queues a
message (`Outbox.unit`, together with the change it makes), or one of its own once the handler is done.
After a crash the inbox is handled again, and outbox keys derived from each update keep that second
pass from sending anything twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.clock import Clock
from bot.delivery.outbox import AlreadyHandled, Origin, current_origin, record_handled
from bot.domain import Platform
from storage.db import Database
from storage.group_commit import GroupCommit
from storage.repository import Repository

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]
# Stored updates read back per query when the inbox is replayed.
REPLAY_CHUNK = 500


class Intake:
    def __init__(
        self, db: Database, clock: Clock, platform: Platform, handler: Handler, *, concurrency: int = 64
    ) -> None:
        self.db = db
        self.clock = clock
        self.platform = platform
        self.handler = handler
        self._slots = asyncio.Semaphore(concurrency)
        self.commits = GroupCommit(db)
        self._tasks: set[asyncio.Task[None]] = set()
        # Updates (by key) being handled now: after a restart the same update can come from the replay
        # and again from the platform's redelivery, and must be handled once. Not by inbox row: a row
        # leaves the inbox before its handler ends, and SQLite may give its id to the next row.
        self._in_flight: set[str] = set()
        # Told of every update handled (True) or whose handler raised (False); for the metrics.
        self.on_handled: Callable[[Platform, bool], None] | None = None

    async def accept(
        self, updates: Sequence[tuple[str, dict[str, Any]]], cursor: tuple[str, str] | None = None
    ) -> None:
        """Store a batch (and where the poll got to) in one transaction, then start handling it. An update
        handled before (the platform sent it again) leaves at once."""
        now = self.clock.now()
        updates = [(key, without_nul(payload)) for key, payload in updates]
        async with self.db.transaction() as conn:
            repo = Repository(conn)
            await repo.store_inbox(self.platform, updates, now)
            if cursor is not None:
                await repo.save_cursor(*cursor, now)
            ids = await self._unhandled(
                repo, await repo.inbox_ids(self.platform, [key for key, _ in updates])
            )
        for key, payload in updates:
            if key in ids:
                self._spawn(ids[key], key, payload)

    async def replay(self, received_before: datetime | None = None) -> int:
        """Handle what a previous run stored but did not finish; with `received_before`, only what has
        waited since then (left by an instance that died while others go on)."""
        async with self.db.read() as conn:
            items = await Repository(conn).inbox_items(
                self.platform, limit=100_000, received_before=received_before
            )
        items = [(item_id, key) for item_id, key in items if key not in self._in_flight]
        if not items:
            return 0
        async with self.db.transaction() as conn:
            ids = await self._unhandled(Repository(conn), {key: item_id for item_id, key in items})
        left = list(ids.items())
        for start in range(0, len(left), REPLAY_CHUNK):
            chunk = left[start : start + REPLAY_CHUNK]
            async with self.db.read() as conn:
                payloads = await Repository(conn).inbox_payloads([item_id for _, item_id in chunk])
            for key, item_id in chunk:
                if item_id in payloads:  # gone meanwhile: handled by whoever took it
                    self._spawn(item_id, key, payloads[item_id])
        if ids:
            # At start-up: what the last run left; later (the sweep): what another instance left.
            log.info("%s: handling %d updates stored but not handled", self.platform.value, len(ids))
        return len(ids)

    async def _unhandled(self, repo: Repository, ids: dict[str, int]) -> dict[str, int]:
        """Of these inbox rows (by update key), those not handled yet; the others leave the inbox."""
        for key in await repo.processed_among(self.platform, list(ids)):
            await repo.drop_inbox(ids.pop(key))
        return ids

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, item_id: int, key: str, payload: dict[str, Any]) -> None:
        if key in self._in_flight:
            return
        self._in_flight.add(key)
        task = asyncio.create_task(self._handle(item_id, key, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._in_flight.discard(key))

    async def _handle(self, item_id: int, key: str, payload: dict[str, Any]) -> None:
        async with self._slots:
            origin = Origin(self.platform, key, inbox_id=item_id)
            token = current_origin.set(origin)
            ok = again = False
            try:
                await self.handler(payload)
                ok = True
            except AlreadyHandled:
                ok = True
                log.info("%s update %s was handled elsewhere meanwhile", self.platform.value, key)
            except Exception as error:
                # The database failed, not the update: its change was rolled back, so it stays in
                # the inbox for the sweep (or the next start) to handle again. One bad update, though,
                # must not stop the others: it is logged and not retried forever.
                again = _passing(error)
                if again:
                    log.warning(
                        "%s update %s: the database failed (%s); it will be handled again",
                        self.platform.value,
                        key,
                        type(error).__name__,
                    )
                else:
                    log.exception("%s update %s failed", self.platform.value, key)
            finally:
                current_origin.reset(token)
            if self.on_handled is not None:
                self.on_handled(self.platform, ok)
            if again or origin.recorded or origin.taken:
                # Left to be handled again; marked handled and out of the inbox with the change it
                # made; or part of another update's handling (an album's), which marks it so.
                return
            now = self.clock.now()

            async def done(conn: AsyncConnection) -> None:
                await record_handled(Repository(conn), origin, now)

            # Updates finishing side by side leave the inbox in one transaction.
            await self.commits.write(done)


class Pushed:
    """A receiver the platform calls (a webhook, the VK Callback API): `handle` stores what arrives, and
    `run` handles what a previous run stored but did not finish, then waits to be stopped."""

    intake: Intake

    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await self.intake.replay()
        await self._stopping.wait()
        await self.intake.drain()

    def stop(self) -> None:
        self._stopping.set()


def _passing(error: Exception) -> bool:
    """A fault of the database that passes (a lock not had in time, a lost connection), as opposed to
    one the update causes every time (a constraint it breaks)."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


def without_nul(value: Any) -> Any:
    """The update with NUL characters taken out of its strings: no person means one, and PostgreSQL
    refuses them in text."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {k: without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


async def until_stopped(stopping: asyncio.Event, request: Any) -> Any:
    """Await a request unless `stopping` is set first; None then."""
    task = asyncio.ensure_future(request)
    stopper = asyncio.ensure_future(stopping.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return None


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return
