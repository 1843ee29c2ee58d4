"""The outbox worker: sends queued messages in order per chat, retrying what can be retried.

Each chat with messages due gets a lane, a task that sends them one after another; lanes run side by
side, so a busy agency group never holds up the answers to citizens, nor one slow chat the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from bot.clock import Clock
from bot.domain import Platform
from bot.messages import Outgoing
from bot.redaction import redact
from storage.db import Database
from storage.group_commit import GroupCommit
from storage.repository import EDIT_TARGET_NEVER_SENT, UNREACHABLE_REASONS, Repository

from .base import (
    ChatMigrated,
    DeliveryError,
    Messenger,
    PermanentError,
    Progress,
    RetryAfter,
    TransientError,
)
from .limits import RateLimiter, Rates, cost

log = logging.getLogger(__name__)

# A chat, as its messages are kept: the platform and the chat's id there.
Chat = tuple[Platform, int]

# The shortest sleep while the limiter holds a chat back: a window that is a hair from opening should
# not make the worker spin.
MIN_LIMIT_WAIT = 0.01


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        messengers: Mapping[Platform, Messenger],
        clock: Clock,
        *,
        max_attempts: int = 8,
        poll_seconds: float = 1.0,
        batch: int = 200,
        concurrency: int = 16,
        on_unreachable: Callable[[Platform, int, int | None, str], Awaitable[None]] | None = None,
        on_migrated: Callable[[Platform, int, int], Awaitable[None]] | None = None,
        backoff_base: float = 1.0,
        telegram_global_rate: int = 0,
        telegram_private_rate: int = 0,
        telegram_group_rate: int = 0,
        vk_rate: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Callable[[str, str], None] | None = None,
        limiter: RateLimiter | None = None,
        instance: str | None = None,
        claim_seconds: float = 60.0,
    ) -> None:
        # Several instances on one database: each delivers a chat only while it holds a claim on it, so
        # a chat's messages go out once and in order. None: this process is the only one delivering.
        self.instance = instance
        self.claim = timedelta(seconds=claim_seconds)
        self.on_unreachable = on_unreachable
        # Told of every failed attempt as (kind, reason); for the metrics.
        self.metrics = metrics
        self.on_migrated = on_migrated
        self.backoff_base = backoff_base
        # Shared with whoever else calls the platforms directly (the VK handlers), so all spend one budget.
        self.limiter = limiter or RateLimiter(
            Rates(
                telegram_global=telegram_global_rate,
                telegram_private=telegram_private_rate,
                telegram_group=telegram_group_rate,
                vk=vk_rate,
            ),
            monotonic,
        )
        # Seconds until the limiter lets the earliest held-back chat go, as found by `deliver_due`.
        self.limiter_wait: float | None = None
        self.db = db
        self.messengers = dict(messengers)
        self.clock = clock
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        self.batch = batch
        self._wakeup = asyncio.Event()
        # What the next wake-up looks at: the chats messages were just queued for, or (True) every chat,
        # through the database: after a pause, at start, when another instance may have queued some.
        self._hinted: set[Chat] = set()
        self._everywhere = True
        self._stopping = False
        # Sends under way at once, over all chats.
        self._slots = asyncio.Semaphore(concurrency)
        # The chats being delivered, each by one task (its lane) that sends its messages in order.
        self._lanes: dict[Chat, asyncio.Task[int]] = {}
        # Chats found due while their lane was going, and whether the last look through the database
        # may have left some out: when a lane ends, those are looked at again.
        self._missed: set[Chat] = set()
        self._more = False
        # Wakes the worker when the limiter lets a held-back chat go.
        self._timer: asyncio.TimerHandle | None = None
        self.commits = GroupCommit(db)

    def wake(self, chats: Iterable[Chat] | None = None) -> None:
        """Look for due messages: in `chats` (just queued there), or else in every chat."""
        if chats is None:
            self._everywhere = True
        else:
            self._hinted.update(chats)
        self._wakeup.set()

    def _count(self, kind: str, reason: str = "") -> None:
        if self.metrics is not None:
            self.metrics(kind, reason)

    def stop(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def run(self) -> None:
        try:
            await self.release_dead_neighbours()
        except Exception:
            log.warning(
                "could not look for claims of stopped instances; they lapse by themselves", exc_info=True
            )
        loop = asyncio.get_running_loop()
        # Every chat is looked at through the database at least every `poll_seconds`, busy or not: a
        # retry falls due, or another instance queued a message, with nothing to wake this one.
        look_at = loop.time()
        try:
            while not self._stopping:
                self._wakeup.clear()
                hinted, self._hinted = self._hinted, set()
                try:
                    if self._everywhere or loop.time() >= look_at:
                        self._everywhere = False
                        look_at = loop.time() + self.poll_seconds
                        self._missed.update(chat for chat in hinted if chat in self._lanes)
                        await self._start_lanes()
                    else:
                        self._start(hinted, queued=True)
                except Exception:
                    self._everywhere = True
                    log.exception("looking for due outbox messages failed; trying again shortly")
                if self._stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), max(look_at - loop.time(), 0.0))
        except asyncio.CancelledError:
            # Cancelled rather than stopped: the lanes go too, not left sending on their own.
            for lane in self._lanes.values():
                lane.cancel()
            await asyncio.gather(*self._lanes.values(), return_exceptions=True)
            raise
        # A send under way is recorded before the claims go, or the next start would send it again.
        await asyncio.gather(*self._lanes.values())
        try:
            await self.release()
        except Exception:
            log.warning("outbox claims not released; they lapse by themselves", exc_info=True)

    async def deliver_due(self) -> int:
        """Deliver every chat that has a message due until it has nothing due or must wait, chats side
        by side; returns how many messages went. `run` does the same without waiting for the slowest."""
        self.limiter_wait = None
        return sum(await asyncio.gather(*await self._start_lanes()))

    async def _start_lanes(self) -> list[asyncio.Task[int]]:
        """Start a lane for each chat with a message due that has none going, up to `batch` of them;
        returns those started."""
        # The chats with a lane may come first: room is left for as many that have none.
        limit = self.batch + len(self._lanes)
        async with self.db.read() as conn:
            due = await Repository(conn).due_outbox_chats(
                limit,
                list(self.messengers),  # a channel that is off keeps its messages, in order, for later
                self.clock.now(),
                instance=self.instance,
            )
        # Perhaps more: looked for again as soon as a lane ends.
        self._more = len(due) == limit
        return self._start(due)

    def _start(self, chats: Iterable[Chat], queued: bool = False) -> list[asyncio.Task[int]]:
        """Start a lane for each of `chats` that has none. `queued`: messages were just queued for
        them, and a chat whose lane is going is looked at again when it ends, for what came after the
        lane read its rows; a look through the database found what the lane is sending."""
        started = []
        # Sends the platforms take now: a lane is started only if its first send can go, else it would
        # read its chat only to be held back (a thousand citizens behind 30 messages a second).
        room: dict[Platform, int | None] = {}
        for chat in chats:
            platform, chat_id = chat
            if chat in self._lanes:
                if queued:
                    self._missed.add(chat)
                continue
            if platform not in self.messengers:
                continue
            if (wait := self.limiter.wait(platform, chat_id)) > 0:
                self._hold(wait)
                continue
            left = room[platform] if platform in room else self.limiter.room(platform)
            if left is not None:
                if left <= 0:
                    self._more = True  # looked at again when a lane ends, by then knowing its sends
                    continue
                left -= 1
            room[platform] = left
            lane = asyncio.create_task(self._lane(chat))
            self._lanes[chat] = lane
            started.append(lane)
        return started

    async def _lane(self, chat: Chat) -> int:
        """A chat's messages, one after another while they are due; returns how many went. Never raises:
        what went wrong is logged and the chat is tried again later."""
        sent = 0
        try:
            while not self._stopping:
                rows, stop_at = await self._rows(chat)
                went, finished = await self._deliver_rows(rows, stop_at)
                sent += went
                if not finished or len(rows) < self.batch:
                    break
        except Exception:
            log.exception("outbox delivery to %s chat %s failed", chat[0].value, chat[1])
        finally:
            del self._lanes[chat]
            # Messages queued for this chat while its lane was ending; chats there was no room for.
            if chat in self._missed:
                self._missed.discard(chat)
                self.wake([chat])
            if self._more:
                self._more = False
                self.wake()
        return sent

    async def _rows(self, chat: Chat) -> tuple[list[Any], datetime | None]:
        """The chat's pending rows, and the moment to stop sending them (None: no need to)."""
        platform, chat_id = chat
        if self.instance is None:
            async with self.db.read() as conn:
                return await Repository(conn).chat_outbox(platform, chat_id, self.batch), None
        now = self.clock.now()
        async with self.db.transaction() as conn:
            rows = await Repository(conn).claim_outbox_chat(
                platform, chat_id, self.instance, now, now + self.claim, self.batch
            )
        # Past this moment a claim may be about to lapse: stop and claim afresh rather than send what
        # another instance may be sending by then. No rows: another instance is delivering this chat.
        return rows or [], now + self.claim / 2

    async def _deliver_rows(self, rows: list[Any], stop_at: datetime | None) -> tuple[int, bool]:
        """Send rows in order; returns how many went and whether all of them did."""
        sent = 0
        for row in rows:
            now = self.clock.now()
            if row.next_attempt_at > now:
                return sent, False  # an earlier message waits, so everything after it waits too
            if self._stopping or (stop_at is not None and now >= stop_at):
                return sent, False
            async with self._slots:
                if not await self._deliver(row):
                    return sent, False
            sent += 1
        return sent, True

    async def release_dead_neighbours(self) -> None:
        """Let go at once of claims held by processes of this machine that are gone (the previous run of
        this very instance, most often), instead of waiting for them to lapse."""
        if self.instance is None:
            return
        host = self.instance.split(":")[0]
        async with self.db.read() as conn:
            claimants = await Repository(conn).outbox_claimants()
        for name in claimants:
            their_host, _, rest = name.partition(":")
            pid = rest.partition(":")[0]
            if name == self.instance or their_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            log.info("releasing the outbox claims of %s, which is no longer running", name)
            async with self.db.transaction() as conn:
                await Repository(conn).release_outbox_claims(name)

    async def release(self) -> None:
        """Let go of this instance's claims, so others need not wait for them to lapse."""
        if self.instance is not None:
            async with self.db.transaction() as conn:
                await Repository(conn).release_outbox_claims(self.instance)

    async def _deliver(self, row: Any) -> bool:
        platform = Platform(row.platform)
        message = Outgoing.from_json(row.payload)
        try:
            target, reply_to = await self._targets(platform, row.chat_id, message)
            if message.edit is not None and target is None:
                if not message.or_send:
                    await self._fail(row, EDIT_TARGET_NEVER_SENT)
                    return True
                message = message.as_new()
            try:
                ids = await self._put(row, message, target, reply_to)
            except PermanentError as error:
                if target is None or not message.or_send or error.reason in UNREACHABLE_REASONS:
                    raise
                # The message to edit is gone or can no longer be edited: the words go as a new one.
                log.info("outbox %s: edit refused (%s), sent as a new message", row.id, error)
                message, target = message.as_new(), None
                ids = await self._put(row, message, target, reply_to)
            if ids is None:
                return False
        except RetryAfter as error:
            self._count("retry_after")
            await self._retry(row, timedelta(seconds=error.seconds), str(error), count=False)
            return False
        except ChatMigrated as error:
            self._count("migrated")
            async with self.db.transaction() as conn:
                await Repository(conn).outbox_move_chat(platform, row.chat_id, error.new_chat_id)
            log.warning("chat %s migrated to %s; its queue follows", row.chat_id, error.new_chat_id)
            if self.on_migrated is not None:
                await self.on_migrated(platform, row.chat_id, error.new_chat_id)
            self.wake()
            return False
        except PermanentError as error:
            self._count("permanent", error.reason)
            if error.reason in UNREACHABLE_REASONS and self.on_unreachable is not None:
                # Before the row is recorded as failed: a crash between the two sends the row again,
                # which fails again and tells again (the telling is idempotent), where the other order
                # would leave a failed row whose chat nobody was told of.
                await self.on_unreachable(platform, row.chat_id, row.ticket_id, error.reason)
            await self._fail(row, f"{error.reason}: {error}")
            return True
        except (TransientError, DeliveryError) as error:
            self._count("transient")
            await self._backoff(row, str(error))
            return False
        except Exception as error:
            # A failure no messenger translated (an answer that is not JSON from a proxy, say) is
            # retried like a network fault, so it neither loops every poll nor blocks the chat forever.
            log.exception("outbox %s to %s: unexpected error", row.id, row.chat_id)
            self._count("unexpected")
            await self._backoff(row, repr(error))
            return False
        await self._sent(row, platform, message, ids)
        return True

    async def _put(
        self, row: Any, message: Outgoing, target: int | None, reply_to: int | None
    ) -> list[int] | None:
        """Send the message (or, given a target, edit that one) as the limits allow; returns the ids
        sent, or None if the limits hold the chat back, which is not a failed try: the row keeps its
        next_attempt_at and attempts as they are."""
        platform = Platform(row.platform)
        # This instance's windows, then those shared with the other instances when Redis is set.
        permit = await self.limiter.acquire_shared(platform, row.chat_id, cost(platform, message))
        if not permit.granted:
            self._hold(permit.wait)
            return None
        try:
            messenger = self.messengers[platform]
            if target is None:
                return await messenger.send(row.chat_id, message, reply_to, row.id, self._progress(row))
            await messenger.edit(row.chat_id, target, message)
            return []
        finally:
            permit.finish()

    def _progress(self, row: Any) -> Progress:
        async def save(done: dict[str, list[int]]) -> None:
            async with self.db.transaction() as conn:
                await Repository(conn).outbox_progress(row.id, done)

        return Progress(row.progress, save)

    def _hold(self, wait: float) -> None:
        """A chat must wait `wait` seconds for the limits: its lane ends, and the worker looks for due
        messages again when the first held-back chat may go."""
        if self.limiter_wait is None or wait < self.limiter_wait:
            self.limiter_wait = wait
        loop = asyncio.get_running_loop()
        at = loop.time() + max(wait, MIN_LIMIT_WAIT)
        if self._timer is None or at < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.wake()

    async def _targets(
        self, platform: Platform, chat_id: int, message: Outgoing
    ) -> tuple[int | None, int | None]:
        """The ids of the message to edit and of the one to reply to, where the message names them by
        their ticket rather than by id (known only once those were sent)."""
        edit, reply_to = message.edit, message.reply_to
        if (edit is None or edit.message_id is not None) and (
            reply_to is None or reply_to.message_id is not None
        ):
            return (None if edit is None else edit.message_id), (
                None if reply_to is None else reply_to.message_id
            )
        async with self.db.read() as conn:
            repo = Repository(conn)
            return (
                await self._resolve(repo, platform, chat_id, edit),
                await self._resolve(repo, platform, chat_id, reply_to),
            )

    @staticmethod
    async def _resolve(repo: Repository, platform: Platform, chat_id: int, ref: Any) -> int | None:
        if ref is None:
            return None
        if ref.message_id is not None:
            return int(ref.message_id)
        return await repo.latest_linked_message(ref.ticket_id, platform, chat_id, ref.role)

    async def _sent(self, row: Any, platform: Platform, message: Outgoing, ids: list[int]) -> None:
        """Record a sent row; returns once committed. Rows sent side by side in different chats share a
        transaction, while the next row in a chat still waits for this record: an edit always finds
        the message it edits."""
        now = self.clock.now()

        async def record(conn: AsyncConnection) -> None:
            repo = Repository(conn)
            await repo.outbox_sent(row.id, now)
            if message.link_ticket_id is not None:
                for index, message_id in enumerate(ids):
                    role = message.link_role if index == 0 else "media"
                    await repo.link_message(
                        message.link_ticket_id, platform, row.chat_id, message_id, "out", role, now
                    )

        await self.commits.write(record)

    async def _backoff(self, row: Any, error: str) -> None:
        if row.attempts + 1 >= self.max_attempts:
            await self._fail(row, f"gave up after {row.attempts + 1} attempts: {error}")
            return
        delay = min(self.backoff_base * 2.0**row.attempts, 300.0) * (0.5 + random.random())
        await self._retry(row, timedelta(seconds=delay), error)

    async def _retry(self, row: Any, delay: timedelta, error: str, *, count: bool = True) -> None:
        error = redact(error)  # the database, and so its backups, keep no token a failure quoted
        log.info("outbox %s to %s: %s; next try in %.1fs", row.id, row.chat_id, error, delay.total_seconds())
        async with self.db.transaction() as conn:
            await Repository(conn).outbox_retry(row.id, self.clock.now() + delay, error, count=count)

    async def _fail(self, row: Any, error: str) -> None:
        error = redact(error)
        log.warning("outbox %s to %s failed for good: %s", row.id, row.chat_id, error)
        async with self.db.transaction() as conn:
            await Repository(conn).outbox_failed(row.id, error)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
