"""A citizen writing to the VK community: messages and callback buttons, turned into dialog calls."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vkbottle import API, VKAPIError
from vkbottle.bot import BotLabeler, Message, MessageEvent
from vkbottle_types.events import GroupEventType
from vkbottle_types.objects import DocsDoc, MessagesForeignMessage, MessagesMessageAttachment, PhotosPhoto

from bot.delivery.limits import RateLimiter, Rates
from bot.delivery.media import MAX_BYTES
from bot.dialog import FILE_TOO_BIG, CitizenDialog, CitizenInput, Person
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
        content = _content(message)
        geo = message.geo
        location = (
            Location(geo.coordinates.latitude, geo.coordinates.longitude) if geo and geo.coordinates else None
        )
        reply = message.reply_message
        await dialog.message(
            CitizenInput(
                who=who,
                text="\n".join(part for part in (text, content.text) if part),
                photos=content.files,
                location=location,
                reply_to=reply.id if reply and reply.id else None,
                skipped=content.skipped,
            )
        )

    @labeler.raw_event(GroupEventType.MESSAGE_EDIT, dataclass=dict)
    async def on_edit(event: dict[str, Any]) -> None:
        """A message edited in a conversation with the community. VK reports the community's own edits
        (the bot's prompts) too; only a person's edit in their private conversation with the community
        is answered, as Telegram's edited messages are."""
        obj = event.get("object")
        if not isinstance(obj, dict) or obj.get("out"):
            return
        from_id, peer_id = _int(obj.get("from_id")), _int(obj.get("peer_id"))
        if from_id <= 0 or peer_id != from_id:
            return
        # Whoever edits a message wrote it first, so they are known already: no name or language needed.
        await dialog.notice(
            Person(platform=Platform.vk, chat_id=peer_id, user_id=from_id), "dialog.edit_ignored"
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


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


@dataclass
class Content:
    """What a message carries besides its own text and location: the text of the messages it forwards, the
    photos and documents taken, and the kinds of what could not be (FILE_TOO_BIG for a document over the
    limit)."""

    text: str = ""
    files: list[Attachment] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# Forwarded messages nest (a forward of a forward); deeper than this is not looked into.
FORWARD_DEPTH = 5


def _content(message: Message) -> Content:
    content = Content()
    parts = _take(content, message.attachments or [], message.text or "")
    _forwards(content, message.fwd_messages or [], parts, FORWARD_DEPTH)
    content.text = "\n".join(parts)
    return content


def _forwards(
    content: Content, forwarded: Sequence[MessagesForeignMessage], parts: list[str], depth: int
) -> None:
    """Forwarded messages as Telegram takes a forward: each one's text and files, as if sent here."""
    for item in forwarded:
        own = (item.text or "").strip()
        if own:
            parts.append(own)
        parts += _take(content, item.attachments or [], own)
        if item.fwd_messages:
            if depth > 1:
                _forwards(content, item.fwd_messages, parts, depth - 1)
            else:
                content.skipped.append("fwd_messages")


def _take(content: Content, attachments: Sequence[MessagesMessageAttachment], text: str) -> list[str]:
    """Photos and documents into `content.files`, the kinds of what cannot be taken into
    `content.skipped`; returns the addresses of shared links that `text` does not already hold."""
    links = []
    for item in attachments:
        kind = str(getattr(item.type, "value", item.type))
        if kind == "photo" and item.photo is not None and item.photo.sizes:
            content.files.append(_photo(item.photo))
        elif kind == "doc" and item.doc is not None:
            # Passed on to the agency by downloading it, which stops at this size.
            if (item.doc.size or 0) > MAX_BYTES:
                content.skipped.append(FILE_TOO_BIG)
            else:
                content.files.append(_document(item.doc))
        elif kind == "link":
            # VK attaches a link for an address written in the text, and a shared link comes alone.
            url = str(getattr(getattr(item, "link", None), "url", None) or "")
            if url and url not in text:
                links.append(url)
        else:
            content.skipped.append(kind)
    return links


def _photo(photo: PhotosPhoto) -> Attachment:
    largest = max(photo.sizes or [], key=lambda s: (s.width or 0) * (s.height or 0))
    return _attachment(MediaKind.photo, "photo", photo.owner_id, photo.id, photo.access_key, largest.url)


def _document(doc: DocsDoc) -> Attachment:
    """A VK document as Telegram's are kept: fetched by its URL when it goes to the agency, under its
    title, with its extension added when the title lacks it (VK keeps the two apart)."""
    ext = (doc.ext or "").lower()
    name = (doc.title or "").strip() or "document"
    if ext and not name.lower().endswith(f".{ext}"):
        name = f"{name}.{ext}"
    return _attachment(MediaKind.document, "doc", doc.owner_id, doc.id, doc.access_key, doc.url, name)


def _attachment(
    kind: MediaKind,
    vk_type: str,
    owner_id: int | None,
    item_id: int | None,
    access_key: str | None,
    url: object,
    name: str = "",
) -> Attachment:
    """A VK file by its attachment string (`<type><owner>_<id>[_<access key>]`), which sends it again on
    VK, and its URL, which fetches it for Telegram."""
    key = f"_{access_key}" if access_key else ""
    return Attachment(
        kind=kind,
        platform=Platform.vk,
        file_id=f"{vk_type}{owner_id}_{item_id}{key}",
        file_unique_id=f"{owner_id}_{item_id}",
        url=str(url or ""),
        name=name,
    )
