"""Sending to Telegram with aiogram, and turning its failures into the outbox's retry decisions."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.types import (
    BufferedInputFile,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaPhoto,
    LinkPreviewOptions,
    MediaUnion,
    Message,
    ReplyParameters,
)
from aiohttp import FormData
from aiohttp.payload import BytesPayload, Payload

from bot.domain import Attachment, MediaKind, Platform
from bot.messages import Outgoing

from .base import ChatMigrated, PermanentError, Progress, RetryAfter, TransientError

CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096
# Room a caption with buttons leaves for what its edits may add (a card's status, where it went).
CAPTION_SPARE = 200
NO_TEXT = "there is no text in the message to edit"
NO_CAPTION = "there is no caption in the message to edit"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sent:
    """What the messenger keeps of a message Telegram answers a send or an edit with: its id."""

    message_id: int


# Set while the messenger makes a call (`_call`): the session then answers with `Sent` in place of
# aiogram's `Message`, which the messenger would build only to read its id.
_IDS_ONLY: ContextVar[bool] = ContextVar("telegram_ids_only", default=False)
_RESPONSE = Response[Any]


class TelegramSession(AiohttpSession):
    """aiogram's HTTP session, keeping the response models it builds, and building none for the
    messenger's sends.

    aiogram parses every answer as `Response[<the method's result type>]`; pydantic caches such a model
    only while something else holds it, so once the garbage collector has run it builds the model again,
    several milliseconds each time. Holding one per result type keeps that to once per process.

    A sent message comes back whole (its chat, sender, text, entities, photo sizes, keyboard), and
    validating it into aiogram's objects cost more than any other part of a call. The messenger reads
    only the message's id, so its calls get `Sent`; an answer that is not a success goes through
    aiogram's own check, with its exceptions, as does every call made elsewhere.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._responses: dict[Any, type[Response[Any]]] = {}

    def build_form_data(self, bot: Bot, method: TelegramMethod[Any]) -> FormData:
        """A call without files goes as one JSON object, which the Bot API takes as it takes a form:
        URL-encoding a form percent-encodes a message's text byte by byte in Python, twice the cost of
        building the JSON. A call with files goes as aiogram sends it, a multipart form."""
        files: dict[str, InputFile] = {}
        fields: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None and prepared != "":  # what the form leaves out
                fields[key] = prepared
        if files:
            return super().build_form_data(bot, method)
        return _JsonBody(self.json_dumps(fields))

    def check_response(
        self, bot: Bot, method: TelegramMethod[T], status_code: int, content: str
    ) -> Response[T]:
        if _IDS_ONLY.get() and HTTPStatus.OK <= status_code <= HTTPStatus.IM_USED:
            try:
                answer = self.json_loads(content)
            except ValueError:
                answer = None  # aiogram's check below says so
            if isinstance(answer, dict) and answer.get("ok") is True:
                return _RESPONSE.model_construct(ok=True, result=_sent(answer.get("result")))
        returning = method.__returning__
        if returning not in self._responses:
            self._responses[returning] = Response[returning]  # type: ignore[valid-type]
        return super().check_response(bot, method, status_code, content)


class _JsonBody(FormData):
    """A call's fields as the JSON body aiohttp posts in place of a form."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self._body = body.encode()

    def __call__(self) -> Payload:
        return BytesPayload(self._body, content_type="application/json")


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Cut a long HTML text into messages of at most `limit` UTF-16 units (Telegram's measure), at line
    breaks where it can, else at spaces, never inside a tag or an `&...;`. A tag open at a cut (a
    person's several lines in italics, in a ticket's history) is closed at the end of its part and
    opened again at the start of the next: Telegram takes each part as a text of its own."""
    if _units(text) <= limit:
        return [text]
    room = limit
    while True:
        parts = _balanced(_cut(text, room))
        over = max(_units(part) for part in parts) - limit
        if over <= 0 or room <= limit // 2:
            return parts
        room -= over  # the tags opened and closed again took that much


def _cut(text: str, limit: int) -> list[str]:
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        while _units(line) > limit:
            fit = _fitting(line, limit)
            cut = line.rfind(" ", 0, fit)
            cut = cut if cut > fit // 2 else fit
            amp = line.rfind("&", 0, cut)
            if amp > 0 and ";" not in line[amp:cut]:
                cut = amp
            tag = line.rfind("<", 0, cut)
            if tag > 0 and ">" not in line[tag:cut]:
                cut = tag
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:cut])
            line = line[cut:].lstrip(" ")
        candidate = f"{current}\n{line}" if current else line
        if _units(candidate) > limit:
            chunks.append(current)
            candidate = line
        current = candidate
    chunks.append(current)
    return [chunk for chunk in chunks if chunk.strip()]


_TAG = re.compile(r"<(/?)([a-zA-Z][\w-]*)[^>]*>")


def _balanced(chunks: list[str]) -> list[str]:
    """Each chunk with the tags still open before it opened again, and those open after it closed."""
    parts: list[str] = []
    opened: list[tuple[str, str]] = []  # (name, the opening tag as written)
    for chunk in chunks:
        before = "".join(tag for _, tag in opened)
        for match in _TAG.finditer(chunk):
            closing, name = match.group(1), match.group(2).lower()
            if not closing:
                opened.append((name, match.group(0)))
            elif opened and opened[-1][0] == name:
                opened.pop()
        after = "".join(f"</{name}>" for name, _ in reversed(opened))
        parts.append(before + chunk + after)
    return parts


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fitting(line: str, limit: int) -> int:
    """How many characters of `line` fit in `limit` UTF-16 units."""
    units = 0
    for index, char in enumerate(line):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(line)


class TelegramMessenger:
    platform = Platform.telegram

    def __init__(self, bot: Bot, fetch: Callable[[Attachment], Awaitable[bytes]]) -> None:
        self.bot = bot
        self.fetch = fetch

    async def send(
        self,
        chat_id: int,
        message: Outgoing,
        reply_to: int | None,
        nonce: int = 0,
        progress: Progress | None = None,
    ) -> list[int]:
        progress = progress or Progress()
        reply = ReplyParameters(message_id=reply_to, allow_sending_without_reply=True) if reply_to else None
        markup = _markup(message)
        if not message.photos:
            return await self._text(chat_id, message.text, markup, reply, progress)
        if in_caption(message):
            return await self._photos(chat_id, message.photos, message.text, reply, progress, markup)
        # Photos first, then the text with its buttons below them: the text is the message staff act on.
        photo_ids = await self._photos(chat_id, message.photos, message.photo_caption, reply, progress)
        text_ids = await self._text(chat_id, message.text, markup, reply, progress)
        return [*text_ids, *photo_ids]

    async def _text(
        self,
        chat_id: int,
        text: str,
        markup: InlineKeyboardMarkup | ForceReply | None,
        reply: ReplyParameters | None,
        progress: Progress,
    ) -> list[int]:
        """Send a text, in several messages if it is too long; the buttons go on the last one, and the
        last one comes first in the result, as the message to edit later."""
        parts = split_text(text)
        ids: list[int] = []
        for index, part in enumerate(parts):
            request = partial(
                self.bot.send_message,
                chat_id,
                part,
                reply_markup=markup if index == len(parts) - 1 else None,
                reply_parameters=reply,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
            ids += await progress.part(f"text{index}", partial(_ids, request))
        return [ids[-1], *ids[:-1]]

    async def _photos(
        self,
        chat_id: int,
        photos: list[Attachment],
        caption: str,
        reply: ReplyParameters | None,
        progress: Progress,
        markup: InlineKeyboardMarkup | ForceReply | None = None,
    ) -> list[int]:
        """The photos (with `caption`) and documents; `markup` only for a single photo."""
        documents = [a for a in photos if a.kind is MediaKind.document]
        photos = [a for a in photos if a.kind is not MediaKind.document]
        ids: list[int] = []
        if photos:
            album = partial(self._album, chat_id, photos, caption, reply, markup)
            # Named apart from a bare album, whose text (and buttons) would still be to send.
            ids += await progress.part("album" if markup is None else "captioned", album)
        for index, document in enumerate(documents):

            async def send_document(document: Attachment = document) -> list[int]:
                file = await self._file(document)
                request = partial(
                    self.bot.send_document,
                    chat_id,
                    file,
                    caption=None if photos else caption or None,
                    reply_parameters=reply,
                )
                return await _ids(request)

            ids += await progress.part(f"document{index}", send_document)
        return ids

    async def _album(
        self,
        chat_id: int,
        photos: list[Attachment],
        caption: str,
        reply: ReplyParameters | None,
        markup: InlineKeyboardMarkup | ForceReply | None,
    ) -> list[int]:
        files = [await self._file(photo) for photo in photos[:10]]
        if len(files) == 1:
            return await _ids(
                partial(
                    self.bot.send_photo,
                    chat_id,
                    files[0],
                    caption=caption or None,
                    reply_parameters=reply,
                    reply_markup=markup,
                )
            )
        media: list[MediaUnion] = [
            InputMediaPhoto(media=file, caption=caption if index == 0 and caption else None)
            for index, file in enumerate(files)
        ]
        album = await _call(lambda: self.bot.send_media_group(chat_id, media, reply_parameters=reply))
        return [m.message_id for m in album]

    async def _file(self, attachment: Attachment) -> str | BufferedInputFile:
        if attachment.platform is Platform.telegram:
            return attachment.file_id
        # A file from another platform is uploaded as bytes: its URL may not be reachable by Telegram.
        name = attachment.name if attachment.kind is MediaKind.document and attachment.name else "photo.jpg"
        return BufferedInputFile(await self.fetch(attachment), filename=name)

    async def edit(self, chat_id: int, message_id: int, message: Outgoing) -> None:
        markup = _markup(message)
        inline = markup if isinstance(markup, InlineKeyboardMarkup) else None
        try:
            if message.buttons_only:
                await _call(
                    lambda: self.bot.edit_message_reply_markup(
                        chat_id=chat_id, message_id=message_id, reply_markup=inline
                    )
                )
            else:
                # Its photos tell whether the text went as their caption; if they changed since (a
                # ticket's photos grow), Telegram's refusal tells.
                edits = [self._edit_text, self._edit_caption]
                if in_caption(message):
                    edits.reverse()
                try:
                    await edits[0](chat_id, message_id, message.text, inline)
                except PermanentError as error:
                    if NO_TEXT not in str(error) and NO_CAPTION not in str(error):
                        raise
                    await edits[1](chat_id, message_id, message.text, inline)
        except PermanentError as error:
            if "message is not modified" not in str(error):
                raise

    async def _edit_text(
        self, chat_id: int, message_id: int, text: str, markup: InlineKeyboardMarkup | None
    ) -> None:
        await _call(
            lambda: self.bot.edit_message_text(
                text=text,
                chat_id=chat_id,
                message_id=message_id,
                reply_markup=markup,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        )

    async def _edit_caption(
        self, chat_id: int, message_id: int, text: str, markup: InlineKeyboardMarkup | None
    ) -> None:
        await _call(
            lambda: self.bot.edit_message_caption(
                chat_id=chat_id, message_id=message_id, caption=fit_caption(text), reply_markup=markup
            )
        )


def _sent(result: Any) -> Any:
    if isinstance(result, dict) and "message_id" in result:
        return Sent(int(result["message_id"]))
    if isinstance(result, list):
        return [_sent(item) for item in result]
    return result


def in_caption(message: Outgoing) -> bool:
    """Whether the text goes as the caption of the photos rather than as a message after them: a short
    text without buttons on any photos; with buttons, on a single photo (an album takes no buttons),
    leaving room for edits. One message instead of two, in chats limited to 20 a minute."""
    if not message.photos or message.force_reply:
        return False
    if not message.buttons:
        return _units(message.text) <= CAPTION_LIMIT
    if len(message.photos) > 1 or message.photos[0].kind is not MediaKind.photo:
        return False
    return _units(message.text) <= CAPTION_LIMIT - CAPTION_SPARE


def fit_caption(text: str) -> str:
    """The text, cut to a caption's length if an edit made it longer than one."""
    parts = split_text(text, CAPTION_LIMIT - 1)
    return parts[0] if len(parts) == 1 else parts[0] + "…"


def _markup(message: Outgoing) -> InlineKeyboardMarkup | ForceReply | None:
    if message.buttons:
        return InlineKeyboardMarkup(
            inline_keyboard=[
                [InlineKeyboardButton(text=b.text, callback_data=b.data) for b in row]
                for row in message.buttons
            ]
        )
    if message.force_reply:
        return ForceReply(force_reply=True)
    return None


async def _ids(request: Callable[[], Awaitable[Message]]) -> list[int]:
    return [(await _call(request)).message_id]


async def _call(request: Callable[[], Awaitable[T]]) -> T:
    """The request's result, with messages as `Sent` (all the messenger reads of them is the id), or its
    failure as the outbox's retry decision."""
    ids_only = _IDS_ONLY.set(True)
    try:
        return await request()
    except TelegramRetryAfter as error:
        raise RetryAfter(float(error.retry_after), error.message) from None
    except TelegramMigrateToChat as error:
        raise ChatMigrated(error.migrate_to_chat_id) from None
    except TelegramForbiddenError as error:
        reason = "deactivated" if "deactivated" in error.message else "blocked"
        raise PermanentError(reason, error.message) from None
    except TelegramBadRequest as error:
        reason = "chat_not_found" if "chat not found" in error.message else "bad_request"
        raise PermanentError(reason, error.message) from None
    except TelegramNotFound as error:
        raise PermanentError("not_found", error.message) from None
    except (TelegramNetworkError, TelegramServerError) as error:
        raise TransientError(error.message) from None
    except ClientDecodeError as error:
        # Not JSON: a proxy's error page in front of the Bot API, worth trying again later.
        raise TransientError(f"undecodable answer: {error.message}") from None
    finally:
        _IDS_ONLY.reset(ids_only)
