"""Turning aiogram objects into the plain values the dialog and the service take."""

from __future__ import annotations

import logging
import mimetypes
from typing import Any

from aiogram.enums import ContentType
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Filter
from aiogram.types import CallbackQuery, Document, InaccessibleMessage, Message, TelegramObject, User
from aiogram.utils.magic_filter import MagicFilter

from bot.delivery.media import MAX_BYTES
from bot.dialog import Person
from bot.domain import Attachment, MediaKind, Platform
from bot.tickets import Staff

log = logging.getLogger(__name__)

# Content a citizen may send that we do not file (and say so), by the Message attribute that marks it.
# Service messages a private chat with the bot can hold: what Telegram says happened in the chat, not
# something the person sent (a pinned message, an auto-delete timer set, a new background).
SERVICE = frozenset(
    {
        ContentType.PINNED_MESSAGE,
        ContentType.MESSAGE_AUTO_DELETE_TIMER_CHANGED,
        ContentType.CHAT_BACKGROUND_SET,
        ContentType.WRITE_ACCESS_ALLOWED,
        ContentType.PROXIMITY_ALERT_TRIGGERED,
        ContentType.CONNECTED_WEBSITE,
        ContentType.DIRECT_MESSAGE_PRICE_CHANGED,
        ContentType.PAID_MESSAGE_PRICE_CHANGED,
    }
)
UNSUPPORTED = (
    "sticker",
    "voice",
    "video_note",
    "video",
    "audio",
    "animation",
    "poll",
    "dice",
    "contact",
    "game",
    "venue",
    "story",
    "paid_media",
)


class Where(Filter):
    """A magic filter (`F.chat.type == ...`) checked on the event loop. aiogram runs a filter that is a
    plain callable, as `F` resolves to, in a worker thread (`asyncio.to_thread`): a thread hop per
    check, for a few attribute reads, on every update. A `Filter`'s own coroutine runs in place."""

    def __init__(self, magic: MagicFilter) -> None:
        self.magic = magic

    async def __call__(self, event: TelegramObject) -> Any:
        return self.magic.resolve(event)


def person(message: Message | InaccessibleMessage, user: User | None = None) -> Person:
    user = user or getattr(message, "from_user", None)
    assert user is not None
    return Person(
        platform=Platform.telegram,
        chat_id=message.chat.id,
        user_id=user.id,
        name=user.first_name,
        language=user.language_code,
    )


def staff(message: Message | InaccessibleMessage, user: User | None = None) -> Staff:
    user = user or getattr(message, "from_user", None)
    assert user is not None
    return Staff(chat_id=message.chat.id, user_id=user.id, name=user.full_name)


def document_too_big(message: Message) -> bool:
    """Over what a bot may download (Telegram's limit): such a document could never be passed on."""
    return bool(message.document and (message.document.file_size or 0) > MAX_BYTES)


def document_name(document: Document) -> str:
    """Its file name; one sent without a name is named after its type ("document.pdf"): VK takes a file
    only with an extension, and shows its type by it."""
    if document.file_name:
        return document.file_name
    return "document" + (mimetypes.guess_extension(document.mime_type or "") or ".bin")


def photos(messages: list[Message]) -> list[Attachment]:
    """The photos of the messages (the largest size of each) and their documents, as attachments."""
    result = []
    for message in messages:
        if message.document and not document_too_big(message):
            result.append(
                Attachment(
                    kind=MediaKind.document,
                    platform=Platform.telegram,
                    file_id=message.document.file_id,
                    file_unique_id=message.document.file_unique_id,
                    name=document_name(message.document),
                )
            )
        if message.photo:
            largest = message.photo[-1]
            result.append(
                Attachment(
                    kind=MediaKind.photo,
                    platform=Platform.telegram,
                    file_id=largest.file_id,
                    file_unique_id=largest.file_unique_id,
                )
            )
    return result


def text_of(messages: list[Message]) -> str:
    parts = [m.text or m.caption or "" for m in messages]
    return "\n".join(p for p in parts if p).strip()


def unsupported_kind(message: Message) -> str | None:
    for kind in UNSUPPORTED:
        if getattr(message, kind, None):
            return kind
    return None


async def answer(query: CallbackQuery, text: str | None = None, *, alert: bool = False) -> None:
    """Answer a button press. A press answered too late (after a restart, a slow moment) is refused by
    Telegram; that only means the spinner already stopped, so it is logged, not raised."""
    try:
        await query.answer(text[:200] if text else None, show_alert=alert)
    except TelegramBadRequest as error:
        log.info("button press %s not answered: %s", query.id, error.message)
