"""The Telegram messenger's reading of failures that are not the Bot API's own answers, and its session."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pydantic._internal._generics as pydantic_generics
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.methods import EditMessageReplyMarkup, SendMessage
from aiogram.types import Message
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.delivery.base import PermanentError, TransientError
from bot.delivery.telegram import TelegramMessenger, TelegramSession
from bot.domain import Attachment, MediaKind, Platform
from bot.messages import Button, Outgoing
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


MESSAGE = {"message_id": 1, "date": 0, "chat": {"id": 1, "type": "private"}, "text": "hi"}


async def _no_fetch(_: object) -> bytes:
    raise AssertionError("nothing to fetch")


@asynccontextmanager
async def messenger_on(
    api: Callable[[web.Request], Awaitable[web.Response]],
    fetch: Callable[[Attachment], Awaitable[bytes]] = _no_fetch,
) -> AsyncIterator[TelegramMessenger]:
    """The messenger, with its own session, on a Bot API that `api` answers."""
    app = web.Application()
    app.router.add_route("POST", "/bot{token}/{method}", api)
    async with TestServer(app, host="127.0.0.1") as server:
        session = TelegramSession(api=TelegramAPIServer.from_base(str(server.make_url(""))))
        try:
            yield TelegramMessenger(Bot(TOKEN, session=session), fetch=fetch)
        finally:
            await session.close()


async def test_the_session_builds_a_response_model_once_per_result_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiogram reads every answer as `Response[<result type>]`; pydantic's cache of such models lets the
    garbage collector take them, and building one again costs milliseconds."""
    built: list[str] = []
    original = pydantic_generics.create_generic_submodel

    def counted(name: str, *args: Any, **kwargs: Any) -> Any:
        built.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(pydantic_generics, "create_generic_submodel", counted)
    # As in a fresh process: whatever earlier tests built is forgotten.
    pydantic_generics._GENERIC_TYPES_CACHE.clear()
    session = TelegramSession()
    bot = Bot(TOKEN, session=session)
    try:
        for _ in range(3):
            session.check_response(
                bot, SendMessage(chat_id=1, text="hi"), 200, json.dumps({"ok": True, "result": MESSAGE})
            )
            session.check_response(
                bot,
                EditMessageReplyMarkup(chat_id=1, message_id=1),
                200,
                json.dumps({"ok": True, "result": True}),
            )
            gc.collect()
    finally:
        await session.close()
    assert sorted(built) == ["Response[Message]", "Response[Union[Message, bool]]"]


async def test_the_messenger_reads_only_the_ids_of_what_it_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sent message comes back whole; building aiogram's objects of it is left to callers that read
    them. Failures still go through aiogram's check, and calls made elsewhere get whole messages."""
    answers = {
        "sendMessage": (200, {"ok": True, "result": {**MESSAGE, "message_id": 41}}),
        "sendMediaGroup": (
            200,
            {"ok": True, "result": [{**MESSAGE, "message_id": 42}, {**MESSAGE, "message_id": 43}]},
        ),
        "editMessageText": (
            400,
            {"ok": False, "error_code": 400, "description": "Bad Request: message to edit not found"},
        ),
    }

    async def api(request: web.Request) -> web.Response:
        status, body = answers[request.match_info["method"]]
        return web.json_response(body, status=status)

    checked: list[str] = []
    aiogram_check = AiohttpSession.check_response

    def check(self: AiohttpSession, bot: Bot, method: Any, status_code: int, content: str) -> Any:
        checked.append(method.__api_method__)
        return aiogram_check(self, bot, method, status_code, content)

    monkeypatch.setattr(AiohttpSession, "check_response", check)
    async with messenger_on(api) as messenger:
        bot = messenger.bot
        assert await messenger.send(1, Outgoing("hello"), None) == [41]
        album = [Attachment(MediaKind.photo, Platform.telegram, f"photo-{n}") for n in range(2)]
        assert await messenger.send(1, Outgoing("", photos=album), None) == [42, 43]
        assert checked == []
        with pytest.raises(PermanentError, match="message to edit not found"):
            await messenger.edit(1, 41, Outgoing("again"))
        assert checked == ["editMessageText"]
        sent = await bot.send_message(1, "hello")
        assert isinstance(sent, Message) and sent.text == "hi" and sent.chat.id == 1


async def test_calls_without_files_go_as_json_and_uploads_as_multipart() -> None:
    """The Bot API takes a call's fields as a JSON object as it takes them as a form; the JSON is the
    cheaper to build. A file to upload still goes in a multipart form."""
    seen: list[tuple[str, str, Any]] = []

    async def api(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.content_type == "application/json":
            body: Any = await request.json()
        else:
            body = {k: v if isinstance(v, str) else v.filename for k, v in (await request.post()).items()}
        seen.append((method, request.content_type, body))
        return web.json_response({"ok": True, "result": {**MESSAGE, "message_id": 7}})

    async def photo_bytes(_: Attachment) -> bytes:
        return b"\xff\xd8 a photo"

    async with messenger_on(api, fetch=photo_bytes) as messenger:
        text = "Яма у школы № 5 & <b>глубокая</b> 100%"
        buttons = [[Button("Взять", "t:take:1:new")]]
        await messenger.send(-100, Outgoing(text, buttons=buttons), None)
        from_vk = Attachment(MediaKind.photo, Platform.vk, "photo1_2", url="https://vk.example/1.jpg")
        await messenger.send(-100, Outgoing("", photos=[from_vk]), None)

    (send_method, send_type, send), (photo_method, photo_type, photo) = seen
    assert (send_method, send_type) == ("sendMessage", "application/json")
    assert send["chat_id"] == -100 and send["text"] == text
    assert send["reply_markup"] == {"inline_keyboard": [[{"text": "Взять", "callback_data": "t:take:1:new"}]]}
    assert (photo_method, photo_type) == ("sendPhoto", "multipart/form-data")
    assert photo["chat_id"] == "-100" and photo["photo"].startswith("attach://")
