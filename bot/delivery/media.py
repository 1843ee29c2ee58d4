"""Fetching a photo's or a document's bytes from the platform it lives on, to hand it to the other
platform."""

from __future__ import annotations

import io

import aiohttp
from aiogram import Bot

from bot.domain import Attachment, Platform
from bot.redaction import describe

from .base import PermanentError, TransientError

MAX_BYTES = 20 * 1024 * 1024  # Telegram's bot download limit


class MediaFetcher:
    def __init__(self, telegram: Bot | None = None) -> None:
        self.telegram = telegram
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, attachment: Attachment) -> bytes:
        if attachment.platform is Platform.telegram:
            if self.telegram is None:
                raise PermanentError("no_channel", "a Telegram file, but the Telegram channel is off")
            buffer = io.BytesIO()
            try:
                await self.telegram.download(attachment.file_id, destination=buffer)
            except Exception as error:  # aiogram raises several kinds; all mean "try again later"
                # Its text would quote the file's URL, and the bot's token is part of it.
                raise TransientError(f"Telegram file download failed: {describe(error)}") from None
            return buffer.getvalue()
        if not attachment.url:
            raise PermanentError("no_file", f"no URL for {attachment.file_id}")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            async with self._session.get(attachment.url) as response:
                if response.status >= 500:
                    raise TransientError(f"file download: HTTP {response.status}")
                if response.status >= 400:
                    raise PermanentError("no_file", f"file download: HTTP {response.status}")
                data = await _read_at_most(response.content, MAX_BYTES + 1)
        except aiohttp.ClientError as error:
            raise TransientError(f"file download failed: {error!r}") from None
        if len(data) > MAX_BYTES:
            raise PermanentError("too_big", "file larger than 20 MB")
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or its first `limit` bytes when it is longer. (`read(n)` gives what has arrived so far,
    at most n: one chunk of a larger file.)"""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
