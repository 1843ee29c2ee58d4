"""Pacing sends to the platforms' published limits, so the worker waits before a platform says 429.

Telegram: about 30 messages a second in all, one a second per private chat, 20 a minute per group;
VK: about 20 API requests a second. Each limit is a sliding window ("at most N in any W seconds"),
the way the platforms count, rather than a token bucket, whose full burst followed by its steady
rate would put up to twice N into one window.

Time comes from an injected monotonic source, so tests move it by hand.

Several instances sending for one bot share their windows through Redis (see shared_limits.py): a
limiter given `shared` asks those too in `acquire_shared` and `slot`, after its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bot.domain import Platform
from bot.messages import Outgoing

from .shared_limits import SharedLimits, SharedWindow
from .telegram import in_caption, split_text
from .vk_text import html_to_text, split_plain

Monotonic = Callable[[], float]

TELEGRAM_ALBUM_LIMIT = 10
VK_ATTACHMENT_LIMIT = 10
# getMessagesUploadServer, the upload itself, saveMessagesPhoto.
VK_UPLOAD_REQUESTS = 3
# Idle chats' windows are dropped once this many are kept, so the limiter's memory follows the
# chats that are busy now, not every chat ever served.
SWEEP_AT = 1024


def telegram_cost(message: Outgoing) -> int:
    """How many messages `TelegramMessenger.send` (or `edit`) puts into the chat for this message."""
    if message.edit is not None:
        return 1
    texts = len(split_text(message.text))
    photos = min(len(message.photos), TELEGRAM_ALBUM_LIMIT)
    if not photos:
        return texts
    if in_caption(message):
        return photos  # the text rides on the photos as their caption
    return photos + texts


def vk_cost(message: Outgoing) -> int:
    """How many API requests `VkMessenger.send` (or `edit`) makes for this message."""
    if message.edit is not None:
        return 0 if message.buttons_only else 1
    uploads = sum(
        1
        for photo in message.photos[:VK_ATTACHMENT_LIMIT]
        if not (photo.platform is Platform.vk and photo.file_id.startswith("photo"))
    )
    return len(split_plain(html_to_text(message.text))) + VK_UPLOAD_REQUESTS * uploads


def cost(platform: Platform, message: Outgoing) -> int:
    return telegram_cost(message) if platform is Platform.telegram else vk_cost(message)


@dataclass(frozen=True, slots=True)
class Rates:
    """The limits to keep; 0 turns one off."""

    telegram_global: int = 0  # messages per second, all chats together
    telegram_private: int = 0  # messages per second in one private chat
    telegram_group: int = 0  # messages per minute in one group or supergroup
    vk: int = 0  # API requests per second


@dataclass(slots=True)
class _Send:
    at: float


class Window:
    """At most `limit` sends in any `seconds`-long stretch."""

    def __init__(self, limit: int, seconds: float) -> None:
        if limit < 1 or seconds <= 0:
            raise ValueError("a window needs a positive limit and length")
        self.limit = limit
        self.seconds = seconds
        self._sends: list[_Send] = []

    def wait(self, now: float, cost: int) -> float:
        """Seconds until `cost` more sends fit; 0.0 when they fit now."""
        live = self.prune(now)
        if not live:
            return 0.0
        # More than the whole window at once (a big album in a private chat) goes when the window is
        # empty; take() then spreads its sends over the following windows.
        excess = len(live) if cost > self.limit else len(live) + cost - self.limit
        if excess <= 0:
            return 0.0
        oldest = sorted(send.at for send in live)
        return max(oldest[excess - 1] + self.seconds - now, 0.0)

    def room(self, now: float) -> int:
        return max(self.limit - len(self.prune(now)), 0)

    def take(self, now: float, cost: int) -> list[_Send]:
        # Sends beyond one window's worth are dated into later windows, as if paced at the limit, so
        # the next message waits for every photo of an album, not just for the first `limit` of them.
        taken = [_Send(now + (index // self.limit) * self.seconds) for index in range(cost)]
        self._sends.extend(taken)
        return taken

    def forget(self, sends: list[_Send]) -> None:
        """Take back sends counted by `take` that did not happen."""
        gone = {id(send) for send in sends}
        self._sends = [send for send in self._sends if id(send) not in gone]

    def prune(self, now: float) -> list[_Send]:
        """Forget the sends that have left the window; returns those still in it."""
        self._sends = [send for send in self._sends if send.at > now - self.seconds]
        return self._sends


@dataclass(slots=True)
class Permit:
    """The limiter's answer: `granted`, or how many seconds to `wait` before asking again."""

    wait: float = 0.0
    _sends: list[_Send] = field(default_factory=list)
    _started: float = 0.0
    _now: Monotonic | None = None
    _windows: list[Window] = field(default_factory=list)
    # Tells the shared windows in Redis that the send is over.
    _shared_finish: Callable[[], None] | None = None

    @property
    def granted(self) -> bool:
        return self.wait <= 0.0

    def finish(self) -> None:
        """The send is over. The platform counted it at some moment between our request and its answer;
        dating it at the answer means our windows never close earlier than the platform's do."""
        if self._shared_finish is not None:
            self._shared_finish()
            self._shared_finish = None
        if self._now is None:
            return
        shift = self._now() - self._started
        if shift > 0:
            for send in self._sends:
                send.at += shift
        self._now = None

    def _cancel(self) -> None:
        """The sends were counted but will not happen now: take them back from the windows."""
        for window in self._windows:
            window.forget(self._sends)
        self._sends = []
        self._now = None


class RateLimiter:
    def __init__(
        self, rates: Rates, now: Monotonic = time.monotonic, shared: SharedLimits | None = None
    ) -> None:
        self.rates = rates
        self.now = now
        # The windows shared with the other instances, when there are any; None: this instance's only.
        self.shared = shared
        self._global: dict[Platform, Window] = {}
        if rates.telegram_global:
            self._global[Platform.telegram] = Window(rates.telegram_global, 1.0)
        if rates.vk:
            self._global[Platform.vk] = Window(rates.vk, 1.0)
        self._chats: dict[tuple[Platform, int], Window] = {}
        self._sweep_at = SWEEP_AT

    def acquire(self, platform: Platform, chat_id: int, cost: int) -> Permit:
        """Count `cost` sends to the chat now if every limit allows them; else say how long to wait."""
        if cost <= 0:
            return Permit()
        now = self.now()
        windows = [window for _, window in self._windows(platform, chat_id)]
        wait = max((window.wait(now, cost) for window in windows), default=0.0)
        if wait > 0:
            return Permit(wait)
        sends = [send for window in windows for send in window.take(now, cost)]
        self._sweep(now)
        return Permit(0.0, sends, now, self.now, windows)

    def wait(self, platform: Platform, chat_id: int, cost: int = 1) -> float:
        """Seconds until `cost` sends to the chat fit this instance's limits; 0.0 when they fit now.
        Counts nothing."""
        now = self.now()
        return max((window.wait(now, cost) for _, window in self._windows(platform, chat_id)), default=0.0)

    def room(self, platform: Platform) -> int | None:
        """How many sends the platform's window for all chats takes now; None when it has no limit."""
        window = self._global.get(platform)
        return None if window is None else window.room(self.now())

    async def acquire_shared(self, platform: Platform, chat_id: int, cost: int) -> Permit:
        """`acquire`, then the windows shared with the other instances (when configured): granted only
        when both allow the sends, and counted in neither when one of them does not. When the shared
        windows cannot be asked, this instance's own limits decide alone."""
        permit = self.acquire(platform, chat_id, cost)
        if self.shared is None or cost <= 0 or not permit.granted:
            return permit
        windows = [
            SharedWindow(name, window.limit, window.seconds)
            for name, window in self._windows(platform, chat_id)
        ]
        if not windows:
            return permit
        answer = await self.shared.acquire(windows, cost)
        if answer is None:
            return permit
        if not answer.granted:
            permit._cancel()
            return Permit(answer.wait)
        permit._shared_finish = answer.finish
        return permit

    @asynccontextmanager
    async def slot(self, platform: Platform, chat_id: int = 0, cost: int = 1) -> AsyncIterator[None]:
        """Wait until a call fits the limits, then count it: for requests made outside the outbox (a
        button's answer, a profile lookup), which spend the same platform budget as its sends."""
        # The wait is known from the windows; nothing else would signal that a slot opened.
        while not (permit := await self.acquire_shared(platform, chat_id, cost)).granted:  # noqa: ASYNC110
            await asyncio.sleep(permit.wait)
        try:
            yield
        finally:
            permit.finish()

    def _windows(self, platform: Platform, chat_id: int) -> Iterable[tuple[str, Window]]:
        """The windows a send to the chat falls into, each with the name the instances share it by."""
        if platform in self._global:
            yield f"{platform.value}:global", self._global[platform]
        chat = self._chat_window(platform, chat_id)
        if chat is not None:
            yield f"{platform.value}:chat:{chat_id}", chat

    def _chat_window(self, platform: Platform, chat_id: int) -> Window | None:
        if platform is not Platform.telegram:
            return None
        key = (platform, chat_id)
        window = self._chats.get(key)
        if window is None:
            # Private chats have positive ids, groups and supergroups negative ones.
            if chat_id > 0 and self.rates.telegram_private:
                window = Window(self.rates.telegram_private, 1.0)
            elif chat_id < 0 and self.rates.telegram_group:
                window = Window(self.rates.telegram_group, 60.0)
            else:
                return None
            self._chats[key] = window
        return window

    def _sweep(self, now: float) -> None:
        if len(self._chats) <= self._sweep_at:
            return
        for key, window in list(self._chats.items()):
            if not window.prune(now):
                del self._chats[key]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._chats))
