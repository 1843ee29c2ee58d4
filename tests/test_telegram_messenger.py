"""The Telegram messenger's reading of failures that are not the Bot API's own answers."""

from __future__ import annotations

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.delivery.base import TransientError
from bot.delivery.telegram import TelegramMessenger
from bot.messages import Outgoing
from tests.conftest import TOKEN


async def test_a_proxy_error_page_is_a_transient_failure() -> None:
    async def bad_gateway(_: web.Request) -> web.Response:
        return web.Response(
            status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", bad_gateway)
    async with TestServer(app, host="127.0.0.1") as server:
        bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(str(server.make_url("")))))
        messenger = TelegramMessenger(bot, fetch=_no_fetch)
        try:
            with pytest.raises(TransientError, match="undecodable"):
                await messenger.send(1, Outgoing("hello"), None)
        finally:
            await bot.session.close()


async def _no_fetch(_: object) -> bytes:
    raise AssertionError("nothing to fetch")
