"""FakeTelegram: a loopback Bot API server the real aiogram client talks to over HTTP, plus the simulated
people on the other side and every message of every chat for tests to inspect."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import mimetypes
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from .base import FakeServer
from .html_check import HtmlParseError, checked_link, format_text, utf16_len

__all__ = ["FakeStats", "FakeTelegram", "TelegramError"]

JSON = dict[str, Any]

DEFAULT_TOKEN = "123456:TEST-token"
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
CALLBACK_DATA_LIMIT = 64
DOWNLOAD_LIMIT = 20 * 1024 * 1024
PRIVATE_INTERVAL = 1.0
GROUP_WINDOW, GROUP_LIMIT = 60.0, 20
GLOBAL_WINDOW, GLOBAL_LIMIT = 1.0, 30
# Telegram leaves these out unless the bot asks for them by name.
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
POLL_CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
QUERY_TOO_OLD = "query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the same "
    "as a current content and reply markup of the message"
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
INLINE_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)
ANONYMOUS_ADMIN: JSON = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}
DEFAULT_ERRORS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# Content keys a copy or forward carries over; everything else about a message is its envelope.
CONTENT_KEYS = (
    "text",
    "entities",
    "photo",
    "document",
    "video",
    "audio",
    "voice",
    "video_note",
    "sticker",
    "animation",
    "location",
    "venue",
    "contact",
    "poll",
    "dice",
    "caption",
    "caption_entities",
    "has_media_spoiler",
    "show_caption_above_media",
)
MEDIA_KEYS = ("photo", "document", "video", "audio", "animation", "voice")
# (file_id prefix, folder in file_path, default extension); the prefixes are those Telegram's ids carry.
FILE_KINDS = {
    "photo": ("AgAC", "photos", ".jpg"),
    "document": ("BQAC", "documents", ".bin"),
    "video": ("BAAC", "videos", ".mp4"),
    "audio": ("CQAC", "music", ".mp3"),
    "voice": ("AwAC", "voice", ".oga"),
    "video_note": ("DQAC", "video_notes", ".mp4"),
    "sticker": ("CAAC", "stickers", ".webp"),
    "animation": ("CgAC", "animations", ".mp4"),
}
PHOTO_SIZES = ((90, 67, 0.02), (320, 240, 0.15), (800, 600, 1.0))

METHODS = (
    "getMe",
    "getUpdates",
    "deleteWebhook",
    "setWebhook",
    "getWebhookInfo",
    "logOut",
    "close",
    "setMyCommands",
    "deleteMyCommands",
    "getMyCommands",
    "sendMessage",
    "sendPhoto",
    "sendMediaGroup",
    "sendDocument",
    "sendLocation",
    "copyMessage",
    "forwardMessage",
    "editMessageText",
    "editMessageCaption",
    "editMessageReplyMarkup",
    "deleteMessage",
    "deleteMessages",
    "answerCallbackQuery",
    "sendChatAction",
    "getChat",
    "getFile",
    "leaveChat",
)
CANONICAL = {name.lower(): name for name in METHODS}
# Parameters that stay strings even when they look like numbers or JSON.
TEXT_PARAMS = frozenset(
    {
        "text",
        "caption",
        "callback_query_id",
        "file_id",
        "photo",
        "document",
        "video",
        "audio",
        "voice",
        "sticker",
        "video_note",
        "animation",
        "thumbnail",
        "url",
        "secret_token",
        "inline_message_id",
        "business_connection_id",
        "title",
        "description",
        "address",
        "first_name",
        "last_name",
        "phone_number",
        "vcard",
        "ip_address",
        "language_code",
        "emoji",
        "action",
        "parse_mode",
    }
)


class TelegramError(Exception):
    """A Bot API error reply; the HTTP status equals error_code, as with Telegram."""

    def __init__(self, code: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self) -> JSON:
        payload: JSON = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            payload["parameters"] = self.parameters
        return payload


def _bad(detail: str, parameters: JSON | None = None) -> TelegramError:
    return TelegramError(400, f"Bad Request: {detail}", parameters)


def _forbidden(detail: str) -> TelegramError:
    return TelegramError(403, f"Forbidden: {detail}")


@dataclass
class FakeStats:
    requests: int = 0
    sent_messages: int = 0
    too_many_requests: int = 0
    methods: Counter[str] = field(default_factory=Counter)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class _Upload:
    name: str
    filename: str
    content: bytes
    content_type: str


@dataclass
class _Failure:
    method: str
    code: int
    description: str
    parameters: JSON | None
    times: int
    chat_id: int | None


def _public(value: Any) -> Any:
    """A deep copy as Telegram would send it: the fake's bookkeeping keys ("_html", "_edits"...) go,
    and so does a reply_markup that is not an inline keyboard (Telegram never echoes those)."""
    if isinstance(value, dict):
        return {
            k: _public(v)
            for k, v in value.items()
            if not k.startswith("_")
            and not (k == "reply_markup" and isinstance(v, dict) and "inline_keyboard" not in v)
        }
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _coerce(value: str) -> Any:
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", value):
        return float(value)
    if value in ("true", "false"):
        return value == "true"
    return value


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def _now() -> int:
    return int(time.time())


def _update_kind(update: JSON) -> str:
    return next(key for key in update if key != "update_id")


class FakeTelegram(FakeServer):
    """The fake Bot API server. Simulated people act through the async helpers (send_text, press...),
    the bot under test talks HTTP, and tests read what happened (messages, requests, stats)."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        bot_id: int | None = None,
        bot_username: str = "civicdesk_test_bot",
        *,
        bot_first_name: str = "CivicDesk",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.bot_id = bot_id if bot_id is not None else int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.bot_first_name = bot_first_name
        super().__init__(host, port)

        self.users: dict[int, JSON] = {}
        self.chats: dict[int, JSON] = {}
        self.requests: list[tuple[str, JSON]] = []
        self.uploads: list[_Upload] = []
        self.updates: list[JSON] = []
        self.dropped_updates: list[JSON] = []
        self.deleted: list[JSON] = []
        self.chat_actions: list[tuple[int, str]] = []
        self.commands: dict[str, list[JSON]] = {}
        self.webhook: JSON | None = None
        # Where a TLS proxy in front of the bot forwards webhook calls (scheme, host and port replace
        # those of the webhook URL); None: the webhook is unreachable and updates wait, since tests make
        # no calls beyond the loopback.
        self.webhook_forward: str | None = None
        self._forward_to: list[str] = []
        # Every webhook call: {"update_id", "status"} (status 0: no HTTP answer at all).
        self.webhook_posts: list[JSON] = []
        self.webhook_retry_delay = 0.05
        self._webhook_error: tuple[int, str] | None = None
        self.stats = FakeStats()
        self.enforce_limits = False
        # Telegram shows an unknown "&name;" literally; refusing it catches escaping bugs early.
        self.strict_html_entities = True
        self.clock: Callable[[], float] = time.monotonic
        self.confirmed_update_id = 0
        self.logged_out = False
        self.closed = False
        self.internal_errors: list[tuple[str, str]] = []

        self._messages: dict[int, list[JSON]] = {}
        self._by_id: dict[tuple[int, int], JSON] = {}
        self._next_message_id: dict[int, int] = {}
        self._members: dict[int, set[int]] = {}
        self._migrated: dict[int, int] = {}
        self._blocked: set[int] = set()
        self._deactivated: set[int] = set()
        self._started: set[int] = set()
        self._bot_left: set[int] = set()
        self._bot_kicked: set[int] = set()
        self._files: dict[str, JSON] = {}
        self._photo_sets: dict[str, list[JSON]] = {}
        self._file_paths: dict[str, str] = {}
        self._callbacks: dict[str, JSON] = {}
        self._pending: list[JSON] = []
        self._last_update_id = 0
        self._allowed_updates: frozenset[str] | None = None
        self._poll_ticket = 0
        self._failures: list[_Failure] = []
        self._drops: Counter[str] = Counter()
        self._chat_sends: dict[int, deque[float]] = {}
        self._all_sends: deque[float] = deque()
        self._serial = 0

        self._handlers: dict[str, Callable[[JSON, dict[str, _Upload]], Awaitable[Any]]] = {
            name: getattr(self, "_api_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()) for name in METHODS
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/{method}", self._on_api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._on_file)
        app.router.add_route("*", "/{tail:.*}", self._on_unknown)

    # --- switches tests flip ---------------------------------------------------------------------------

    def block(self, user_id: int) -> None:
        """The user blocks the bot: sends to them fail with 403 and the bot gets a my_chat_member update."""
        if user_id in self._blocked:
            return
        self._blocked.add(user_id)
        self._my_chat_member(self.chats[user_id], self._user(user_id), "member", "kicked")

    def unblock(self, user_id: int) -> None:
        if user_id not in self._blocked:
            return
        self._blocked.discard(user_id)
        self._my_chat_member(self.chats[user_id], self._user(user_id), "kicked", "member")

    def remove_bot(self, chat_id: int, *, tell_bot: bool = True) -> None:
        """An admin removes the bot from a group: sends there fail with 403 and the bot is told, unless
        `tell_bot` is off (the update was lost: filtered out, or dropped while the bot was away)."""
        chat = self.chats[chat_id]
        self._bot_left.add(chat_id)
        self._bot_kicked.add(chat_id)
        if tell_bot:
            members = sorted(self._members.get(chat_id, set()))
            actor = self.users[members[0]] if members else ANONYMOUS_ADMIN
            self._my_chat_member(chat, actor, "member", "kicked")

    def add_bot(self, chat_id: int) -> None:
        """An admin adds the bot (back) to a group."""
        chat = self.chats[chat_id]
        old = "kicked" if chat_id in self._bot_kicked else "left"
        self._bot_left.discard(chat_id)
        self._bot_kicked.discard(chat_id)
        members = sorted(self._members.get(chat_id, set()))
        actor = self.users[members[0]] if members else ANONYMOUS_ADMIN
        self._my_chat_member(chat, actor, old, "member")

    def deactivate(self, user_id: int) -> None:
        self._user(user_id)
        self._deactivated.add(user_id)

    def migrate_group(self, old_chat_id: int, new_chat_id: int) -> JSON:
        """The group becomes a supergroup under a new id; returns the new chat."""
        old = self.chats[old_chat_id]
        new: JSON = {"id": new_chat_id, "title": old.get("title", ""), "type": "supergroup"}
        self.chats[new_chat_id] = new
        self._members[new_chat_id] = set(self._members.get(old_chat_id, set()))
        if old_chat_id in self._bot_left:
            self._bot_left.add(new_chat_id)
        members = sorted(self._members.get(old_chat_id, set()))
        actor = self.users[members[0]] if members else ANONYMOUS_ADMIN
        farewell = self._store(
            old_chat_id,
            {"from": dict(actor), "chat": dict(old), "date": _now(), "migrate_to_chat_id": new_chat_id},
        )
        welcome = self._store(
            new_chat_id,
            {
                "from": dict(ANONYMOUS_ADMIN),
                "sender_chat": dict(old),
                "chat": dict(new),
                "date": _now(),
                "migrate_from_chat_id": old_chat_id,
            },
        )
        self._migrated[old_chat_id] = new_chat_id
        self._push("message", farewell)
        self._push("message", welcome)
        return new

    def fail_next(
        self,
        method: str,
        *,
        error_code: int,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
        chat_id: int | None = None,
        parameters: JSON | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` ("*" for any) with this error instead."""
        params = dict(parameters or {})
        if retry_after is not None:
            params["retry_after"] = retry_after
        if description is None:
            if error_code == 429:
                description = f"Too Many Requests: retry after {retry_after or 1}"
                params.setdefault("retry_after", retry_after or 1)
            else:
                description = DEFAULT_ERRORS.get(error_code, "Error")
        self._failures.append(
            _Failure(method.lower(), error_code, description, params or None, times, chat_id)
        )

    def forward_webhooks(self, base_url: str, *more: str) -> None:
        """Deliver webhook calls to `base_url` plus the webhook URL's path, as a TLS proxy would; given
        several, each call goes to the next in turn, as a load balancer in front of instances does."""
        self._forward_to = [url.rstrip("/") for url in (base_url, *more)]
        self.webhook_forward = self._forward_to[0]
        self._signal()

    def redeliver(self, update: JSON) -> None:
        """Send an update again, as Telegram does when it is not sure the bot got it."""
        self._pending.append(copy.deepcopy(update))
        self._signal()

    def drop_next(self, method: str, times: int = 1) -> None:
        """Close the connection without answering the next `times` calls of `method`."""
        self._drops[method.lower()] += times

    # --- the simulated people ----------------------------------------------------------------------

    def add_user(
        self,
        user_id: int,
        first_name: str = "User",
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "ru",
        *,
        is_premium: bool | None = None,
        started: bool = True,
    ) -> JSON:
        """A person and their private chat with the bot. started=False: they never wrote to the bot,
        so it can't message them until they do."""
        user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
        if language_code:
            user["language_code"] = language_code
        if is_premium:
            user["is_premium"] = True
        self.users[user_id] = user
        chat: JSON = {"id": user_id, "first_name": first_name, "type": "private"}
        if last_name:
            chat["last_name"] = last_name
        if username:
            chat["username"] = username
        self.chats[user_id] = chat
        if started:
            self._started.add(user_id)
        return user

    def add_group(
        self,
        chat_id: int,
        title: str = "Group",
        type: str = "supergroup",
        *,
        username: str | None = None,
        is_forum: bool = False,
    ) -> JSON:
        if type not in ("group", "supergroup"):
            raise ValueError("type must be 'group' or 'supergroup'")
        if chat_id >= 0:
            raise ValueError("group chat ids are negative")
        chat: JSON = {"id": chat_id, "title": title, "type": type}
        if username:
            chat["username"] = username
        if is_forum:
            chat["is_forum"] = True
        self.chats[chat_id] = chat
        self._members.setdefault(chat_id, set())
        return chat

    def add_member(self, chat_id: int, user_id: int) -> None:
        self._user(user_id)
        self._members.setdefault(chat_id, set()).add(user_id)

    async def send_text(
        self,
        user_id: int,
        text: str,
        chat_id: int | None = None,
        reply_to: JSON | int | tuple[int, int] | None = None,
        entities: list[JSON] | None = None,
    ) -> JSON:
        if entities is None:
            plain, found = format_text(text)
        else:
            plain, found = text, entities
        content: JSON = {"text": plain}
        if found:
            content["entities"] = found
        return self._incoming(user_id, chat_id, content, reply_to)

    async def send_command(
        self, user_id: int, command: str, chat_id: int | None = None, reply_to: JSON | None = None
    ) -> JSON:
        """A command as a client sends it: a bot_command entity over "/name" or "/name@bot"."""
        if not command.startswith("/"):
            raise ValueError("a command starts with '/'")
        head = command.split(maxsplit=1)[0]
        _, rest_entities = format_text(command)
        entities = [{"offset": 0, "length": utf16_len(head), "type": "bot_command"}]
        entities += [e for e in rest_entities if e["offset"] >= utf16_len(head)]
        return self._incoming(user_id, chat_id, {"text": command, "entities": entities}, reply_to)

    async def send_photo(
        self,
        user_id: int,
        caption: str | None = None,
        chat_id: int | None = None,
        reply_to: JSON | int | tuple[int, int] | None = None,
        media_group_id: str | None = None,
        file_size: int = 100_000,
    ) -> JSON:
        content: JSON = {"photo": self._new_photo(file_size)}
        if media_group_id:
            content["media_group_id"] = media_group_id
        content.update(self._incoming_caption(caption))
        return self._incoming(user_id, chat_id, content, reply_to)

    async def send_album(
        self,
        user_id: int,
        count: int,
        caption: str | None = None,
        chat_id: int | None = None,
        reply_to: JSON | int | tuple[int, int] | None = None,
    ) -> list[JSON]:
        """`count` photos sharing one media_group_id, each its own update, caption on the first; sent as
        a reply, every part of it replies to the same message."""
        group_id = self._media_group_id()
        return [
            await self.send_photo(
                user_id,
                caption if index == 0 else None,
                chat_id=chat_id,
                reply_to=reply_to,
                media_group_id=group_id,
            )
            for index in range(count)
        ]

    async def send_location(
        self, user_id: int, latitude: float, longitude: float, chat_id: int | None = None
    ) -> JSON:
        return self._incoming(user_id, chat_id, {"location": {"latitude": latitude, "longitude": longitude}})

    async def share_live_location(
        self, user_id: int, latitude: float, longitude: float, live_period: int = 900
    ) -> JSON:
        """A live location: Telegram sends it once as a message, then as an edited_message every time
        the person moves, until `live_period` seconds have passed (`move_live_location`)."""
        location = {"latitude": latitude, "longitude": longitude, "live_period": live_period}
        return self._incoming(user_id, None, {"location": location})

    async def move_live_location(self, message: JSON, latitude: float, longitude: float) -> JSON:
        stored = self._message_ref(message)
        if "live_period" not in stored.get("location", {}):
            raise AssertionError(f"message {stored['message_id']} is not a live location")
        stored["location"] = {**stored["location"], "latitude": latitude, "longitude": longitude}
        stored["edit_date"] = _now()
        self._push("edited_message", stored)
        return stored

    async def pin(self, user_id: int, message: JSON) -> JSON:
        """The person pins a message of their chat with the bot: a service message says so."""
        pinned = self._message_ref(message)
        return self._incoming(user_id, None, {"pinned_message": dict(pinned)})

    async def send_sticker(self, user_id: int, chat_id: int | None = None, emoji: str = "👍") -> JSON:
        sticker = self._media_json(self._new_file("sticker", 20_000, meta={"emoji": emoji}))
        return self._incoming(user_id, chat_id, {"sticker": sticker})

    async def send_voice(
        self, user_id: int, chat_id: int | None = None, duration: int = 3, file_size: int = 8_000
    ) -> JSON:
        voice = self._media_json(self._new_file("voice", file_size, meta={"duration": duration}))
        return self._incoming(user_id, chat_id, {"voice": voice})

    async def send_video_note(
        self, user_id: int, chat_id: int | None = None, duration: int = 5, file_size: int = 200_000
    ) -> JSON:
        note = self._media_json(self._new_file("video_note", file_size, meta={"duration": duration}))
        return self._incoming(user_id, chat_id, {"video_note": note})

    async def send_video(
        self,
        user_id: int,
        caption: str | None = None,
        chat_id: int | None = None,
        duration: int = 10,
        file_size: int = 2_000_000,
        reply_to: JSON | int | tuple[int, int] | None = None,
    ) -> JSON:
        video = self._media_json(self._new_file("video", file_size, meta={"duration": duration}))
        return self._incoming(user_id, chat_id, {"video": video, **self._incoming_caption(caption)}, reply_to)

    async def send_document(
        self,
        user_id: int,
        file_name: str | None = "a.pdf",
        file_size: int = 50_000,
        mime_type: str | None = None,
        chat_id: int | None = None,
        caption: str | None = None,
        reply_to: JSON | int | tuple[int, int] | None = None,
    ) -> JSON:
        """A document; `file_name=None` sends one without a name, as some clients and bots do."""
        mime = mime_type or mimetypes.guess_type(file_name or "")[0] or "application/octet-stream"
        meta = {"mime_type": mime} if file_name is None else {"file_name": file_name, "mime_type": mime}
        record = self._new_file("document", file_size, meta=meta)
        content = {"document": self._media_json(record), **self._incoming_caption(caption)}
        return self._incoming(user_id, chat_id, content, reply_to)

    async def send_animation(
        self, user_id: int, chat_id: int | None = None, file_size: int = 300_000, caption: str | None = None
    ) -> JSON:
        record = self._new_file("animation", file_size, meta={"file_name": "animation.mp4"})
        # Telegram sends an animation twice over: as `animation` and as a `document` for old clients.
        as_document = {k: record[k] for k in ("file_id", "file_unique_id", "file_size")}
        as_document.update(file_name="animation.mp4", mime_type="video/mp4")
        content = {"animation": self._media_json(record), "document": as_document}
        return self._incoming(user_id, chat_id, {**content, **self._incoming_caption(caption)})

    async def send_contact(
        self,
        user_id: int,
        phone_number: str = "+79990001122",
        first_name: str | None = None,
        chat_id: int | None = None,
        *,
        own: bool = True,
    ) -> JSON:
        """A shared contact; own=True is the user sharing their own number (the usual request flow)."""
        user = self._user(user_id)
        contact: JSON = {"phone_number": phone_number, "first_name": first_name or user["first_name"]}
        if own:
            contact["user_id"] = user_id
        return self._incoming(user_id, chat_id, {"contact": contact})

    async def send_poll(
        self,
        user_id: int,
        question: str = "Question?",
        options: Iterable[str] = ("Yes", "No"),
        chat_id: int | None = None,
    ) -> JSON:
        poll = {
            "id": str(self._serial_number() + 5_000_000_000_000_000),
            "question": question,
            "options": [
                {"persistent_id": str(index), "text": option, "voter_count": 0}
                for index, option in enumerate(options)
            ],
            "total_voter_count": 0,
            "is_closed": False,
            "is_anonymous": True,
            "type": "regular",
            "allows_multiple_answers": False,
            "allows_revoting": False,
            "members_only": False,
        }
        return self._incoming(user_id, chat_id, {"poll": poll})

    async def send_dice(
        self, user_id: int, emoji: str = "🎲", value: int | None = None, chat_id: int | None = None
    ) -> JSON:
        rolled = value if value is not None else 1 + secrets.randbelow(6)
        return self._incoming(user_id, chat_id, {"dice": {"emoji": emoji, "value": rolled}})

    async def edit_text(self, user_id: int, message: JSON | tuple[int, int], new_text: str) -> JSON:
        """The person edits their own message; the bot receives an edited_message update."""
        stored = self._message_ref(message)
        if stored["from"]["id"] != user_id or "text" not in stored:
            raise AssertionError(f"user {user_id} can't edit message {stored['message_id']}")
        plain, found = format_text(new_text)
        stored["text"] = plain
        stored.pop("entities", None)
        if found:
            stored["entities"] = found
        stored["edit_date"] = _now()
        self._push("edited_message", stored)
        return stored

    async def forward_text(
        self,
        user_id: int,
        text: str,
        from_user: int | JSON | str | None = None,
        chat_id: int | None = None,
    ) -> JSON:
        """A message forwarded by the person. from_user: a known user id or user dict (origin "user"),
        or a name (origin "hidden_user", as for people who hide their account)."""
        date = _now() - 3600
        origin: JSON
        if isinstance(from_user, int):
            origin = {"type": "user", "date": date, "sender_user": dict(self._user(from_user))}
        elif isinstance(from_user, dict):
            origin = {"type": "user", "date": date, "sender_user": dict(from_user)}
        else:
            origin = {"type": "hidden_user", "date": date, "sender_user_name": from_user or "Someone"}
        plain, found = format_text(text)
        content: JSON = {"forward_origin": origin, "text": plain}
        if found:
            content["entities"] = found
        return self._incoming(user_id, chat_id, content)

    async def press(self, user_id: int, message: JSON | tuple[int, int], callback_data: str) -> str:
        """The person taps an inline button on a bot message; returns the callback query id.

        The data is not checked against the current keyboard: Telegram doesn't check it either, so a
        client with a stale view, or a forged request, can send any data for any bot message."""
        stored = self._message_ref(message)
        if stored["from"]["id"] != self.bot_id:
            raise AssertionError("only the bot's messages carry inline buttons")
        user = self._user(user_id)
        query_id = str(4_000_000_000_000_000 + self._serial_number())
        query: JSON = {
            "id": query_id,
            "from": dict(user),
            "message": _public(stored),
            "chat_instance": str(abs(hash((stored["chat"]["id"], self.bot_id))) % 10**18),
            "data": callback_data,
        }
        self._callbacks[query_id] = {"query": query, "answer": None}
        self._push("callback_query", query)
        return query_id

    def callback_answer(self, query_id: str) -> JSON | None:
        """What the bot answered to that callback query, or None while unanswered."""
        entry = self._callbacks.get(query_id)
        return None if entry is None else entry["answer"]

    async def send_mixed_album(
        self,
        user_id: int,
        parts: Iterable[str],
        caption: str | None = None,
        chat_id: int | None = None,
        reply_to: JSON | int | tuple[int, int] | None = None,
    ) -> list[JSON]:
        """An album of mixed parts sharing one media_group_id, each its own update, caption on the
        first. A part is "photo", "video", "audio", "document" (50 kB) or "big_document" (30 MB, over
        the 20 MB a bot may download). `reply_to` goes on every part, as clients send it."""
        group_id = self._media_group_id()
        sent = []
        for index, part in enumerate(parts):
            content: JSON
            if part == "photo":
                content = {"photo": self._new_photo(100_000)}
            elif part == "video":
                content = {
                    "video": self._media_json(self._new_file("video", 2_000_000, meta={"duration": 10}))
                }
            elif part == "audio":
                content = {
                    "audio": self._media_json(self._new_file("audio", 3_000_000, meta={"duration": 60}))
                }
            elif part in ("document", "big_document"):
                size = 50_000 if part == "document" else 30 * 1024 * 1024
                meta = {"file_name": f"part{index}.pdf", "mime_type": "application/pdf"}
                content = {"document": self._media_json(self._new_file("document", size, meta=meta))}
            else:
                raise ValueError(f"unknown album part {part!r}")
            content["media_group_id"] = group_id
            content.update(self._incoming_caption(caption if index == 0 else None))
            sent.append(self._incoming(user_id, chat_id, content, reply_to))
        return sent

    # --- inspecting what the bot did ---------------------------------------------------------------

    def messages(self, chat_id: int) -> list[JSON]:
        return list(self._messages.get(chat_id, []))

    def bot_messages(self, chat_id: int) -> list[JSON]:
        return [m for m in self._messages.get(chat_id, []) if m.get("from", {}).get("id") == self.bot_id]

    def get_message(self, chat_id: int, message_id: int) -> JSON | None:
        return self._by_id.get((chat_id, message_id))

    def calls(self, method: str) -> list[JSON]:
        """Params of every request to one method, in order."""
        wanted = method.lower()
        return [params for name, params in self.requests if name.lower() == wanted]

    @property
    def pending_updates(self) -> int:
        return len(self._pending)

    async def wait_for_message(
        self,
        chat_id: int,
        predicate: Callable[[JSON], bool] | None = None,
        timeout: float = 5.0,
        *,
        after: int = 0,
    ) -> JSON:
        """The first bot message in the chat (message_id > after) matching the predicate, waiting for it."""
        found: list[JSON] = []

        def check() -> bool:
            for message in self.bot_messages(chat_id):
                if message["message_id"] > after and (predicate is None or predicate(message)):
                    found.append(message)
                    return True
            return False

        try:
            await self.wait_until(check, timeout)
        except AssertionError:
            seen = [(m["message_id"], m.get("text", m.get("caption"))) for m in self.bot_messages(chat_id)]
            raise AssertionError(
                f"no matching bot message in chat {chat_id} within {timeout}s; bot messages: {seen}"
            ) from None
        return found[0]

    @staticmethod
    def button_data(message: JSON) -> list[str]:
        rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
        return [button["callback_data"] for row in rows for button in row if "callback_data" in button]

    @staticmethod
    def button_texts(message: JSON) -> list[str]:
        markup = message.get("reply_markup") or {}
        rows = markup.get("inline_keyboard") or markup.get("keyboard") or []
        return [
            button if isinstance(button, str) else button.get("text", "") for row in rows for button in row
        ]

    # --- HTTP plumbing -------------------------------------------------------------------------------

    async def _on_unknown(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)

    async def _on_api(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return self._reply(TelegramError(401, "Unauthorized").body(), 401)
        raw_method = request.match_info["method"]
        method = CANONICAL.get(raw_method.lower(), raw_method)
        try:
            params, files = await self._read_params(request)
        except TelegramError as error:
            return self._reply(error.body(), error.code)
        self.stats.requests += 1
        self.stats.methods[method] += 1
        self.requests.append((method, params))
        self.uploads.extend(files.values())

        if self._take_drop(method) and request.transport is not None:
            request.transport.abort()
            return web.Response()
        try:
            injected = self._take_failure(method, params)
            if injected is not None:
                raise injected
            handler = self._handlers.get(method)
            if handler is None:
                raise TelegramError(404, "Not Found")
            result = await handler(params, files)
        except TelegramError as error:
            if error.code == 429:
                self.stats.too_many_requests += 1
            self._signal()
            return self._reply(error.body(), error.code)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            # Malformed parameters: Telegram answers 400; the fake also keeps the cause so a test that
            # hit a gap in the fake can tell it apart from a real rejection.
            self.internal_errors.append((method, repr(error)))
            return self._reply(_bad(f"invalid parameters: {error!r}").body(), 400)
        self._signal()
        return self._reply({"ok": True, "result": _public(result)}, 200)

    async def _on_file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._reply(TelegramError(401, "Unauthorized").body(), 401)
        file_id = self._file_paths.get(request.match_info["path"])
        if file_id is None:
            return self._reply(TelegramError(404, "Not Found").body(), 404)
        return web.Response(
            body=self._file_bytes(self._files[file_id]), content_type="application/octet-stream"
        )

    @staticmethod
    def _reply(payload: JSON, status: int) -> web.Response:
        return web.json_response(payload, status=status)

    async def _read_params(self, request: web.Request) -> tuple[JSON, dict[str, _Upload]]:
        raw: dict[str, Any] = dict(request.query)
        files: dict[str, _Upload] = {}
        if request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    raise _bad("can't parse JSON encoded request body") from None
                if isinstance(body, dict):
                    raw.update(body)
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        files[key] = _Upload(key, value.filename, value.file.read(), value.content_type)
                    else:
                        raw[key] = value
        params = {
            key: _coerce(value) if isinstance(value, str) and key not in TEXT_PARAMS else value
            for key, value in raw.items()
        }
        return params, files

    def _take_drop(self, method: str) -> bool:
        for key in (method.lower(), "*"):
            if self._drops[key] > 0:
                self._drops[key] -= 1
                return True
        return False

    def _take_failure(self, method: str, params: JSON) -> TelegramError | None:
        for failure in self._failures:
            if failure.method not in (method.lower(), "*"):
                continue
            if failure.chat_id is not None and params.get("chat_id") != failure.chat_id:
                continue
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            return TelegramError(failure.code, failure.description, failure.parameters)
        return None

    # --- state helpers ------------------------------------------------------------------------------

    def _serial_number(self) -> int:
        self._serial += 1
        return self._serial

    def _media_group_id(self) -> str:
        return str(13_000_000_000_000_000 + self._serial_number())

    def _bot_user(self) -> JSON:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_first_name,
            "username": self.bot_username,
        }

    def _user(self, user_id: int) -> JSON:
        try:
            return self.users[user_id]
        except KeyError:
            raise AssertionError(f"unknown user {user_id}: call add_user first") from None

    def _lookup_user(self, user_id: int) -> JSON | None:
        user = self.users.get(user_id)
        return dict(user) if user else None

    def _store(self, chat_id: int, message: JSON) -> JSON:
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        stored = {"message_id": message_id, **message}
        self._messages.setdefault(chat_id, []).append(stored)
        self._by_id[(chat_id, message_id)] = stored
        self._signal()
        return stored

    def _push(self, kind: str, payload: JSON) -> JSON:
        self._last_update_id += 1
        update = {"update_id": self._last_update_id, kind: _public(payload)}
        self._pending.append(update)
        self.updates.append(update)
        self._signal()
        return update

    def _my_chat_member(self, chat: JSON, actor: JSON, old: str, new: str) -> None:
        def member(status: str) -> JSON:
            state: JSON = {"user": self._bot_user(), "status": status}
            if status == "kicked":
                state["until_date"] = 0
            return state

        self._push(
            "my_chat_member",
            {
                "chat": dict(chat),
                "from": dict(actor),
                "date": _now(),
                "old_chat_member": member(old),
                "new_chat_member": member(new),
            },
        )

    def _message_ref(self, message: JSON | tuple[int, int]) -> JSON:
        if isinstance(message, dict):
            key = (message["chat"]["id"], message["message_id"])
        else:
            key = (int(message[0]), int(message[1]))
        stored = self._by_id.get(key)
        if stored is None:
            raise AssertionError(f"no message {key[1]} in chat {key[0]}")
        return stored

    def _snapshot_for_reply(self, message: JSON) -> JSON:
        # Telegram nests replies one level deep only.
        snapshot = _public(message)
        snapshot.pop("reply_to_message", None)
        return snapshot

    def _incoming(
        self,
        user_id: int,
        chat_id: int | None,
        content: JSON,
        reply_to: JSON | int | tuple[int, int] | None = None,
    ) -> JSON:
        user = self._user(user_id)
        target = user_id if chat_id is None else chat_id
        if target in self._migrated:
            raise AssertionError(f"chat {target} was migrated to {self._migrated[target]}")
        chat = self.chats.get(target)
        if chat is None:
            raise AssertionError(f"unknown chat {target}: call add_group first")
        if chat["type"] == "private":
            self._started.add(user_id)
            if user_id in self._blocked:
                # Writing to a bot you blocked means pressing "Restart", which unblocks it.
                self.unblock(user_id)
        else:
            self._members.setdefault(target, set()).add(user_id)
        message: JSON = {"from": dict(user), "chat": dict(chat), "date": _now()}
        if reply_to is not None:
            if isinstance(reply_to, int):
                reply_to = (target, reply_to)
            message["reply_to_message"] = self._snapshot_for_reply(self._message_ref(reply_to))
        message.update(content)
        stored = self._store(target, message)
        self._push("message", stored)
        return stored

    def _incoming_caption(self, caption: str | None) -> JSON:
        if not caption:
            return {}
        plain, found = format_text(caption)
        return {"caption": plain, "caption_entities": found} if found else {"caption": plain}

    # --- files --------------------------------------------------------------------------------------

    def _new_file(
        self,
        kind: str,
        file_size: int,
        *,
        content: bytes | None = None,
        file_id: str | None = None,
        meta: JSON | None = None,
    ) -> JSON:
        prefix = FILE_KINDS[kind][0]
        record: JSON = {
            "file_id": file_id or prefix + secrets.token_urlsafe(48),
            "file_unique_id": "AQAD" + secrets.token_urlsafe(12),
            "file_size": file_size,
            "kind": kind,
            "content": content,
            "meta": dict(meta or {}),
        }
        self._files[record["file_id"]] = record
        return record

    def _new_photo(
        self, file_size: int, *, content: bytes | None = None, file_id: str | None = None
    ) -> list[JSON]:
        sizes = []
        for index, (width, height, share) in enumerate(PHOTO_SIZES):
            largest = index == len(PHOTO_SIZES) - 1
            record = self._new_file(
                "photo",
                file_size if largest else max(1, int(file_size * share)),
                content=content if largest else None,
                file_id=file_id if largest else None,
            )
            sizes.append(
                {
                    "file_id": record["file_id"],
                    "file_unique_id": record["file_unique_id"],
                    "file_size": record["file_size"],
                    "width": width,
                    "height": height,
                }
            )
        for size in sizes:
            self._photo_sets[size["file_id"]] = sizes
        return copy.deepcopy(sizes)

    def _media_json(self, record: JSON) -> JSON:
        kind = record["kind"]
        meta = record["meta"]
        body: JSON = {}
        if kind == "document":
            # A document's name is optional in the Bot API; one sent without a name has none.
            body = {"mime_type": meta.get("mime_type")}
            if meta.get("file_name"):
                body["file_name"] = meta["file_name"]
        elif kind == "video":
            body = {
                "duration": meta.get("duration", 10),
                "width": 1280,
                "height": 720,
                "mime_type": "video/mp4",
            }
        elif kind == "audio":
            body = {"duration": meta.get("duration", 30), "mime_type": "audio/mpeg"}
        elif kind == "voice":
            body = {"duration": meta.get("duration", 3), "mime_type": "audio/ogg"}
        elif kind == "video_note":
            body = {"duration": meta.get("duration", 5), "length": 240}
        elif kind == "sticker":
            body = {
                "width": 512,
                "height": 512,
                "emoji": meta.get("emoji", "👍"),
                "is_animated": False,
                "is_video": False,
                "type": "regular",
            }
        elif kind == "animation":
            body = {
                "file_name": meta.get("file_name", "animation.mp4"),
                "mime_type": "video/mp4",
                "duration": 3,
                "width": 320,
                "height": 240,
            }
        body = {k: v for k, v in body.items() if v is not None}
        body.update(
            file_id=record["file_id"], file_unique_id=record["file_unique_id"], file_size=record["file_size"]
        )
        return body

    def file_bytes(self, file_id: str) -> bytes:
        """What downloading the file gives."""
        return self._file_bytes(self._files[file_id])

    def _file_bytes(self, record: JSON) -> bytes:
        if record["content"] is not None:
            return bytes(record["content"])
        size = min(int(record["file_size"]), DOWNLOAD_LIMIT)
        pattern = f"fake {record['kind']} {record['file_unique_id']}\n".encode()
        return (pattern * (size // len(pattern) + 1))[:size]

    def _resolve_media(self, kind: str, value: Any, files: dict[str, _Upload]) -> Any:
        """A file parameter (file_id, URL or attach:// upload) as the message field Telegram stores."""
        upload: _Upload | None = None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = files.get(value[len("attach://") :])
            if upload is None:
                raise _bad(f"wrong HTTP URL specified: file {value} was not attached")
        elif value is None and kind in files:
            upload = files[kind]
        if upload is not None:
            if not upload.content:
                raise _bad("file must be non-empty")
            if kind == "photo":
                return self._new_photo(len(upload.content), content=upload.content)
            mime = upload.content_type or mimetypes.guess_type(upload.filename)[0]
            meta = {"file_name": upload.filename, "mime_type": mime}
            return self._media_json(
                self._new_file(kind, len(upload.content), content=upload.content, meta=meta)
            )
        if not value:
            raise _bad(f"there is no {kind} in the request")
        file_id = str(value)
        if kind == "photo" and file_id in self._photo_sets:
            return copy.deepcopy(self._photo_sets[file_id])
        record = self._files.get(file_id)
        if record is not None:
            if record["kind"] != kind:
                raise _bad(f"can't use file of type {record['kind'].title()} as {kind.title()}")
            return self._media_json(record)
        prefix = FILE_KINDS[kind][0]
        if file_id.startswith(("http://", "https://", prefix)):
            own_id = None if file_id.startswith("http") else file_id
            if kind == "photo":
                return self._new_photo(120_000, file_id=own_id)
            name = file_id.rsplit("/", 1)[-1] if own_id is None else f"file{FILE_KINDS[kind][2]}"
            meta = {"file_name": name, "mime_type": mimetypes.guess_type(name)[0]}
            return self._media_json(self._new_file(kind, 120_000, file_id=own_id, meta=meta))
        raise _bad("wrong file identifier/HTTP URL specified")

    # --- validation helpers -------------------------------------------------------------------------

    def _chat_id(self, value: Any) -> int:
        if value is None or value == "" or isinstance(value, bool):
            raise _bad("chat_id is empty")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            if value.startswith("@"):
                for chat in self.chats.values():
                    if str(chat.get("username", "")).lower() == value[1:].lower():
                        return int(chat["id"])
            elif re.fullmatch(r"-?\d+", value):
                return int(value)
        raise _bad("chat not found")

    def _chat(self, value: Any, *, acting: bool = True) -> JSON:
        """Resolve a chat the way Telegram gates a request to it; acting=False skips the membership and
        blocking checks (reading chat info works even where the bot can't write)."""
        chat_id = self._chat_id(value)
        if chat_id in self._migrated:
            raise _bad(
                "group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self._migrated[chat_id]},
            )
        chat = self.chats.get(chat_id)
        if chat is None:
            raise _bad("chat not found")
        if acting:
            if chat["type"] == "private":
                if chat_id in self._deactivated:
                    raise _forbidden("user is deactivated")
                if chat_id in self._blocked:
                    raise _forbidden("bot was blocked by the user")
                if chat_id not in self._started:
                    raise _forbidden("bot can't initiate conversation with a user")
            elif chat_id in self._bot_kicked:
                raise _forbidden(f"bot was kicked from the {chat['type']} chat")
            elif chat_id in self._bot_left:
                raise _forbidden(f"bot is not a member of the {chat['type']} chat")
        return chat

    def _formatted(
        self, text: Any, parse_mode: Any, entities: Any, *, limit: int, too_long: str
    ) -> tuple[str, list[JSON]]:
        mode = str(parse_mode) if parse_mode else None
        if mode and mode.lower() not in ("html", "markdown", "markdownv2"):
            raise _bad("unsupported parse_mode")
        if mode and mode.lower() != "html":
            # Markdown is not emulated: the text is kept as sent.
            mode = None
        raw = "" if text is None else str(text)
        try:
            plain, found = format_text(
                raw,
                parse_mode=mode,
                entities=entities if isinstance(entities, list) else None,
                strict_entities=self.strict_html_entities,
                user_lookup=self._lookup_user,
            )
        except HtmlParseError as error:
            raise _bad(f"can't parse entities: {error.detail}") from None
        if utf16_len(plain) > limit:
            raise _bad(too_long)
        return plain, found

    def _text_content(self, params: JSON) -> JSON:
        plain, found = self._formatted(
            params.get("text"),
            params.get("parse_mode"),
            params.get("entities"),
            limit=TEXT_LIMIT,
            too_long="message is too long",
        )
        if not plain:
            raise _bad("message text is empty")
        content: JSON = {"text": plain}
        if found:
            content["entities"] = found
        content["_html"] = params.get("text")
        return content

    def _caption_content(self, caption: Any, parse_mode: Any, entities: Any) -> JSON:
        if caption is None:
            return {}
        plain, found = self._formatted(
            caption, parse_mode, entities, limit=CAPTION_LIMIT, too_long="message caption is too long"
        )
        content: JSON = {"_html": caption}
        if plain:
            content["caption"] = plain
            if found:
                content["caption_entities"] = found
        return content

    def _markup(self, params: JSON) -> JSON:
        """Fields to store for reply_markup. The stored message keeps any kind under "reply_markup" so
        tests can see a ForceReply or reply keyboard, and non-inline ones also under "_reply_markup";
        replies to the bot carry only inline keyboards, as Telegram's do (see _public)."""
        markup = params.get("reply_markup")
        if markup is None or markup == "":
            return {}
        if not isinstance(markup, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in markup:
            return {"reply_markup": markup, "_reply_markup": markup}
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise _bad('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays')
        for row in rows:
            for button in row:
                if not isinstance(button, dict) or not button.get("text"):
                    raise _bad("text buttons are unallowed in the inline keyboard")
                if "callback_data" in button:
                    data = str(button["callback_data"])
                    if not data or len(data.encode()) > CALLBACK_DATA_LIMIT:
                        raise _bad("BUTTON_DATA_INVALID")
                if not any(key in button for key in INLINE_ACTIONS):
                    raise _bad("text buttons are unallowed in the inline keyboard")
                if "url" in button and checked_link(str(button["url"])) is None:
                    raise _bad(f"inline keyboard button URL '{button['url']}' is invalid: Wrong HTTP URL")
        if not any(rows):
            return {}
        return {"reply_markup": markup}

    def _reply_target(self, chat_id: int, params: JSON) -> JSON:
        reply = params.get("reply_parameters")
        if isinstance(reply, dict):
            message_id = reply.get("message_id")
            allow = _truthy(reply.get("allow_sending_without_reply"))
            source_chat = self._chat_id(reply["chat_id"]) if reply.get("chat_id") is not None else chat_id
        elif params.get("reply_to_message_id") is not None:
            message_id = params.get("reply_to_message_id")
            allow = _truthy(params.get("allow_sending_without_reply"))
            source_chat = chat_id
        else:
            return {}
        target = self._by_id.get((source_chat, int(message_id or 0)))
        if target is None:
            if allow:
                return {}
            raise _bad("message to be replied not found")
        if source_chat != chat_id:
            # Replies across chats are "external" in Telegram; the fake only validates them.
            return {}
        return {"reply_to_message": self._snapshot_for_reply(target)}

    def _flood(self, chat: JSON, count: int) -> None:
        """Raise 429 when this send would exceed Telegram's published limits."""
        if not self.enforce_limits:
            return
        now = self.clock()
        waits = []
        while self._all_sends and self._all_sends[0] <= now - GLOBAL_WINDOW:
            self._all_sends.popleft()
        overflow = len(self._all_sends) + count - GLOBAL_LIMIT
        if overflow > 0:
            waits.append(self._all_sends[min(overflow, len(self._all_sends)) - 1] + GLOBAL_WINDOW - now)
        sends = self._chat_sends.setdefault(chat["id"], deque())
        if chat["type"] == "private":
            # One message a second per private chat; an album counts once, as Telegram lets it through.
            if sends and sends[-1] > now - PRIVATE_INTERVAL:
                waits.append(sends[-1] + PRIVATE_INTERVAL - now)
        else:
            while sends and sends[0] <= now - GROUP_WINDOW:
                sends.popleft()
            overflow = len(sends) + count - GROUP_LIMIT
            if overflow > 0:
                waits.append(sends[min(overflow, len(sends)) - 1] + GROUP_WINDOW - now)
        if waits:
            retry_after = max(1, math.ceil(max(waits)))
            raise TelegramError(
                429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
            )

    def _count_sent(self, chat: JSON, count: int) -> None:
        now = self.clock()
        self._all_sends.extend([now] * count)
        sends = self._chat_sends.setdefault(chat["id"], deque())
        if chat["type"] == "private":
            sends.append(now)
        else:
            sends.extend([now] * count)

    def _bot_message(self, chat: JSON, content: JSON, envelope: JSON) -> JSON:
        message: JSON = {"from": self._bot_user(), "chat": dict(chat), "date": _now()}
        message.update(envelope)
        message.update(content)
        message["_edits"] = 0
        self.stats.sent_messages += 1
        return self._store(chat["id"], message)

    def _envelope(self, chat: JSON, params: JSON) -> JSON:
        envelope = self._reply_target(chat["id"], params)
        if _truthy(params.get("protect_content")):
            envelope["has_protected_content"] = True
        return envelope

    def _own_message(self, params: JSON, verb: str) -> JSON:
        if params.get("inline_message_id"):
            raise _bad(f"message to {verb} not found")
        chat = self._chat(params.get("chat_id"))
        message = self._by_id.get((chat["id"], int(params.get("message_id") or 0)))
        if message is None:
            raise _bad(f"message to {verb} not found")
        if message["from"]["id"] != self.bot_id:
            raise _bad("message can't be edited")
        return message

    def _apply_edit(self, message: JSON, changes: JSON, markup: JSON) -> JSON:
        if "_reply_markup" in markup:
            raise _bad("inline keyboard expected")
        new_markup = markup.get("reply_markup")
        # Only an inline keyboard belongs to the message; a ForceReply it was sent with does not count.
        current = message.get("reply_markup")
        current_inline = current if current and "inline_keyboard" in current else None
        content_same = all(message.get(k) == v for k, v in changes.items() if not k.startswith("_"))
        if content_same and current_inline == new_markup:
            raise _bad(NOT_MODIFIED)
        for key, value in changes.items():
            if value is None:
                message.pop(key, None)
            else:
                message[key] = value
        if new_markup is not None:
            message["reply_markup"] = new_markup
            message.pop("_reply_markup", None)
        elif current_inline is not None:
            message.pop("reply_markup", None)
        message["edit_date"] = _now()
        message["_edits"] = message.get("_edits", 0) + 1
        self._signal()
        return message

    # --- Bot API methods ----------------------------------------------------------------------------

    async def _api_get_me(self, params: JSON, files: dict[str, _Upload]) -> Any:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _api_log_out(self, params: JSON, files: dict[str, _Upload]) -> Any:
        self.logged_out = True
        return True

    async def _api_close(self, params: JSON, files: dict[str, _Upload]) -> Any:
        self.closed = True
        return True

    async def _api_set_webhook(self, params: JSON, files: dict[str, _Upload]) -> Any:
        url = str(params.get("url") or "")
        if not url:
            self.webhook = None
            return True
        if not url.startswith("https://"):
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not WEBHOOK_SECRET.fullmatch(str(secret)):
            raise _bad("bad webhook: secret token contains unallowed characters")
        if _truthy(params.get("drop_pending_updates")):
            self._pending.clear()
        # Pending updates then go to the webhook, one at a time, oldest first (see _push_loop).
        self.webhook = {key: value for key, value in params.items() if key != "certificate"}
        self._webhook_error = None
        if isinstance(params.get("allowed_updates"), list):
            self._set_allowed(params["allowed_updates"])
        return True

    async def _api_delete_webhook(self, params: JSON, files: dict[str, _Upload]) -> Any:
        self.webhook = None
        if _truthy(params.get("drop_pending_updates")):
            self._pending.clear()
        return True

    async def _api_get_webhook_info(self, params: JSON, files: dict[str, _Upload]) -> Any:
        info: JSON = {
            "url": (self.webhook or {}).get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending),
        }
        if self.webhook:
            info["max_connections"] = int(self.webhook.get("max_connections") or 40)
            if self._allowed_updates is not None:
                info["allowed_updates"] = sorted(self._allowed_updates)
            if self._webhook_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info

    def _webhook_next(self) -> JSON | None:
        if not self.webhook or self.webhook_forward is None:
            return None
        batch = self._deliverable(1)
        return batch[0] if batch else None

    async def _push_loop(self) -> None:
        """Telegram's side of a webhook: the oldest pending update is POSTed until it is answered 200,
        then the next; a failed call is tried again after a pause that grows, as Telegram does."""
        delay = 0.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                async with self._cond:
                    await self._cond.wait_for(lambda: self._closing or self._webhook_next() is not None)
                    if self._closing:
                        return
                    update = self._webhook_next()
                    hook = dict(self.webhook or {})
                if update is None:
                    continue
                status, reason = await self._post_webhook(session, hook, update)
                self.webhook_posts.append({"update_id": update["update_id"], "status": status})
                if status == 200:
                    delay = 0.0
                    self._delivered(update)
                    continue
                self._webhook_error = (_now(), f"Wrong response from the webhook: {status} {reason}".strip())
                delay = min(max(delay * 2, self.webhook_retry_delay), 1.0)
                self._signal()
                with contextlib.suppress(TimeoutError):
                    async with self._cond:
                        await asyncio.wait_for(self._cond.wait_for(lambda: self._closing), delay)

    async def _post_webhook(
        self, session: aiohttp.ClientSession, hook: JSON, update: JSON
    ) -> tuple[int, str]:
        parts = urlsplit(str(hook.get("url") or ""))
        if self._forward_to:
            self.webhook_forward = self._forward_to[len(self.webhook_posts) % len(self._forward_to)]
        url = f"{self.webhook_forward}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
        headers = {SECRET_HEADER: str(hook["secret_token"])} if hook.get("secret_token") else {}
        try:
            async with session.post(
                url, data=json.dumps(update), headers={**headers, "Content-Type": "application/json"}
            ) as response:
                await response.read()
                return response.status, response.reason or ""
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return 0, type(error).__name__

    def _delivered(self, update: JSON) -> None:
        for index, pending in enumerate(self._pending):
            if pending["update_id"] == update["update_id"]:
                del self._pending[index]
                break
        self.confirmed_update_id = max(self.confirmed_update_id, update["update_id"])
        self._signal()

    async def _api_set_my_commands(self, params: JSON, files: dict[str, _Upload]) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")
        for command in commands:
            name = str(command.get("command", "")) if isinstance(command, dict) else ""
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", "")).strip()) <= 256:
                raise _bad("command description must be non-empty")
        self.commands[self._commands_key(params)] = commands
        return True

    async def _api_delete_my_commands(self, params: JSON, files: dict[str, _Upload]) -> Any:
        self.commands.pop(self._commands_key(params), None)
        return True

    async def _api_get_my_commands(self, params: JSON, files: dict[str, _Upload]) -> Any:
        return self.commands.get(self._commands_key(params), [])

    @staticmethod
    def _commands_key(params: JSON) -> str:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True) + "|" + str(params.get("language_code") or "")

    async def _api_get_updates(self, params: JSON, files: dict[str, _Upload]) -> Any:
        if self.webhook:
            raise TelegramError(409, WEBHOOK_CONFLICT)
        offset = int(params.get("offset") or 0)
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = max(float(params.get("timeout") or 0), 0.0)
        if "allowed_updates" in params:
            self._set_allowed(params["allowed_updates"])
        self._confirm(offset)
        self._poll_ticket += 1
        ticket = self._poll_ticket
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._cond:
            # Wakes an older poll still waiting, which must now give way with a 409.
            self._cond.notify_all()
            while True:
                if ticket != self._poll_ticket:
                    raise TelegramError(409, POLL_CONFLICT)
                batch = self._deliverable(limit)
                remaining = deadline - loop.time()
                if batch or remaining <= 0 or self._closing:
                    return batch
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), remaining)

    def _set_allowed(self, allowed: Any) -> None:
        if isinstance(allowed, str):
            allowed = [allowed]
        if not allowed:
            self._allowed_updates = None
        elif isinstance(allowed, list):
            self._allowed_updates = frozenset(str(kind) for kind in allowed)

    def _is_allowed(self, kind: str) -> bool:
        if self._allowed_updates is None:
            return kind not in OPT_IN_UPDATES
        return kind in self._allowed_updates

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
            self.confirmed_update_id = max(self.confirmed_update_id, min(offset - 1, self._last_update_id))
        elif offset < 0:
            keep = -offset
            forgotten = self._pending[:-keep] if len(self._pending) > keep else []
            if forgotten:
                self.confirmed_update_id = max(self.confirmed_update_id, forgotten[-1]["update_id"])
            self._pending = self._pending[len(forgotten) :]

    def _deliverable(self, limit: int) -> list[JSON]:
        kept = []
        for update in self._pending:
            if self._is_allowed(_update_kind(update)):
                kept.append(update)
            else:
                self.dropped_updates.append(update)
        self._pending = kept
        return copy.deepcopy(kept[:limit])

    async def _api_send_message(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"))
        content = self._text_content(params)
        markup = self._markup(params)
        envelope = self._envelope(chat, params)
        self._flood(chat, 1)
        self._count_sent(chat, 1)
        return self._bot_message(chat, {**content, **markup}, envelope)

    async def _api_send_photo(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"))
        caption = self._caption_content(
            params.get("caption"), params.get("parse_mode"), params.get("caption_entities")
        )
        markup = self._markup(params)
        envelope = self._envelope(chat, params)
        self._flood(chat, 1)
        content: JSON = {"photo": self._resolve_media("photo", params.get("photo"), files), **caption}
        if _truthy(params.get("has_spoiler")):
            content["has_media_spoiler"] = True
        if _truthy(params.get("show_caption_above_media")):
            content["show_caption_above_media"] = True
        self._count_sent(chat, 1)
        return self._bot_message(chat, {**content, **markup}, envelope)

    async def _api_send_document(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"))
        caption = self._caption_content(
            params.get("caption"), params.get("parse_mode"), params.get("caption_entities")
        )
        markup = self._markup(params)
        envelope = self._envelope(chat, params)
        self._flood(chat, 1)
        content = {"document": self._resolve_media("document", params.get("document"), files), **caption}
        self._count_sent(chat, 1)
        return self._bot_message(chat, {**content, **markup}, envelope)

    async def _api_send_location(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"))
        try:
            latitude, longitude = float(params["latitude"]), float(params["longitude"])
        except (KeyError, TypeError, ValueError):
            raise _bad("wrong location specified") from None
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise _bad("wrong location specified")
        markup = self._markup(params)
        envelope = self._envelope(chat, params)
        self._flood(chat, 1)
        self._count_sent(chat, 1)
        location = {"latitude": latitude, "longitude": longitude}
        return self._bot_message(chat, {"location": location, **markup}, envelope)

    async def _api_send_media_group(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"))
        media = params.get("media")
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise _bad("wrong number of media items")
        items = []
        for item in media:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in ("photo", "video", "document", "audio"):
                raise _bad("unsupported media type in the media group")
            caption = self._caption_content(
                item.get("caption"), item.get("parse_mode"), item.get("caption_entities")
            )
            items.append((kind, item, caption))
        envelope = self._envelope(chat, params)
        self._flood(chat, len(items))
        resolved = [
            (kind, self._resolve_media(kind, item.get("media"), files), caption)
            for kind, item, caption in items
        ]
        group_id = self._media_group_id()
        self._count_sent(chat, len(items))
        sent = []
        for kind, body, caption in resolved:
            content = {kind: body, **caption}
            sent.append(self._bot_message(chat, content, {**envelope, "media_group_id": group_id}))
        return sent

    def _source_message(self, params: JSON, verb: str) -> JSON:
        source_chat = self._chat(params.get("from_chat_id"), acting=False)
        message = self._by_id.get((source_chat["id"], int(params.get("message_id") or 0)))
        if message is None:
            raise _bad(f"message to {verb} not found")
        if not any(key in message for key in CONTENT_KEYS):
            raise _bad(f"the message can't be {'copied' if verb == 'copy' else 'forwarded'}")
        return message

    async def _api_copy_message(self, params: JSON, files: dict[str, _Upload]) -> Any:
        source = self._source_message(params, "copy")
        chat = self._chat(params.get("chat_id"))
        content = {key: copy.deepcopy(source[key]) for key in CONTENT_KEYS if key in source}
        if "_html" in source:
            content["_html"] = source["_html"]
        if "caption" in params and any(key in source for key in MEDIA_KEYS):
            for key in ("caption", "caption_entities", "_html"):
                content.pop(key, None)
            content.update(
                self._caption_content(
                    params["caption"], params.get("parse_mode"), params.get("caption_entities")
                )
            )
        markup = self._markup(params)
        envelope = self._envelope(chat, params)
        self._flood(chat, 1)
        self._count_sent(chat, 1)
        copied = self._bot_message(chat, {**content, **markup}, envelope)
        copied["_copied_from"] = (source["chat"]["id"], source["message_id"])
        return {"message_id": copied["message_id"]}

    async def _api_forward_message(self, params: JSON, files: dict[str, _Upload]) -> Any:
        source = self._source_message(params, "forward")
        chat = self._chat(params.get("chat_id"))
        content = {key: copy.deepcopy(source[key]) for key in CONTENT_KEYS if key in source}
        origin = source.get("forward_origin")
        if origin is None:
            if source["chat"]["type"] == "channel":
                origin = {
                    "type": "channel",
                    "date": source["date"],
                    "chat": dict(source["chat"]),
                    "message_id": source["message_id"],
                }
            else:
                origin = {"type": "user", "date": source["date"], "sender_user": dict(source["from"])}
        envelope = {"forward_origin": copy.deepcopy(origin)}
        if _truthy(params.get("protect_content")):
            envelope["has_protected_content"] = True
        self._flood(chat, 1)
        self._count_sent(chat, 1)
        return self._bot_message(chat, content, envelope)

    async def _api_edit_message_text(self, params: JSON, files: dict[str, _Upload]) -> Any:
        message = self._own_message(params, "edit")
        if "text" not in message:
            raise _bad("there is no text in the message to edit")
        content = self._text_content(params)
        changes = {"text": content["text"], "entities": content.get("entities"), "_html": content["_html"]}
        return self._apply_edit(message, changes, self._markup(params))

    async def _api_edit_message_caption(self, params: JSON, files: dict[str, _Upload]) -> Any:
        message = self._own_message(params, "edit")
        if not any(key in message for key in MEDIA_KEYS):
            raise _bad("there is no caption in the message to edit")
        caption = self._caption_content(
            params.get("caption", ""), params.get("parse_mode"), params.get("caption_entities")
        )
        changes = {
            "caption": caption.get("caption"),
            "caption_entities": caption.get("caption_entities"),
            "_html": caption.get("_html"),
        }
        return self._apply_edit(message, changes, self._markup(params))

    async def _api_edit_message_reply_markup(self, params: JSON, files: dict[str, _Upload]) -> Any:
        message = self._own_message(params, "edit")
        return self._apply_edit(message, {}, self._markup(params))

    async def _api_delete_message(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"), acting=False)
        self._delete(chat["id"], int(params.get("message_id") or 0))
        return True

    async def _api_delete_messages(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"), acting=False)
        ids = params.get("message_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise _bad("message identifiers are not specified")
        for message_id in ids:
            if (chat["id"], int(message_id)) in self._by_id:
                self._delete(chat["id"], int(message_id))
        return True

    def _delete(self, chat_id: int, message_id: int) -> None:
        message = self._by_id.pop((chat_id, message_id), None)
        if message is None:
            raise _bad("message to delete not found")
        self._messages[chat_id].remove(message)
        self.deleted.append(message)
        self._signal()

    async def _api_answer_callback_query(self, params: JSON, files: dict[str, _Upload]) -> Any:
        entry = self._callbacks.get(str(params.get("callback_query_id") or ""))
        if entry is None or entry["answer"] is not None:
            raise _bad(QUERY_TOO_OLD)
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        entry["answer"] = {
            "text": text,
            "show_alert": _truthy(params.get("show_alert")),
            "url": params.get("url"),
            "cache_time": int(params.get("cache_time") or 0),
        }
        return True

    async def _api_send_chat_action(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"))
        action = str(params.get("action") or "")
        if action not in CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self.chat_actions.append((chat["id"], action))
        return True

    async def _api_get_chat(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"), acting=False)
        return {
            **chat,
            "accent_color_id": chat["id"] % 7,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }

    async def _api_get_file(self, params: JSON, files: dict[str, _Upload]) -> Any:
        record = self._files.get(str(params.get("file_id") or ""))
        if record is None:
            raise _bad("invalid file_id")
        if record["file_size"] > DOWNLOAD_LIMIT:
            raise _bad("file is too big")
        if "file_path" not in record:
            _, folder, extension = FILE_KINDS[record["kind"]]
            name = record["meta"].get("file_name")
            if name and "." in name:
                extension = "." + name.rsplit(".", 1)[1]
            record["file_path"] = f"{folder}/file_{self._serial_number()}{extension}"
            self._file_paths[record["file_path"]] = record["file_id"]
        return {
            "file_id": record["file_id"],
            "file_unique_id": record["file_unique_id"],
            "file_size": record["file_size"],
            "file_path": record["file_path"],
        }

    async def _api_leave_chat(self, params: JSON, files: dict[str, _Upload]) -> Any:
        chat = self._chat(params.get("chat_id"))
        if chat["type"] == "private":
            raise _bad("chat member status can't be changed in private chats")
        self._bot_left.add(chat["id"])
        self._my_chat_member(chat, self._bot_user(), "member", "left")
        return True
