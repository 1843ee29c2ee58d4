"""Middlewares for the Telegram routers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import Message, TelegramObject

from bot.delivery.outbox import Origin, current_origin


class AlbumMiddleware(BaseMiddleware):
    """Gathers the N updates of one album into a single handler call with `album=[...]`.

    Telegram sends no "album finished" signal, so the first message of a group waits until no new
    part has arrived for `wait` seconds; the other parts only join the buffer, and their updates join
    the first one's: marked handled with its change, so a crash meanwhile leaves every part in the inbox
    and the album is gathered again after the restart.
    """

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._albums: dict[tuple[int, str], list[Message]] = {}
        self._arrived: dict[tuple[int, str], asyncio.Event] = {}
        self._origins: dict[tuple[int, str], Origin | None] = {}

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Message) or not event.media_group_id:
            return await handler(event, data)
        key = (event.chat.id, event.media_group_id)
        if key in self._albums:
            if any(part.message_id == event.message_id for part in self._albums[key]):
                return None  # the same part again (stored and handed out twice)
            self._albums[key].append(event)
            first, this = self._origins.get(key), current_origin.get()
            if first is not None and this is not None:
                first.join(this)
            self._arrived[key].set()
            return None
        self._albums[key] = [event]
        self._origins[key] = current_origin.get()
        arrived = self._arrived[key] = asyncio.Event()
        try:
            while True:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), self.wait)
                except TimeoutError:
                    break  # quiet for `wait` seconds: the album is complete
        finally:
            album = sorted(self._albums.pop(key), key=lambda m: m.message_id)
            self._arrived.pop(key, None)
            self._origins.pop(key, None)
        data["album"] = album
        return await handler(album[0], data)
