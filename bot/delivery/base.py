"""What every platform's messenger does, and the ways a send can fail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.domain import Platform
from bot.messages import Outgoing


class DeliveryError(Exception):
    """A send that did not happen; the subclass says whether and when to try again."""


class RetryAfter(DeliveryError):
    """The platform asked us to wait (Telegram 429, VK "too many requests per second")."""

    def __init__(self, seconds: float, detail: str = "") -> None:
        super().__init__(detail or f"retry after {seconds}s")
        self.seconds = seconds


class TransientError(DeliveryError):
    """A network fault or a server error: worth trying again later."""


class PermanentError(DeliveryError):
    """Trying again cannot help: the user blocked the bot, the chat is gone, the request is wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class ChatMigrated(DeliveryError):
    """A Telegram group became a supergroup with a new id."""

    def __init__(self, new_chat_id: int) -> None:
        super().__init__(f"chat migrated to {new_chat_id}")
        self.new_chat_id = new_chat_id


class Progress:
    """The parts of one logical message that already went out, by name, with their message ids.

    A message can take several calls (an album, then the card text below it; a text split in three).
    Each part that succeeds is saved before the next is tried, so a retry after a failure or a crash
    sends only what is missing instead of repeating the album."""

    def __init__(
        self,
        done: dict[str, list[int]] | None = None,
        save: Callable[[dict[str, list[int]]], Awaitable[None]] | None = None,
    ) -> None:
        self.done: dict[str, list[int]] = dict(done or {})
        self._save = save
        self._saved = len(self.done)

    async def part(self, name: str, send: Callable[[], Awaitable[list[int]]]) -> list[int]:
        if name in self.done:
            return self.done[name]
        if self._save is not None and len(self.done) > self._saved:
            # What went so far is on record before the next call: a message of one part (most of
            # them) costs no write here, its row is simply marked sent.
            await self._save(dict(self.done))
            self._saved = len(self.done)
        ids = await send()
        self.done[name] = ids
        return ids


class Messenger(Protocol):
    platform: Platform

    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        """Send one logical message; returns the ids of what was sent, the main (text) message first.
        `nonce` is the same for every attempt at the same outbox row, for platforms that de-duplicate;
        each call goes through `progress`, so parts sent by an earlier attempt are not sent again."""
        ...

    async def edit(self, chat_id: int, message_id: int, message: Outgoing) -> None: ...
