"""The composition root: builds every part from the settings, starts them together, stops them together."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.types import BotCommand, BotCommandScopeAllGroupChats, BotCommandScopeAllPrivateChats

from bot.clock import Clock, SystemClock
from bot.config import Routing, Settings, channels
from bot.deadlines import Deadlines
from bot.delivery.base import Messenger
from bot.delivery.limits import RateLimiter, Rates
from bot.delivery.media import MediaFetcher
from bot.delivery.outbox import Outbox
from bot.delivery.shared_limits import SharedLimits
from bot.delivery.telegram import TelegramMessenger, TelegramSession
from bot.delivery.worker import DeliveryWorker
from bot.dialog import CitizenDialog, Limits
from bot.domain import Platform
from bot.i18n import Translator
from bot.intake import Intake
from bot.metrics import Metrics
from bot.tickets import TicketService
from bot.web import Handler, HttpServer
from handlers.telegram import get_routers
from handlers.telegram.polling import DurablePolling
from handlers.telegram.webhook import TelegramWebhook
from scheduler.jobs import Jobs
from scheduler.setup import build_scheduler
from storage.db import Database

if TYPE_CHECKING:
    from handlers.vk.channel import VkChannel

log = logging.getLogger("civicdesk")


class Receiver(Protocol):
    """Takes updates in, by polling or over HTTP, storing each in its inbox first."""

    intake: Intake

    async def run(self) -> None: ...

    def stop(self) -> None: ...


CITIZEN_COMMANDS = ("start", "new", "my", "status", "lang", "cancel", "help")
STAFF_COMMANDS = ("history", "card", "help")


@dataclass
class App:
    settings: Settings
    routing: Routing
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        telegram_on, vk_on = channels(self.settings)
        self.db = Database(self.settings.database_url)
        # Names this process among instances sharing the database (in outbox claims and logs).
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.translator = Translator(default=self.routing.default_locale)
        self.outbox = Outbox(self.db, self.clock)
        self.policy = self.settings.policy()
        self.tickets = TicketService(
            self.outbox,
            self.routing,
            self.translator,
            citizen_update_every=self.policy.citizen_update_every,
        )
        self.jobs = Jobs(Deadlines(self.tickets, self.policy), self.clock)
        self.metrics = Metrics()
        self.jobs.on_scan = self.metrics.scan_finished
        self.scheduler = build_scheduler(self.jobs, self.settings.scheduler_interval)
        self.dialog = CitizenDialog(
            self.outbox,
            self.tickets,
            self.routing,
            self.translator,
            Limits(max_text=self.settings.max_report_length, max_photos=self.settings.max_photos),
        )
        # With REDIS_URL, the instances of one bot share that budget through Redis.
        redis_url = self.settings.redis_url
        self.shared_limits: SharedLimits | None = (
            SharedLimits.from_url(redis_url.get_secret_value(), prefix=self.settings.redis_key_prefix)
            if redis_url is not None
            else None
        )
        # One budget per platform for the worker's sends and the handlers' direct calls alike.
        self.limiter = RateLimiter(
            Rates(
                telegram_global=self.settings.telegram_global_rate,
                telegram_private=self.settings.telegram_private_rate,
                telegram_group=self.settings.telegram_group_rate,
                vk=self.settings.vk_rate,
            ),
            shared=self.shared_limits,
        )
        self.bot: Bot | None = self._telegram_bot() if telegram_on else None
        self.media = MediaFetcher(self.bot)
        messengers: dict[Platform, Messenger] = {}
        # What takes updates in, by polling or over HTTP; each stores them in the inbox first.
        self.pollers: list[Receiver] = []
        if self.bot is not None:
            messengers[Platform.telegram] = TelegramMessenger(self.bot, self.media.fetch)
            self.pollers.append(self._telegram_polling(self.bot))
        self.vk: VkChannel | None = None
        if vk_on:
            from handlers.vk.channel import vk_channel  # only here: a large import Telegram alone never needs

            self.vk = vk_channel(
                self.settings, self.dialog, self.limiter, self.db, self.clock, self.media.fetch
            )
            messengers[Platform.vk] = self.vk.messenger
            self.pollers.append(self.vk.receiver)
        self.worker = DeliveryWorker(
            self.db,
            messengers,
            self.clock,
            max_attempts=self.settings.outbox_max_attempts,
            poll_seconds=self.settings.outbox_poll_seconds,
            on_unreachable=self.tickets.chat_unreachable,
            on_migrated=self.tickets.chat_migrated,
            backoff_base=self.settings.outbox_backoff_base,
            limiter=self.limiter,
            metrics=self.metrics.send_error,
            # On PostgreSQL other instances may share the database: chats are delivered under claims.
            instance=self.instance if self.db.is_postgres else None,
            claim_seconds=self.settings.outbox_claim_seconds,
        )
        self.outbox.subscribe(self.worker.wake)
        for receiver in self.pollers:
            receiver.intake.on_handled = self.metrics.update_handled
        self.http = self._http_server(list(messengers))
        self._tasks: list[asyncio.Task[None]] = []
        self._sweeper: asyncio.Task[None] | None = None

    def _telegram_bot(self) -> Bot:
        token = self.settings.telegram_bot_token
        assert token is not None
        session = TelegramSession(api=TelegramAPIServer.from_base(self.settings.telegram_api_url))
        return Bot(
            token.get_secret_value(), session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML)
        )

    def _telegram_polling(self, bot: Bot) -> DurablePolling | TelegramWebhook:
        self.dispatcher = Dispatcher(
            tickets=self.tickets, dialog=self.dialog, outbox=self.outbox, routing=self.routing
        )
        self.dispatcher.include_routers(
            *get_routers(self.routing, self.settings.album_wait_seconds, self.tickets.chats)
        )
        allowed = sorted(self.dispatcher.resolve_used_update_types())
        if self.settings.telegram_mode == "webhook":
            assert self.settings.webhook_url is not None and self.settings.webhook_secret is not None
            return TelegramWebhook(
                bot,
                self.dispatcher,
                self.db,
                self.clock,
                url=self.settings.webhook_url,
                secret=self.settings.webhook_secret.get_secret_value(),
                allowed_updates=allowed,
            )
        return DurablePolling(
            bot,
            self.dispatcher,
            self.db,
            self.clock,
            timeout=self.settings.polling_timeout,
            allowed_updates=allowed,
        )

    def _http_server(self, platforms: list[Platform]) -> HttpServer | None:
        """One server for the webhook, the VK callback and health; None when nothing needs it."""
        port = self.settings.http_listen_port
        if port is None:
            return None
        routes: dict[str, Handler] = {}
        for receiver in self.pollers:
            if isinstance(receiver, TelegramWebhook):
                routes[self.settings.webhook_path] = receiver.handle
        if self.vk is not None and self.vk.callback is not None:
            routes[self.settings.vk_callback_path] = self.vk.callback.handle
        return HttpServer(
            self.settings.http_host,
            port,
            db=self.db,
            clock=self.clock,
            metrics=self.metrics,
            platforms=platforms,
            max_outbox_lag=self.settings.health_max_outbox_lag,
            routes=routes,
        )

    @property
    def channels(self) -> list[str]:
        return [name for name, on in (("Telegram", self.bot is not None), ("VK", self.vk is not None)) if on]

    async def start(self) -> None:
        async with self.outbox.read() as repo:
            await self.tickets.chats.load(repo)
        described = []
        if self.http is not None:
            # Listening before the webhook is set, so Telegram's first call finds the server up.
            await self.http.start()
            described.append(f"HTTP on {self.http.host}:{self.http.port}")
        if self.bot is not None:
            me = await self.bot.get_me()
            webhooks = [r for r in self.pollers if isinstance(r, TelegramWebhook)]
            for webhook in webhooks:
                await webhook.prepare()
            if not webhooks:
                await self.bot.delete_webhook(drop_pending_updates=False)
            await self._set_commands(self.bot)
            how = f"webhook at {self.settings.webhook_path}" if webhooks else "polling"
            described.append(f"Telegram on as @{me.username} ({how})")
        else:
            described.append("Telegram off (agency cards wait in the outbox until it is on)")
        if self.vk is not None:
            await self.vk.prepare()
            callback = self.settings.vk_mode == "callback"
            how = f"callback at {self.settings.vk_callback_path}" if callback else "long poll"
            described.append(f"VK on for community {self.settings.vk_group_id} ({how})")
        else:
            described.append("VK off")
        if self.shared_limits is not None:
            described.append("rate limits shared through Redis")
        self.scheduler.start()
        runs: list[tuple[str, Coroutine[Any, Any, None]]] = [("outbox", self.worker.run())]
        runs += [(type(poller).__name__, poller.run()) for poller in self.pollers]
        self._tasks = [asyncio.create_task(run, name=name) for name, run in runs]
        self._sweeper = asyncio.create_task(self._sweep_inboxes(), name="inbox-sweep")
        log.info("CivicDesk started as %s: %s", self.instance, "; ".join(described))

    async def _sweep_inboxes(self) -> None:
        """Handle updates another instance stored but never finished (it died): each is stored before it
        is confirmed, so whoever finds it handles it, and a handling that comes second changes nothing."""
        wait = self.settings.inbox_sweep_after
        while True:
            await asyncio.sleep(wait / 2)
            before = self.clock.now() - timedelta(seconds=wait)
            for receiver in self.pollers:
                try:
                    await receiver.intake.replay(received_before=before)
                except Exception:
                    log.exception("inbox sweep failed; trying again later")

    async def _set_commands(self, bot: Bot) -> None:
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
            await bot.set_my_commands(citizen, scope=BotCommandScopeAllPrivateChats(), language_code=language)
            await bot.set_my_commands(staff, scope=BotCommandScopeAllGroupChats(), language_code=language)

    async def wait(self) -> None:
        """Run until a part stops; a part that crashes brings the whole app down, loudly."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        if self.http is not None:
            # First, so nothing new is stored while the receivers finish what they hold.
            await self.http.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for poller in self.pollers:
            poller.stop()
        self.worker.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.bot is not None:
            await self.bot.session.close()
        if self.vk is not None:
            await self.vk.close()
        await self.media.close()
        if self.shared_limits is not None:
            await self.shared_limits.close()
        await self.db.close()
