"""A citizen writing to the VK community: messages and callback buttons, turned into dialog calls."""

from __future__ import annotations

import json
import logging
from typing import Any

from vkbottle import API, VKAPIError
from vkbottle.bot import BotLabeler, Message, MessageEvent
from vkbottle_types.events import GroupEventType

from bot.delivery.limits import RateLimiter, Rates
from bot.dialog import CitizenDialog, CitizenInput, Person
from bot.domain import Attachment, Location, MediaKind, Platform
from bot.messages import Ref

log = logging.getLogger(__name__)

COMMANDS = ("start", "help", "cancel", "my", "status", "lang", "new")
# VK's own "Start" button sends this text (and {"command": "start"} as payload).
START_WORDS = {"начать", "start", "старт"}
LANGUAGES = {0: "ru", 3: "en"}


class Names:
    """First names for greetings, asked from VK once per person per run."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._names: dict[int, str] = {}
        self.limiter = limiter

    async def get(self, api: API, user_id: int) -> str:
        if user_id not in self._names:
            try:
                async with self.limiter.slot(Platform.vk):
                    response = await api.request("users.get", {"user_ids": user_id})
                self._names[user_id] = str(response["response"][0].get("first_name", ""))
            except (VKAPIError, KeyError, IndexError, OSError) as error:
                log.info("no name for VK user %s: %r", user_id, error)
                return ""
        return self._names[user_id]


def citizen_labeler(dialog: CitizenDialog, limiter: RateLimiter | None = None) -> BotLabeler:
    """`limiter` is the one the outbox worker paces VK with: the handlers' own calls spend its budget."""
    limiter = limiter or RateLimiter(Rates())
    labeler = BotLabeler()
    names = Names(limiter)

    @labeler.private_message()
    async def on_message(message: Message) -> None:
        lang = message.client_info.lang_id if message.client_info else None
        who = Person(
            platform=Platform.vk,
            chat_id=message.peer_id,
            user_id=message.from_id,
            name=await names.get(message.ctx_api, message.from_id),  # type: ignore[arg-type]
            language=LANGUAGES.get(lang) if lang is not None else None,
        )
        text = (message.text or "").strip()
        command = _command(text, message.payload)
        if command is not None:
            name, args = command
            await dialog.command(who, name if name in COMMANDS else "", args)
            return
        photos = _photos(message)
        geo = message.geo
        location = (
            Location(geo.coordinates.latitude, geo.coordinates.longitude) if geo and geo.coordinates else None
        )
        unsupported = None
        if not text and not photos and location is None:
            kinds = [str(getattr(a.type, "value", a.type)) for a in message.attachments or []]
            unsupported = kinds[0] if kinds else "empty"
        reply = message.reply_message
        await dialog.message(
            CitizenInput(
                who=who,
                text=text,
                photos=photos,
                location=location,
                reply_to=reply.id if reply and reply.id else None,
                unsupported=unsupported,
            )
        )

    @labeler.raw_event(GroupEventType.MESSAGE_EVENT, dataclass=MessageEvent)
    async def on_button(event: MessageEvent) -> None:
        payload = event.payload if isinstance(event.payload, dict) else {}
        data = payload.get("d")
        toast = ""
        if isinstance(data, str):
            who = Person(platform=Platform.vk, chat_id=event.peer_id, user_id=event.user_id)
            pressed = Ref(message_id=event.conversation_message_id, in_conversation=True)
            toast = await dialog.press(who, data, pressed)
        # The answer stops the client's spinner; a short text shows as a snackbar.
        params: dict[str, Any] = {
            "event_id": event.event_id,
            "user_id": event.user_id,
            "peer_id": event.peer_id,
        }
        if toast:
            snackbar = {"type": "show_snackbar", "text": toast[:90]}
            params["event_data"] = json.dumps(snackbar, ensure_ascii=False)
        try:
            async with limiter.slot(Platform.vk):
                await event.ctx_api.request("messages.sendMessageEventAnswer", params)
        except VKAPIError as error:
            log.info("message event %s not answered: %r", event.event_id, error)

    @labeler.raw_event(GroupEventType.MESSAGE_DENY, dataclass=dict)
    async def on_deny(event: dict[str, Any]) -> None:
        user_id = int(event.get("object", {}).get("user_id", 0))
        if user_id:
            await dialog.tickets.citizen_unreachable(Platform.vk, user_id, None)

    @labeler.raw_event(GroupEventType.MESSAGE_ALLOW, dataclass=dict)
    async def on_allow(event: dict[str, Any]) -> None:
        user_id = int(event.get("object", {}).get("user_id", 0))
        if user_id:
            await dialog.tickets.citizen_reachable(Platform.vk, user_id)

    return labeler


def _command(text: str, payload: str | None) -> tuple[str, str] | None:
    if payload:
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("command") == "start":
            return "start", ""
    if text.lower() in START_WORDS:
        return "start", ""
    if text.startswith("/"):
        name, _, args = text[1:].partition(" ")
        return name.lower(), args.strip()
    return None


def _photos(message: Message) -> list[Attachment]:
    result = []
    for item in message.attachments or []:
        photo = item.photo
        if photo is None or not photo.sizes:
            continue
        largest = max(photo.sizes, key=lambda s: (s.width or 0) * (s.height or 0))
        file_id = f"photo{photo.owner_id}_{photo.id}" + (f"_{photo.access_key}" if photo.access_key else "")
        result.append(
            Attachment(
                kind=MediaKind.photo,
                platform=Platform.vk,
                file_id=file_id,
                file_unique_id=f"{photo.owner_id}_{photo.id}",
                url=str(largest.url or ""),
            )
        )
    return result
