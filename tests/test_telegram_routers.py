"""How the Telegram routers check updates: on the event loop, with no thread hop per update."""

from __future__ import annotations

from datetime import UTC, datetime

from aiogram import F
from aiogram.dispatcher.event.handler import FilterObject
from aiogram.types import Chat, Message

from bot.chats import ChatDirectory
from bot.config import parse_routing
from handlers.telegram import get_routers
from handlers.telegram.common import Where
from tests.conftest import TEST_ROUTING


def test_every_filter_runs_on_the_event_loop() -> None:
    """aiogram hands a filter that is a plain callable (what `F` resolves to) to a worker thread on each
    check; every filter of the bot's routers is a coroutine instead."""
    routing = parse_routing(TEST_ROUTING)
    in_threads = [
        (router.name, event, filter_.callback)
        for router in get_routers(routing, 0.5, ChatDirectory(routing))
        for event, observer in router.observers.items()
        for filter_ in [
            *(observer._handler.filters or []),
            *(f for handler in observer.handlers for f in handler.filters or []),
        ]
        if not filter_.awaitable
    ]
    assert in_threads == []
    assert not FilterObject(F.chat.type == "private").awaitable  # what the check above would catch


async def test_a_magic_filter_on_the_loop_answers_as_it_would_in_a_thread() -> None:
    private = Chat(id=1, type="private")
    command = Message(message_id=1, date=datetime.now(UTC), chat=private, text="/help")
    text = Message(message_id=2, date=datetime.now(UTC), chat=private, text="help")
    starts_with_slash = Where(F.text.startswith("/"))
    assert await starts_with_slash(command) is True
    assert await starts_with_slash(text) is False
