"""The VK channel, built only when a community is configured: vkbottle and its types are a large import,
so a Telegram-only installation never loads them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vkbottle import API, AiohttpClient
from vkbottle.bot import Bot as VkBot

from bot.clock import Clock
from bot.config import Settings
from bot.delivery.limits import RateLimiter
from bot.delivery.outbox import AlreadyHandled
from bot.delivery.vk import VkMessenger
from bot.dialog import CitizenDialog
from bot.domain import Attachment
from storage.db import Database

from .callback import VkCallback
from .citizen import citizen_labeler
from .polling import VkPolling

log = logging.getLogger(__name__)


@dataclass
class VkChannel:
    api: API
    messenger: VkMessenger
    receiver: VkPolling | VkCallback

    @property
    def callback(self) -> VkCallback | None:
        return self.receiver if isinstance(self.receiver, VkCallback) else None

    async def prepare(self) -> None:
        if isinstance(self.receiver, VkPolling):
            await self.receiver.prepare()

    async def close(self) -> None:
        await self.api.http_client.close()


def vk_channel(
    settings: Settings,
    dialog: CitizenDialog,
    limiter: RateLimiter,
    db: Database,
    clock: Clock,
    fetch: Callable[[Attachment], Awaitable[bytes]],
) -> VkChannel:
    assert settings.vk_group_token is not None and settings.vk_group_id is not None
    # A client of its own: vkbottle's default is one per process, shared by every API object, so closing
    # it on stop would break any other API in the process.
    api = API(settings.vk_group_token.get_secret_value(), http_client=AiohttpClient())
    # Set on the instance: the class attribute is shared by every API object in the process.
    api.API_URL = settings.vk_api_url
    vk_bot = VkBot(api=api, labeler=citizen_labeler(dialog, limiter))
    # A VK event handled elsewhere meanwhile: its second handling was rolled back, nothing to log.
    vk_bot.error_handler.register_error_handler(AlreadyHandled)(_handled_elsewhere)
    receiver: VkPolling | VkCallback
    if settings.vk_mode == "callback":
        assert settings.vk_callback_secret is not None and settings.vk_confirmation_code is not None
        receiver = VkCallback(
            api,
            vk_bot.router,
            settings.vk_group_id,
            db,
            clock,
            secret=settings.vk_callback_secret.get_secret_value(),
            confirmation_code=settings.vk_confirmation_code,
        )
    else:
        receiver = VkPolling(
            api, vk_bot.router, settings.vk_group_id, db, clock, wait=settings.vk_polling_wait
        )
    return VkChannel(api, VkMessenger(api, settings.vk_group_id, fetch), receiver)


async def _handled_elsewhere(error: AlreadyHandled) -> None:
    log.info("VK event %s was handled elsewhere meanwhile", error)
