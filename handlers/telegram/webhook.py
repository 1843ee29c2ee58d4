"""Telegram webhook through the inbox: an update is stored before Telegram gets its 200.

Telegram keeps sending an update until it is answered 200, so the answer is what confirms it; storing
first means a crash right after the answer loses nothing, and a second delivery of a stored or handled
update changes nothing (the inbox and the handled marks are keyed by update_id, as in polling mode).
aiogram's SimpleRequestHandler answers before anything is stored, hence this handler.
"""

from __future__ import annotations

import hmac
import json
import logging

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError

from bot.clock import Clock
from bot.domain import Platform
from bot.intake import Intake, Pushed
from storage.db import Database

from .polling import feeder

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)


class TelegramWebhook(Pushed):
    def __init__(
        self,
        bot: Bot,
        dispatcher: Dispatcher,
        db: Database,
        clock: Clock,
        *,
        url: str,
        secret: str,
        allowed_updates: list[str] | None = None,
    ) -> None:
        self.bot = bot
        self.dispatcher = dispatcher
        self.url = url
        self._secret = secret
        self._secret_bytes = secret.encode()
        self.allowed_updates = allowed_updates
        self.intake = Intake(db, clock, Platform.telegram, feeder(bot, dispatcher))
        super().__init__()

    async def prepare(self) -> None:
        """Point Telegram at the webhook; updates that waited while the bot was down are kept."""
        await self.bot.set_webhook(
            url=self.url,
            secret_token=self._secret,
            allowed_updates=self.allowed_updates,
            drop_pending_updates=False,
        )

    async def handle(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._secret_bytes):
            return web.Response(status=401, text="wrong or missing secret token")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return web.Response(status=400, text="the body is not JSON")
        update_id = body.get("update_id") if isinstance(body, dict) else None
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            return web.Response(status=400, text="not a Telegram update")
        try:
            Update.model_validate(body, context={"bot": self.bot})
        except ValidationError:
            log.warning("webhook update %s does not parse; answered 400", update_id)
            return web.Response(status=400, text="not a Telegram update")
        try:
            # Kept as Telegram sent it, as polling keeps it.
            await self.intake.accept([(str(update_id), body)])
        except Exception:
            # Not answered 200, so Telegram sends the update again later.
            log.exception("webhook update %s could not be stored", update_id)
            return web.Response(status=500, text="not stored; send it again")
        return web.Response(status=200)
