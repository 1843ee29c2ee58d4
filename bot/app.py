"""The composition root: builds every part from the settings, starts them together, stops them together."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.types import BotCommand, BotCommandScopeAllGroupChats, BotCommandScopeAllPrivateChats

from bot.clock import Clock, SystemClock
from bot.config import Routing, Settings
from bot.delivery.outbox import Outbox
from bot.delivery.telegram import TelegramMessenger
from bot.delivery.worker import DeliveryWorker
from bot.dialog import CitizenDialog, Limits
from bot.domain import Platform
from bot.i18n import Translator
from bot.tickets import TicketService
from handlers.telegram import get_routers
from handlers.telegram.polling import DurablePolling
from storage.db import Database

log = logging.getLogger("civicdesk")

CITIZEN_COMMANDS = ("start", "new", "my", "status", "lang", "cancel", "help")
STAFF_COMMANDS = ("history", "card", "help")


@dataclass
class App:
    settings: Settings
    routing: Routing
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        self.db = Database(self.settings.database_url)
        self.translator = Translator(default=self.routing.default_locale)
        self.outbox = Outbox(self.db, self.clock)
        self.tickets = TicketService(self.outbox, self.routing, self.translator)
        self.dialog = CitizenDialog(
            self.outbox,
            self.tickets,
            self.routing,
            self.translator,
            Limits(max_text=self.settings.max_report_length, max_photos=self.settings.max_photos),
        )
        token = self.settings.telegram_bot_token
        assert token is not None, "check missing_for_telegram() before building the app"
        session = AiohttpSession(api=TelegramAPIServer.from_base(self.settings.telegram_api_url))
        self.bot = Bot(
            token.get_secret_value(), session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML)
        )
        self.dispatcher = Dispatcher(
            tickets=self.tickets, dialog=self.dialog, outbox=self.outbox, routing=self.routing
        )
        self.dispatcher.include_routers(*get_routers(self.routing, self.settings.album_wait_seconds))
        self.worker = DeliveryWorker(
            self.db,
            {Platform.telegram: TelegramMessenger(self.bot)},
            self.clock,
            max_attempts=self.settings.outbox_max_attempts,
            poll_seconds=self.settings.outbox_poll_seconds,
        )
        self.outbox.subscribe(self.worker.wake)
        allowed = sorted(set(self.dispatcher.resolve_used_update_types()) | {"my_chat_member"})
        self.polling = DurablePolling(
            self.bot,
            self.dispatcher,
            self.db,
            self.clock,
            timeout=self.settings.polling_timeout,
            allowed_updates=allowed,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        me = await self.bot.get_me()
        await self.bot.delete_webhook(drop_pending_updates=False)
        await self._set_commands()
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="outbox"),
            asyncio.create_task(self.polling.run(), name="telegram-polling"),
        ]
        log.info("CivicDesk started: Telegram on as @%s; VK off", me.username)

    async def _set_commands(self) -> None:
        for locale in ("ru", "en"):
            language = None if locale == self.routing.default_locale else locale
            citizen = [
                BotCommand(command=c, description=self.translator.get(locale, f"command.{c}"))
                for c in CITIZEN_COMMANDS
            ]
            staff = [
                BotCommand(command=c, description=self.translator.get(locale, f"command.staff_{c}"))
                for c in STAFF_COMMANDS
            ]
            await self.bot.set_my_commands(
                citizen, scope=BotCommandScopeAllPrivateChats(), language_code=language
            )
            await self.bot.set_my_commands(
                staff, scope=BotCommandScopeAllGroupChats(), language_code=language
            )

    async def wait(self) -> None:
        """Run until a part stops; a part that crashes brings the whole app down, loudly."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        self.polling.stop()
        self.worker.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.bot.session.close()
        await self.db.close()
