"""The end-to-end world: the fake Telegram server, the bot started as production starts it, and
people who act in it (a citizen in a private chat, staff in agency groups)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from bot.app import App
from bot.clock import Clock, SystemClock
from bot.config import Routing
from bot.domain import ALLOWED_ACTIONS, Platform, TicketStatus
from bot.i18n import Translator
from storage.schema import inbox, outbox, tickets
from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TOKEN, WASTE_CHAT, make_settings
from tests.fakes.telegram import FakeTelegram

Message = dict[str, Any]
ROADS_STAFF = 501
WASTE_STAFF = 502
COORDINATOR = 503
TIMEOUT = 10.0


def plain(text: str) -> str:
    """A rendered HTML text as Telegram shows it (tags gone, entities decoded)."""
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")


@dataclass
class World:
    tg: FakeTelegram
    app: App
    routing: Routing
    t: Translator

    # -- citizens

    async def bot_says(
        self, chat_id: int, match: Callable[[Message], bool], timeout: float = TIMEOUT
    ) -> Message:
        return await self.tg.wait_for_message(chat_id, match, timeout=timeout)

    async def says_key(self, chat_id: int, locale: str, key: str, **params: object) -> Message:
        """Wait for a message that starts with the first line of the rendered text of `key`."""
        expected = plain(self.t.render(locale, key, **params)).splitlines()[0].strip()
        return await self.bot_says(chat_id, lambda m: _text(m).startswith(expected))

    async def last_buttons_message(self, chat_id: int, prefix: str, *, only: bool = False) -> Message:
        """The newest keyboard in the chat once it has a button starting with `prefix` (with `only`:
        nothing but such buttons)."""

        def wanted(message: Message) -> bool:
            data = self.tg.button_data(message)
            matching = [d for d in data if d.startswith(prefix)]
            return (
                bool(matching) and (not only or len(matching) == len(data)) and _fresh(self, chat_id, message)
            )

        return await self.bot_says(chat_id, wanted)

    async def file_report(
        self,
        user_id: int,
        category: str = "potholes",
        text: str = "Яма на Ленина, 5",
        photos: int = 0,
        address: str | None = "Ленина, 5",
    ) -> int:
        """A citizen files a report through the menu; returns the ticket number."""
        before = await self.ticket_count()
        await self.tg.send_command(user_id, "/new")
        categories = await self.last_buttons_message(user_id, "c:")
        await self.tg.press(user_id, categories, f"c:{category}")
        await self.last_buttons_message(user_id, "d:cancel", only=True)
        if photos == 1:
            await self.tg.send_photo(user_id, caption=text)
        elif photos > 1:
            await self.tg.send_album(user_id, photos, caption=text)
        else:
            await self.tg.send_text(user_id, text)
        skip = await self.last_buttons_message(user_id, "d:skip")
        if address is None:
            await self.tg.press(user_id, skip, "d:skip")
        else:
            await self.tg.send_text(user_id, address)
        summary = await self.last_buttons_message(user_id, "d:confirm")
        tagged = len(self._tagged(user_id))
        await self.tg.press(user_id, summary, "d:confirm")
        await self.tg.wait_until(lambda: len(self._tagged(user_id)) > tagged, timeout=TIMEOUT)
        found = re.search(r"#T(\d+)", _text(self._tagged(user_id)[-1]))
        assert found is not None
        assert await self.ticket_count() == before + 1
        return int(found.group(1))

    def _tagged(self, chat_id: int) -> list[Message]:
        return [m for m in self.tg.bot_messages(chat_id) if "#T" in _text(m)]

    # -- agency chats

    async def card(self, chat_id: int, number: int) -> Message:
        """The ticket's card in a chat: the message with its tag and the card's buttons (or its header),
        once the bot has recorded it, so that a reply to it reaches the ticket."""
        tag = f"#T{number}"
        card = await self.bot_says(
            chat_id, lambda m: _text(m).startswith(tag) and ("reply_markup" in m or "\n" in _text(m))
        )
        await self.recorded(chat_id, card["message_id"])
        return card

    async def recorded(self, chat_id: int, message_id: int, platform: Platform = Platform.telegram) -> None:
        """Wait until the bot has recorded which ticket its message belongs to. It learns the message id
        from the platform's answer and records it a moment later: a person is never that quick to
        reply, the tests are."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            async with self.app.outbox.read() as repo:
                if await repo.linked_ticket(platform, chat_id, message_id) is not None:
                    return
            assert time.monotonic() < deadline, f"message {message_id} in {chat_id} was never recorded"
            await asyncio.sleep(0.01)

    def card_now(self, chat_id: int, number: int) -> Message:
        tag = f"#T{number}"
        cards = [m for m in self.tg.bot_messages(chat_id) if _text(m).startswith(tag) and "\n" in _text(m)]
        assert cards, f"no card of {tag} in {chat_id}"
        return cards[0]

    async def card_shows(self, chat_id: int, number: int, status: TicketStatus) -> Message:
        """Wait until the card names `status` and carries the buttons that status allows (or none)."""
        label = plain(self.t.get(self.routing.default_locale, f"status.{status.value}"))

        def shows() -> bool:
            card = self.card_now(chat_id, number)
            return label in _text(card) and _card_status(self.tg, card) in (status.value, "final")

        await self.tg.wait_until(shows, timeout=TIMEOUT)
        card = self.card_now(chat_id, number)
        if ALLOWED_ACTIONS[status]:
            assert _card_status(self.tg, card) == status.value
        return card

    async def status_of(self, number: int) -> TicketStatus:
        async with self.app.db.read() as conn:
            value = await conn.scalar(sa.select(tickets.c.status).where(tickets.c.number == number))
        return TicketStatus(value)

    async def agency_of(self, number: int) -> str:
        async with self.app.db.read() as conn:
            value = await conn.scalar(sa.select(tickets.c.agency_id).where(tickets.c.number == number))
        return str(value)

    async def handled_all(self, timeout: float = 30.0) -> list[Any]:
        """Every outbox row, once the bot took every update the fake holds, handled each and sent what
        it queued: after this, silence is the bot's answer."""
        await self.tg.wait_until(lambda: self.tg.pending_updates == 0, timeout)
        deadline = time.monotonic() + timeout
        while True:
            async with self.app.db.read() as conn:
                if not await conn.scalar(sa.select(sa.func.count()).select_from(inbox)):
                    break
            assert time.monotonic() < deadline, "updates stayed in the inbox"
            await asyncio.sleep(0.02)
        return await self.settled(timeout)

    async def settled(self, timeout: float = 30.0) -> list[Any]:
        """Every outbox row, once none is pending any more."""
        deadline = time.monotonic() + timeout
        while True:
            async with self.app.db.read() as conn:
                rows = list(await conn.execute(sa.select(outbox).order_by(outbox.c.id)))
            if all(row.status != "pending" for row in rows):
                return rows
            assert time.monotonic() < deadline, "the outbox did not drain"
            await asyncio.sleep(0.05)

    async def ticket_count(self) -> int:
        async with self.app.db.read() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(tickets)) or 0)


def _text(message: Message) -> str:
    return str(message.get("text") or message.get("caption") or "")


def _fresh(world: World, chat_id: int, message: Message) -> bool:
    """Only the newest bot message with buttons counts, so a test never presses an old keyboard."""
    with_buttons = [m for m in world.tg.bot_messages(chat_id) if world.tg.button_data(m)]
    return bool(with_buttons) and with_buttons[-1]["message_id"] == message["message_id"]


def _card_status(tg: FakeTelegram, card: Message) -> str:
    data = [d for d in tg.button_data(card) if d.startswith("t:")]
    if data:
        return data[0].split(":")[3]
    return "final"


@asynccontextmanager
async def running_world(
    database_url: str, routing: Routing, clock: Clock | None = None, **settings: object
) -> AsyncIterator[World]:
    async with FakeTelegram(token=TOKEN, bot_id=123456, bot_username="civicdesk_test_bot") as tg:
        for chat_id, title in ((ROADS_CHAT, "Roads"), (WASTE_CHAT, "Waste"), (COORDINATORS_CHAT, "Centre")):
            tg.add_group(chat_id=chat_id, title=title, type="supergroup")
        for user_id, name, chat_id in (
            (ROADS_STAFF, "Пётр", ROADS_CHAT),
            (WASTE_STAFF, "Ольга", WASTE_CHAT),
            (COORDINATOR, "Ирина", COORDINATORS_CHAT),
        ):
            tg.add_user(user_id=user_id, first_name=name, language_code="ru")
            tg.add_member(chat_id, user_id)
        app = App(make_settings(database_url, tg.base_url, **settings), routing, clock or SystemClock())
        await app.start()
        try:
            yield World(tg, app, routing, app.translator)
        finally:
            await app.stop()
