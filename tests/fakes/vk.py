"""FakeVK: a loopback VK API and Bots Long Poll server the real vkbottle client talks to over HTTP, plus
the simulated people writing to the community and every message of every conversation for tests to inspect."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import json
import re
import secrets
import struct
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .base import FakeServer

__all__ = ["FakeStats", "FakeVK", "VKError"]

JSON = dict[str, Any]

DEFAULT_TOKEN = "vk1.a.test-group-token"
DEFAULT_GROUP_ID = 222000
API_VERSION = "5.199"
TEXT_LIMIT = 4096
HISTORY = 1000
DEDUP_WINDOW = 3600.0
RATE_WINDOW, RATE_LIMIT = 1.0, 20
LONG_POLL_MAX_WAIT = 90.0
UPLOAD_SERVER = 12345
MESSAGES_ALBUM = -64  # where photos uploaded for messages land
INCOMING_ALBUM = -3  # where VK files the photos people attach to messages
ATTACHMENT_LIMIT = 10
FIRST_PHOTO_ID = 457239017
LANG_IDS = {"ru": 0, "uk": 1, "be": 2, "en": 3, "es": 4, "fi": 5, "de": 6, "it": 7}
CLIENT_BUTTON_ACTIONS = [
    "text",
    "vkpay",
    "open_app",
    "location",
    "open_link",
    "callback",
    "intent_subscribe",
    "intent_unsubscribe",
]
KEYBOARD_ACTIONS = frozenset({"text", "open_link", "location", "vkpay", "open_app", "callback"})
LABELLED_ACTIONS = frozenset({"text", "open_link", "open_app", "callback"})
BUTTON_COLORS = frozenset({"primary", "secondary", "negative", "positive"})
# (rows, buttons in a row, buttons in all)
INLINE_LIMITS = (6, 5, 10)
KEYBOARD_LIMITS = (10, 5, 40)
LABEL_LIMIT = 40
PAYLOAD_LIMIT = 255
SNACKBAR_LIMIT = 90
# (size type, width, height); VK offers more sizes for what people send than for what a bot uploads.
INCOMING_SIZES = (
    ("s", 75, 56),
    ("m", 130, 97),
    ("x", 604, 453),
    ("y", 807, 605),
    ("z", 1280, 960),
    ("w", 2560, 1920),
)
UPLOADED_SIZES = (("s", 75, 56), ("m", 130, 97), ("x", 604, 453), ("y", 807, 605), ("w", 1280, 960))
ERROR_MESSAGES = {
    1: "Unknown error occurred",
    3: "Unknown method passed.",
    5: "User authorization failed: invalid access_token (4).",
    6: "Too many requests per second",
    8: "Invalid request: v (version) is required",
    9: "Flood control",
    10: "Internal server error",
    15: "Access denied",
    100: "One of the parameters specified was missing or invalid",
    121: "Invalid hash",
    901: "Can't send messages for users without permission",
    911: "Keyboard format is invalid",
    914: "Message is too long",
    936: "Contact not found",
}
BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
# Parameters VK reads as numbers; everything else stays the string that was sent.
INT_PARAMS = frozenset(
    {
        "peer_id",
        "user_id",
        "group_id",
        "random_id",
        "reply_to",
        "message_id",
        "conversation_message_id",
        "server",
        "dont_parse_links",
        "disable_mentions",
        "keep_forward_messages",
        "keep_snippets",
    }
)
METHODS = (
    "docs.getMessagesUploadServer",
    "docs.save",
    "groups.getById",
    "groups.getLongPollServer",
    "messages.send",
    "messages.edit",
    "messages.sendMessageEventAnswer",
    "messages.getById",
    "messages.getByConversationMessageId",
    "messages.getConversationsById",
    "photos.getMessagesUploadServer",
    "photos.saveMessagesPhoto",
    "users.get",
)
CANONICAL = {name.lower(): name for name in METHODS}
# What VK will not take as a document.
FORBIDDEN_DOC_TYPES = frozenset({"exe", "apk", "bat", "cmd", "com", "msi", "scr", "sh"})
# Names for fault injection on the endpoints that are not API methods.
LONG_POLL, UPLOAD = "longpoll", "upload"


class VKError(Exception):
    """An API error; VK answers it with HTTP 200 and an "error" object."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, ERROR_MESSAGES[1])
        super().__init__(self.message)

    def body(self, method: str, params: JSON) -> JSON:
        request_params = [{"key": "method", "value": method}, {"key": "oauth", "value": "1"}]
        request_params += [{"key": k, "value": str(v)} for k, v in params.items() if k != "access_token"]
        return {
            "error": {"error_code": self.code, "error_msg": self.message, "request_params": request_params}
        }


def _invalid(detail: str) -> VKError:
    return VKError(100, f"{ERROR_MESSAGES[100]}: {detail}")


def _bad_keyboard(detail: str) -> VKError:
    return VKError(911, f"{ERROR_MESSAGES[911]}: {detail}")


@dataclass
class FakeStats:
    requests: int = 0
    long_polls: int = 0
    uploads: int = 0
    sent_messages: int = 0
    duplicate_random_id: int = 0
    too_many_requests: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    errors: Counter[int] = field(default_factory=Counter)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class _Failure:
    method: str
    code: int
    message: str | None
    times: int
    peer_id: int | None


def _now() -> int:
    return int(time.time())


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


@functools.cache
def _jpeg(note: str) -> bytes:
    """An 8x8 grey baseline JPEG that real decoders open; the comment segment makes each one distinct."""
    one_code = b"\x01" + b"\x00" * 15 + b"\x00"  # a single one-bit code for symbol 0
    return b"".join(
        (
            b"\xff\xd8",
            _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
            _segment(0xFE, note.encode()),
            _segment(0xDB, b"\x00" + b"\x01" * 64),
            _segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00"),
            _segment(0xC4, b"\x00" + one_code),
            _segment(0xC4, b"\x10" + one_code),
            _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"),
            b"\x3f",  # DC difference 0, then end of block, padded with ones
            b"\xff\xd9",
        )
    )


def _doc_bytes(title: str, size: int) -> bytes:
    head = f"%fake document {title}\n".encode()
    return (head * (size // len(head) + 1))[:size]


def _payload_dict(payload: Any) -> JSON | None:
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    return payload if isinstance(payload, dict) else None


class FakeVK(FakeServer):
    """The fake VK API for one community. Simulated people act through the async helpers (send_text,
    press...), the bot under test talks HTTP, and tests read what happened (messages, calls, stats)."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        group_id: int = DEFAULT_GROUP_ID,
        group_name: str = "Решаем вместе",
        *,
        history: int = HISTORY,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.group_id = group_id
        self.group_name = group_name
        self.history = history
        super().__init__(host, port)

        self.users: dict[int, JSON] = {}
        self.requests: list[tuple[str, JSON]] = []
        self.events: list[JSON] = []
        self.lp_requests: list[int] = []
        self.uploaded: dict[int, bytes] = {}
        self.stats = FakeStats()
        self.enforce_limits = False
        self.clock: Callable[[], float] = time.monotonic

        self._langs: dict[int, str] = {}
        self._forbidden: set[int] = set()
        self._messages: dict[int, list[JSON]] = {}
        self._by_id: dict[int, JSON] = {}
        self._last_message_id = 0
        self._last_cmid: dict[int, int] = {}
        self._version = 1_000_000
        self._random_ids: dict[tuple[int, int], tuple[int, float]] = {}
        self._photos: dict[int, JSON] = {}
        self._photo_bytes: dict[int, bytes] = {}
        self._next_photo_id = FIRST_PHOTO_ID
        self._upload_sigs: set[str] = set()
        self._uploads: dict[str, bytes] = {}
        # Documents: uploaded files waiting for docs.save (token → name, bytes), and those saved.
        self._doc_uploads: dict[str, tuple[str, bytes]] = {}
        self.docs: dict[int, JSON] = {}
        # Documents people attach to their messages: id → (title, size); their bytes are made when fetched.
        self._incoming_docs: dict[int, tuple[str, int]] = {}
        self._upload_secret = secrets.token_hex(16)
        self._presses: dict[str, JSON] = {}
        self._serial = 0

        self._lp_events: deque[tuple[int, JSON]] = deque(maxlen=history)
        # The community's Callback API server: {"url", "secret"}; None: events go to long poll only.
        self.callback: JSON | None = None
        # Every callback call of an event: {"event_id", "status", "text"} (status 0: no HTTP answer).
        self.callback_posts: list[JSON] = []
        self.callback_retry_delay = 0.05
        self._callback_queue: deque[JSON] = deque()
        self._next_ts = 1
        self._keys: set[str] = set()

        self._failures: list[_Failure] = []
        self._drops: Counter[str] = Counter()
        self._html: Counter[str] = Counter()
        self._recent_calls: deque[float] = deque()

        self._handlers: dict[str, Callable[[JSON], Any]] = {
            name: getattr(self, "_api_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name.replace(".", "_")).lower())
            for name in METHODS
        }

    # --- lifecycle -----------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/method/{method}", self._on_method)
        app.router.add_route("*", "/lp", self._on_long_poll)
        app.router.add_post("/upload/photo", self._on_upload)
        app.router.add_post("/upload/doc", self._on_doc_upload)
        app.router.add_get("/photos/{name}", self._on_photo)
        app.router.add_get("/docs/{doc_id}/{name}", self._on_doc)

    @property
    def api_url(self) -> str:
        """What to put in vkbottle's `API.API_URL`: it appends the method name."""
        return f"{self.base_url}/method/"

    # --- switches tests flip ---------------------------------------------------------------------------

    def forbid(self, user_id: int) -> None:
        """The person disallows messages from the community: sends to them fail with 901 until allow()
        (writing to the community does not lift it), and the bot gets a message_deny event."""
        self._user(user_id)
        if user_id in self._forbidden:
            return
        self._forbidden.add(user_id)
        self._push("message_deny", {"user_id": user_id})

    def allow(self, user_id: int) -> None:
        self._user(user_id)
        if user_id not in self._forbidden:
            return
        self._forbidden.discard(user_id)
        self._push("message_allow", {"user_id": user_id, "key": ""})

    def expire_keys(self) -> None:
        """Every long poll key handed out so far stops working: the next check answers {"failed": 2}."""
        self._keys.clear()

    def fail_next(
        self,
        method: str,
        *,
        error_code: int,
        error_msg: str | None = None,
        times: int = 1,
        peer_id: int | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` ("*" for any), optionally only those addressed to
        `peer_id`, with this error instead."""
        self._failures.append(_Failure(method.lower(), error_code, error_msg, times, peer_id))

    def html_next(self, method: str, times: int = 1) -> None:
        """Answer the next `times` calls with the HTML error page a proxy in front of VK sends (HTTP 502).
        Besides API methods, "longpoll" and "upload" name those endpoints."""
        self._html[method.lower()] += times

    def drop_next(self, method: str, times: int = 1) -> None:
        """Close the connection without answering the next `times` calls ("longpoll" and "upload" too)."""
        self._drops[method.lower()] += times

    # --- the simulated people ----------------------------------------------------------------------

    def add_user(self, user_id: int, first_name: str = "User", last_name: str = "", lang: str = "ru") -> JSON:
        """A person who can write to the community; `lang` is their client's language (client_info)."""
        if user_id <= 0:
            raise ValueError("VK user ids are positive")
        if lang not in LANG_IDS:
            raise ValueError(f"lang must be one of {sorted(LANG_IDS)}")
        user: JSON = {
            "id": user_id,
            "first_name": first_name,
            "last_name": last_name,
            "can_access_closed": True,
            "is_closed": False,
        }
        self.users[user_id] = user
        self._langs[user_id] = lang
        return user

    async def send_text(
        self,
        user_id: int,
        text: str,
        *,
        reply_to: JSON | int | None = None,
        payload: JSON | str | None = None,
    ) -> JSON:
        """A text message; `payload` is what a text button (or VK's own "Start" button) adds."""
        extra: JSON = {}
        if payload is not None:
            extra["payload"] = payload if isinstance(payload, str) else _dumps(payload)
        return self._incoming(user_id, text, [], reply_to, extra)

    async def send_photos(
        self, user_id: int, count: int = 1, text: str = "", *, reply_to: JSON | int | None = None
    ) -> JSON:
        """One message carrying `count` photos: a VK album is a single message, unlike Telegram's."""
        if not 1 <= count <= ATTACHMENT_LIMIT:
            raise ValueError(f"a VK message carries 1 to {ATTACHMENT_LIMIT} photos")
        photos = [self._new_photo(user_id, INCOMING_ALBUM, INCOMING_SIZES) for _ in range(count)]
        attachments = [{"type": "photo", "photo": photo} for photo in photos]
        return self._incoming(user_id, text, attachments, reply_to)

    async def send_location(self, user_id: int, latitude: float, longitude: float, text: str = "") -> JSON:
        geo = {
            "type": "point",
            "coordinates": {"latitude": latitude, "longitude": longitude},
            "place": {
                "title": f"{latitude:.5f}, {longitude:.5f}",
                "latitude": latitude,
                "longitude": longitude,
                "country": "Россия",
                "city": "Москва",
            },
        }
        return self._incoming(user_id, text, [], None, {"geo": geo})

    async def send_sticker(self, user_id: int, sticker_id: int = 9046) -> JSON:
        images = [
            {"url": f"{self.base_url}/stickers/{sticker_id}_{side}.png", "width": side, "height": side}
            for side in (64, 128, 256, 352, 512)
        ]
        sticker = {
            "product_id": 279,
            "sticker_id": sticker_id,
            "images": images,
            "images_with_background": copy.deepcopy(images),
            "inner_type": "base_sticker_new",
            "is_allowed": True,
        }
        return self._incoming(user_id, "", [{"type": "sticker", "sticker": sticker}])

    async def send_voice(self, user_id: int, duration: int = 3) -> JSON:
        item_id = self._serial_number()
        voice = {
            "id": item_id,
            "owner_id": user_id,
            "duration": duration,
            "waveform": [0, 3, 9, 17, 24, 17, 9, 3, 0] * 4,
            "link_ogg": f"{self.base_url}/voice/{item_id}.ogg",
            "link_mp3": f"{self.base_url}/voice/{item_id}.mp3",
            "access_key": secrets.token_hex(9),
        }
        return self._incoming(user_id, "", [{"type": "audio_message", "audio_message": voice}])

    async def send_doc(
        self, user_id: int, title: str = "scan.pdf", size: int = 50_000, text: str = ""
    ) -> JSON:
        return self._incoming(user_id, text, [self.doc_attachment(user_id, title, size)])

    async def send_message(
        self,
        user_id: int,
        text: str = "",
        attachments: list[JSON] | None = None,
        *,
        forward: list[JSON] | None = None,
        reply_to: JSON | int | None = None,
    ) -> JSON:
        """One message with any attachments (built by the *_attachment helpers) and forwarded messages
        (built by `forwarded`), as one VK message carries them together."""
        if len(attachments or []) > ATTACHMENT_LIMIT:
            raise ValueError(f"a VK message carries at most {ATTACHMENT_LIMIT} attachments")
        extra = {"fwd_messages": copy.deepcopy(forward)} if forward else None
        return self._incoming(user_id, text, list(attachments or []), reply_to, extra)

    async def edit_message(self, user_id: int, message: JSON | int, text: str) -> JSON:
        """The person edits a message they sent: VK changes it and sends a message_edit event, whose
        object is the message as it now stands (no client_info, unlike message_new)."""
        stored = self._message_ref(message)
        if stored["from_id"] != user_id or stored["peer_id"] != user_id:
            raise AssertionError(f"message {stored['id']} is not {user_id}'s own in their conversation")
        stored["text"] = text
        self._version += 1
        stored["_version"] = self._version
        stored["_edits"] += 1
        stored["_update_time"] = _now()
        self._push("message_edit", self._vk_message(stored))
        return stored

    def photo_attachment(self, user_id: int) -> JSON:
        """A photo as a person attaches it to a message."""
        return {"type": "photo", "photo": self._new_photo(user_id, INCOMING_ALBUM, INCOMING_SIZES)}

    def doc_attachment(self, user_id: int, title: str = "scan.pdf", size: int = 50_000) -> JSON:
        """A document as a person attaches it; its `url` gives `size` bytes, as VK's link to the file."""
        item_id = self._serial_number()
        ext = title.rsplit(".", 1)[1].lower() if "." in title else ""
        # VK's document kinds: 1 text, 2 archive, 3 gif, 4 image, 5 audio, 6 video, 7 e-book, 8 other.
        kind = {"pdf": 1, "doc": 1, "docx": 1, "txt": 1, "zip": 2, "rar": 2, "gif": 3, "png": 4, "jpg": 4}
        self._incoming_docs[item_id] = (title, size)
        doc = {
            "id": item_id,
            "owner_id": user_id,
            "title": title,
            "size": size,
            "ext": ext,
            "date": _now(),
            "type": kind.get(ext, 8),
            "url": f"{self.base_url}/docs/{item_id}/{urllib.parse.quote(title)}",
            "access_key": secrets.token_hex(9),
        }
        return {"type": "doc", "doc": doc}

    def video_attachment(self, user_id: int, title: str = "Видео") -> JSON:
        item_id = self._serial_number()
        video = {
            "id": item_id,
            "owner_id": user_id,
            "title": title,
            "description": "",
            "duration": 12,
            "date": _now(),
            "width": 1280,
            "height": 720,
            "type": "video",
            "access_key": secrets.token_hex(9),
            "image": [
                {"url": f"{self.base_url}/video/{item_id}_{w}.jpg", "width": w, "height": h}
                for w, h in ((130, 96), (320, 240), (800, 450))
            ],
        }
        return {"type": "video", "video": video}

    def forwarded(
        self,
        from_id: int,
        text: str = "",
        attachments: list[JSON] | None = None,
        forward: list[JSON] | None = None,
    ) -> JSON:
        """A message from another conversation as `fwd_messages` shows it when a person forwards it: its
        author, date, text and attachments, its own forwards nested; no id, since the community cannot
        see that conversation."""
        message: JSON = {
            "date": _now() - 3600,
            "from_id": from_id,
            "text": text,
            "attachments": copy.deepcopy(attachments or []),
            "conversation_message_id": self._serial_number() % 10_000,
            "peer_id": from_id,
        }
        if forward:
            message["fwd_messages"] = copy.deepcopy(forward)
        return message

    async def send_wall(self, user_id: int, text: str = "") -> JSON:
        """A repost of a community wall post into the conversation."""
        wall = {
            "id": self._serial_number(),
            "owner_id": -1,
            "from_id": -1,
            "date": _now() - 86_400,
            "post_type": "post",
            "text": "Новости района",
            "attachments": [],
            "comments": {"count": 0, "can_post": 1},
            "likes": {"count": 0, "user_likes": 0, "can_like": 1, "can_publish": 1},
            "reposts": {"count": 1, "user_reposted": 0},
        }
        return self._incoming(user_id, text, [{"type": "wall", "wall": wall}])

    async def send_audio(self, user_id: int, text: str = "") -> JSON:
        audio = {
            "id": self._serial_number(),
            "owner_id": 371745461,
            "artist": "Кино",
            "title": "Группа крови",
            "duration": 287,
            "date": _now(),
            "url": "",
        }
        return self._incoming(user_id, text, [{"type": "audio", "audio": audio}])

    async def press(self, user_id: int, message: JSON | int, payload: JSON) -> str:
        """The person taps a callback button of a community message; returns the event_id to answer.

        The payload is not checked against the buttons: a client with a stale view, or a forged request,
        can send any payload, so the bot must not trust it."""
        stored = self._message_ref(message)
        if stored["from_id"] != -self.group_id:
            raise AssertionError("only the community's messages carry buttons")
        if stored["peer_id"] != user_id:
            raise AssertionError(f"message {stored['id']} is not in the conversation with {user_id}")
        actions = [b.get("action", {}).get("type") for b in self._buttons(stored)]
        if "callback" not in actions:
            raise AssertionError(f"message {stored['id']} has no callback buttons")
        self._user(user_id)
        event_id = secrets.token_hex(6)
        obj = {
            "user_id": user_id,
            "peer_id": stored["peer_id"],
            "event_id": event_id,
            "payload": payload,
            "conversation_message_id": stored["conversation_message_id"],
        }
        self._presses[event_id] = {"object": obj, "answer": None}
        self._push("message_event", obj)
        return event_id

    def event_answer(self, event_id: str) -> JSON | None:
        """The event_data the bot answered a button press with ({} for an empty answer), None until then."""
        entry = self._presses.get(event_id)
        return None if entry is None else entry["answer"]

    def push_event(self, kind: str, obj: JSON) -> JSON:
        """Any other Bots Long Poll event, as VK would deliver it."""
        return self._push(kind, obj)

    def set_callback(self, url: str, secret: str) -> None:
        """Add a Callback API server: every event from now on is also POSTed there, with the secret,
        until it answers "ok" (an event not confirmed is sent again, as VK does)."""
        self.callback = {"url": url, "secret": secret}
        self._signal()

    async def callback_post(self, url: str, body: JSON) -> tuple[int, str]:
        """One call to a Callback API server as VK makes it; returns (HTTP status, response text)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            return await self._post_callback(session, url, body)

    async def confirm_callback(self, url: str) -> tuple[int, str]:
        """The confirmation request VK sends when a server address is added to the community."""
        return await self.callback_post(url, {"type": "confirmation", "group_id": self.group_id})

    def replay(self, event: JSON) -> JSON:
        """Deliver an event again under a new ts, same event_id: VK redelivers when unsure it arrived."""
        again = copy.deepcopy(event)
        self._deliver(again)
        return again

    async def replay_last(self, count: int = 1) -> list[JSON]:
        return [self.replay(event) for event in self.events[-count:]]

    # --- inspecting what the bot did ---------------------------------------------------------------

    def messages(self, peer_id: int) -> list[JSON]:
        return list(self._messages.get(peer_id, []))

    def bot_messages(self, peer_id: int) -> list[JSON]:
        return [m for m in self._messages.get(peer_id, []) if m["from_id"] == -self.group_id]

    def get_message(self, message_id: int) -> JSON | None:
        return self._by_id.get(message_id)

    def calls(self, method: str) -> list[JSON]:
        """Params of every request to one method, in order (access_token left out)."""
        wanted = method.lower()
        return [params for name, params in self.requests if name.lower() == wanted]

    async def wait_for_message(
        self,
        peer_id: int,
        predicate: Callable[[JSON], bool] | None = None,
        timeout: float = 5.0,
        *,
        after: int = 0,
    ) -> JSON:
        """The first bot message in the conversation (id > after) matching the predicate, waiting for it."""
        found: list[JSON] = []

        def check() -> bool:
            for message in self.bot_messages(peer_id):
                if message["id"] > after and (predicate is None or predicate(message)):
                    found.append(message)
                    return True
            return False

        try:
            await self.wait_until(check, timeout)
        except AssertionError:
            seen = [(m["id"], m["text"]) for m in self.bot_messages(peer_id)]
            # Where the bot's long poll stands tells "never got the event" from "got it, did not answer".
            polls = f"long polls asked ts {self.lp_requests[-3:]}, next event ts {self._next_ts}"
            raise AssertionError(
                f"no matching bot message for peer {peer_id} within {timeout}s; bot messages: {seen}; {polls}"
            ) from None
        return found[0]

    @classmethod
    def button_payloads(cls, message: JSON) -> list[JSON]:
        """Payloads of the keyboard buttons, row by row, parsed; buttons without one are left out."""
        payloads = (_payload_dict(b.get("action", {}).get("payload")) for b in cls._buttons(message))
        return [p for p in payloads if p is not None]

    @classmethod
    def button_labels(cls, message: JSON) -> list[str]:
        return [str(b.get("action", {}).get("label", "")) for b in cls._buttons(message)]

    @staticmethod
    def _buttons(message: JSON) -> list[JSON]:
        rows = (message.get("keyboard") or {}).get("buttons") or []
        return [button for row in rows for button in row if isinstance(button, dict)]

    # --- HTTP plumbing -------------------------------------------------------------------------------

    async def _on_method(self, request: web.Request) -> web.StreamResponse:
        raw_method = request.match_info["method"]
        method = CANONICAL.get(raw_method.lower(), raw_method)
        params = await self._read_params(request)
        self.stats.requests += 1
        self.stats.methods[method] += 1
        self.requests.append((method, {k: v for k, v in params.items() if k != "access_token"}))
        if self._take(self._drops, method) and request.transport is not None:
            request.transport.abort()
            return web.Response()
        if self._take(self._html, method):
            return self._html_page()
        try:
            result = await self._call(method, params)
        except VKError as error:
            self.stats.errors[error.code] += 1
            if error.code == 6:
                self.stats.too_many_requests += 1
            self._signal()
            return web.json_response(error.body(method, params), dumps=_dumps)
        self._signal()
        return web.json_response({"response": result}, dumps=_dumps)

    async def _call(self, method: str, params: JSON) -> Any:
        if params.get("access_token") != self.token:
            raise VKError(5)
        if not params.get("v"):
            raise VKError(8)
        handler = self._handlers.get(method)
        if handler is None:
            raise VKError(3)
        injected = self._take_failure(method, params)
        if injected is not None:
            raise injected
        self._rate_limit()
        return await handler(params)

    async def _read_params(self, request: web.Request) -> JSON:
        """Query string and body together, as VK reads them; files in a multipart body are ignored."""
        raw: dict[str, Any] = dict(request.query)
        if request.can_read_body and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, str):
                    raw[key] = value
                elif isinstance(value, bytes | bytearray):
                    raw[key] = bytes(value).decode(errors="replace")
        return {
            key: int(value) if key in INT_PARAMS and re.fullmatch(r"-?\d+", value) else value
            for key, value in raw.items()
        }

    @staticmethod
    def _html_page() -> web.Response:
        return web.Response(status=502, text=BAD_GATEWAY_PAGE, content_type="text/html")

    @staticmethod
    def _take(counter: Counter[str], method: str) -> bool:
        for key in (method.lower(), "*"):
            if counter[key] > 0:
                counter[key] -= 1
                return True
        return False

    def _take_failure(self, method: str, params: JSON) -> VKError | None:
        for failure in self._failures:
            if failure.method not in (method.lower(), "*"):
                continue
            if (
                failure.peer_id is not None
                and params.get("peer_id", params.get("user_id")) != failure.peer_id
            ):
                continue
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            return VKError(failure.code, failure.message)
        return None

    def _rate_limit(self) -> None:
        """VK lets a community token make 20 calls a second; only calls that got through count."""
        if not self.enforce_limits:
            return
        now = self.clock()
        while self._recent_calls and self._recent_calls[0] <= now - RATE_WINDOW:
            self._recent_calls.popleft()
        if len(self._recent_calls) >= RATE_LIMIT:
            raise VKError(6)
        self._recent_calls.append(now)

    async def _on_long_poll(self, request: web.Request) -> web.StreamResponse:
        params = await self._read_params(request)
        self.stats.long_polls += 1
        if self._take(self._drops, LONG_POLL) and request.transport is not None:
            request.transport.abort()
            return web.Response()
        if self._take(self._html, LONG_POLL):
            return self._html_page()
        if params.get("act") != "a_check" or params.get("key") not in self._keys:
            return web.json_response({"failed": 2})
        try:
            ts = int(params.get("ts", ""))
        except ValueError:
            return web.json_response({"failed": 1, "ts": str(self._oldest_ts())})
        self.lp_requests.append(ts)
        # Tests wait on this to know the bot is listening before a person writes.
        self._signal()
        try:
            wait = min(max(float(params.get("wait") or 25), 0.0), LONG_POLL_MAX_WAIT)
        except ValueError:
            wait = 25.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        async with self._cond:
            while True:
                if ts < self._oldest_ts():
                    return web.json_response({"failed": 1, "ts": str(self._oldest_ts())})
                if ts > self._next_ts:
                    # A ts from the future (a cursor from another fake, say) restarts at "now": nothing
                    # lies between, so nothing is lost.
                    return web.json_response({"failed": 1, "ts": str(self._next_ts)})
                batch = [event for event_ts, event in self._lp_events if event_ts >= ts]
                remaining = deadline - loop.time()
                if batch or remaining <= 0 or self._closing:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), remaining)
            answer = {"ts": str(self._next_ts if batch else ts), "updates": batch}
            return web.json_response(answer, dumps=_dumps)

    def _oldest_ts(self) -> int:
        return self._lp_events[0][0] if self._lp_events else self._next_ts

    async def _on_upload(self, request: web.Request) -> web.StreamResponse:
        self.stats.uploads += 1
        if self._take(self._drops, UPLOAD) and request.transport is not None:
            request.transport.abort()
            return web.Response()
        if self._take(self._html, UPLOAD):
            return self._html_page()
        if request.query.get("sig") not in self._upload_sigs:
            return web.json_response({"error": "invalid upload signature"})
        content = b""
        if request.content_type == "multipart/form-data":
            form = await request.post()
            for name in ("photo", "file", "file1"):
                value = form.get(name)
                if isinstance(value, web.FileField):
                    content = value.file.read()
                    break
        if not content:
            return web.json_response({"server": UPLOAD_SERVER, "photo": "[]", "hash": self._hash("[]")})
        token = secrets.token_hex(16)
        self._uploads[token] = content
        photo = _dumps([{"photo": f"{token}:w", "sizes": [], "kid": secrets.token_hex(16)}])
        return web.json_response({"server": UPLOAD_SERVER, "photo": photo, "hash": self._hash(photo)})

    async def _on_doc_upload(self, request: web.Request) -> web.StreamResponse:
        self.stats.uploads += 1
        if request.query.get("sig") not in self._upload_sigs:
            return web.json_response({"error": "invalid upload signature"})
        form = await request.post()
        value = form.get("file")
        if not isinstance(value, web.FileField):
            return web.json_response({"error": "no file"})
        name = value.filename or ""
        if name.rsplit(".", 1)[-1].lower() in FORBIDDEN_DOC_TYPES or "." not in name:
            # As VK: executables and files without a type are refused at upload.
            return web.json_response({"error": "file type is not allowed"})
        token = secrets.token_hex(16)
        self._doc_uploads[token] = (name, value.file.read())
        return web.json_response({"file": token})

    async def _on_doc(self, request: web.Request) -> web.StreamResponse:
        """A person's document, fetched by its URL: `size` bytes, the same on every fetch."""
        try:
            title, size = self._incoming_docs[int(request.match_info["doc_id"])]
        except (KeyError, ValueError):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=_doc_bytes(title, size), content_type="application/octet-stream")

    def _hash(self, photo: str) -> str:
        return hashlib.sha256((self._upload_secret + photo).encode()).hexdigest()[:32]

    async def _on_photo(self, request: web.Request) -> web.StreamResponse:
        match = re.fullmatch(r"(\d+)_([a-z])\.jpg", request.match_info["name"])
        if match is None or int(match[1]) not in self._photos:
            return web.Response(status=404, text="Not Found")
        photo_id, size = int(match[1]), match[2]
        if size not in {s["type"] for s in self._photos[photo_id]["sizes"]}:
            return web.Response(status=404, text="Not Found")
        body = self._photo_bytes.get(photo_id) or _jpeg(f"photo {photo_id} {size}")
        return web.Response(body=body, content_type="image/jpeg")

    # --- state helpers ------------------------------------------------------------------------------

    def _serial_number(self) -> int:
        self._serial += 1
        return 456_239_000 + self._serial

    def _user(self, user_id: int) -> JSON:
        try:
            return self.users[user_id]
        except KeyError:
            raise AssertionError(f"unknown user {user_id}: call add_user first") from None

    def _push(self, kind: str, obj: JSON) -> JSON:
        event = {
            "group_id": self.group_id,
            "type": kind,
            "event_id": secrets.token_hex(20),
            "v": API_VERSION,
            "object": copy.deepcopy(obj),
        }
        self._deliver(event)
        return event

    def _deliver(self, event: JSON) -> None:
        if self.callback is not None:
            self._callback_queue.append(copy.deepcopy(event))
        self._lp_events.append((self._next_ts, event))
        self._next_ts += 1
        self.events.append(event)
        self._signal()

    async def _push_loop(self) -> None:
        """VK's side of the Callback API: events go one at a time, oldest first, each until "ok"."""
        delay = 0.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                async with self._cond:
                    await self._cond.wait_for(
                        lambda: self._closing or (self.callback is not None and bool(self._callback_queue))
                    )
                    if self._closing:
                        return
                    event, server = self._callback_queue[0], dict(self.callback or {})
                body = {**event, "secret": server["secret"]}
                status, text = await self._post_callback(session, server["url"], body)
                self.callback_posts.append({"event_id": event["event_id"], "status": status, "text": text})
                if status == 200 and text == "ok":
                    delay = 0.0
                    self._callback_queue.popleft()
                    self._signal()
                    continue
                delay = min(max(delay * 2, self.callback_retry_delay), 1.0)
                self._signal()
                with contextlib.suppress(TimeoutError):
                    async with self._cond:
                        await asyncio.wait_for(self._cond.wait_for(lambda: self._closing), delay)

    @staticmethod
    async def _post_callback(session: aiohttp.ClientSession, url: str, body: JSON) -> tuple[int, str]:
        try:
            headers = {"Content-Type": "application/json"}
            async with session.post(url, data=_dumps(body), headers=headers) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return 0, type(error).__name__

    def _message_ref(self, message: JSON | int) -> JSON:
        message_id = message["id"] if isinstance(message, dict) else int(message)
        stored = self._by_id.get(message_id)
        if stored is None:
            raise AssertionError(f"no message {message_id}")
        return stored

    def _store(self, peer_id: int, message: JSON) -> JSON:
        self._last_message_id += 1
        cmid = self._last_cmid.get(peer_id, 0) + 1
        self._last_cmid[peer_id] = cmid
        self._version += 1
        stored: JSON = {
            "id": self._last_message_id,
            "peer_id": peer_id,
            **message,
            "date": _now(),
            "conversation_message_id": cmid,
            "_edits": 0,
            "_version": self._version,
        }
        self._messages.setdefault(peer_id, []).append(stored)
        self._by_id[stored["id"]] = stored
        self._signal()
        return stored

    def _incoming(
        self,
        user_id: int,
        text: str,
        attachments: list[JSON],
        reply_to: JSON | int | None = None,
        extra: JSON | None = None,
    ) -> JSON:
        self._user(user_id)
        reply_id = None
        if reply_to is not None:
            target = self._message_ref(reply_to)
            if target["peer_id"] != user_id:
                raise AssertionError(f"message {target['id']} is not in the conversation with {user_id}")
            reply_id = target["id"]
        stored = self._store(
            user_id,
            {
                "from_id": user_id,
                "out": 0,
                "text": text,
                "random_id": 0,
                "keyboard": None,
                "attachments": attachments,
                "reply_to": reply_id,
                **(extra or {}),
            },
        )
        client_info = {
            "button_actions": list(CLIENT_BUTTON_ACTIONS),
            "keyboard": True,
            "inline_keyboard": True,
            "carousel": True,
            "lang_id": LANG_IDS[self._langs[user_id]],
        }
        self._push("message_new", {"message": self._vk_message(stored), "client_info": client_info})
        return stored

    def _vk_message(self, stored: JSON) -> JSON:
        """A stored message the way the API and the long poll show it."""
        message: JSON = {
            "date": stored["date"],
            "from_id": stored["from_id"],
            "id": stored["id"],
            "out": stored["out"],
            "version": stored["_version"],
            "attachments": copy.deepcopy(stored["attachments"]),
            "conversation_message_id": stored["conversation_message_id"],
            "fwd_messages": copy.deepcopy(stored.get("fwd_messages") or []),
            "important": False,
            "is_hidden": False,
            "peer_id": stored["peer_id"],
            "random_id": stored["random_id"],
            "text": stored["text"],
        }
        if stored["reply_to"] is not None and stored["reply_to"] in self._by_id:
            target = self._by_id[stored["reply_to"]]
            message["reply_message"] = {
                "date": target["date"],
                "from_id": target["from_id"],
                "text": target["text"],
                "attachments": copy.deepcopy(target["attachments"]),
                "conversation_message_id": target["conversation_message_id"],
                "peer_id": target["peer_id"],
                "id": target["id"],
            }
        for key in ("geo", "payload"):
            if key in stored:
                message[key] = copy.deepcopy(stored[key])
        if stored["keyboard"]:
            # VK gives the keyboard back in its own normal form, whatever keys the bot left out.
            board = stored["keyboard"]
            message["keyboard"] = {
                "one_time": bool(board.get("one_time", False)),
                "buttons": copy.deepcopy(board["buttons"]),
                "author_id": stored["from_id"],
                "inline": bool(board.get("inline", False)),
            }
        if stored["_edits"]:
            message["update_time"] = stored["_update_time"]
        return message

    def _new_photo(self, owner_id: int, album_id: int, sizes: tuple[tuple[str, int, int], ...]) -> JSON:
        photo_id = self._next_photo_id
        self._next_photo_id += 1
        photo: JSON = {
            "album_id": album_id,
            "date": _now(),
            "id": photo_id,
            "owner_id": owner_id,
            "access_key": secrets.token_hex(9),
            "sizes": [
                {
                    "type": kind,
                    "url": f"{self.base_url}/photos/{photo_id}_{kind}.jpg",
                    "width": w,
                    "height": h,
                }
                for kind, w, h in sizes
            ],
            "text": "",
            "has_tags": False,
        }
        self._photos[photo_id] = photo
        return copy.deepcopy(photo)

    # --- validation helpers -------------------------------------------------------------------------

    @staticmethod
    def _opt_int(params: JSON, name: str) -> int | None:
        value = params.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, int):
            raise _invalid(f"{name} not integer")
        return value

    @classmethod
    def _int(cls, params: JSON, name: str) -> int:
        value = cls._opt_int(params, name)
        if value is None:
            raise _invalid(f"{name} is a required parameter")
        return value

    @staticmethod
    def _int_list(params: JSON, name: str) -> list[int]:
        raw = str(params.get(name) or "")
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if not all(re.fullmatch(r"-?\d+", item) for item in items):
            raise _invalid(f"{name} is invalid")
        return [int(item) for item in items]

    def _keyboard(self, raw: Any) -> JSON | None:
        if raw is None or raw == "":
            return None
        try:
            board = json.loads(raw)
        except ValueError:
            raise _bad_keyboard("invalid JSON") from None
        if not isinstance(board, dict):
            raise _bad_keyboard("keyboard should be an object")
        rows = board.get("buttons")
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise _bad_keyboard("buttons should be an array of arrays")
        max_rows, max_in_row, max_total = INLINE_LIMITS if board.get("inline") else KEYBOARD_LIMITS
        if len(rows) > max_rows:
            raise _bad_keyboard(f"no more than {max_rows} rows allowed")
        if any(len(row) > max_in_row for row in rows):
            raise _bad_keyboard(f"no more than {max_in_row} buttons in a row allowed")
        if sum(len(row) for row in rows) > max_total:
            raise _bad_keyboard(f"no more than {max_total} buttons allowed")
        for row in rows:
            for button in row:
                self._check_button(button)
        return board

    @staticmethod
    def _check_button(button: Any) -> None:
        action = button.get("action") if isinstance(button, dict) else None
        if not isinstance(action, dict):
            raise _bad_keyboard("button should have an action object")
        kind = action.get("type")
        if kind not in KEYBOARD_ACTIONS:
            raise _bad_keyboard(f"unknown action type {kind!r}")
        label = action.get("label")
        if kind in LABELLED_ACTIONS and (not isinstance(label, str) or not label):
            raise _bad_keyboard(f"{kind} button should have a label")
        if isinstance(label, str) and len(label) > LABEL_LIMIT:
            raise _bad_keyboard(f"label should be no longer than {LABEL_LIMIT} characters")
        payload = action.get("payload")
        if payload is not None:
            text = payload if isinstance(payload, str) else _dumps(payload)
            if len(text) > PAYLOAD_LIMIT:
                raise _bad_keyboard(f"payload should be no longer than {PAYLOAD_LIMIT} characters")
            try:
                json.loads(text)
            except ValueError:
                raise _bad_keyboard("payload should be valid JSON") from None
        color = button.get("color")
        if color is not None and color not in BUTTON_COLORS:
            raise _bad_keyboard(f"unknown color {color!r}")
        if kind == "open_link" and not str(action.get("link") or "").startswith(("http://", "https://")):
            raise _bad_keyboard("open_link button should have a link")
        if kind == "vkpay" and not action.get("hash"):
            raise _bad_keyboard("vkpay button should have a hash")
        if kind == "open_app" and not action.get("app_id"):
            raise _bad_keyboard("open_app button should have an app_id")

    def _attachments(self, raw: Any) -> list[JSON]:
        """Photos named as VK names them: photo{owner}_{id}, with _{access_key} for someone else's photo;
        documents as doc{owner}_{id}."""
        items = [item.strip() for item in str(raw or "").split(",") if item.strip()]
        if len(items) > ATTACHMENT_LIMIT:
            raise _invalid("attachment is invalid: too many attachments")
        result = []
        for item in items:
            doc = re.fullmatch(r"doc(-?\d+)_(\d+)(?:_[0-9A-Za-z]+)?", item)
            if doc is not None:
                saved = self.docs.get(int(doc[2]))
                if saved is None or saved["owner_id"] != int(doc[1]):
                    raise _invalid("attachment is invalid")
                result.append({"type": "doc", "doc": {k: v for k, v in saved.items() if k != "content"}})
                continue
            match = re.fullmatch(r"photo(-?\d+)_(\d+)(?:_([0-9A-Za-z]+))?", item)
            photo = self._photos.get(int(match[2])) if match else None
            if match is None or photo is None or photo["owner_id"] != int(match[1]):
                raise _invalid("attachment is invalid")
            key = match[3]
            own = photo["owner_id"] == -self.group_id
            if (key is None and not own) or (key is not None and key != photo["access_key"]):
                raise _invalid("attachment is invalid")
            result.append({"type": "photo", "photo": copy.deepcopy(photo)})
        return result

    def _peer(self, peer_id: int) -> None:
        if peer_id not in self.users:
            raise VKError(936)
        if peer_id in self._forbidden:
            raise VKError(901)

    def _reply_target(self, peer_id: int, params: JSON) -> int | None:
        reply_to = self._opt_int(params, "reply_to")
        forward = params.get("forward")
        if reply_to is None and forward:
            try:
                spec = json.loads(forward)
                cmids = spec.get("conversation_message_ids") or []
                source_peer = int(spec.get("peer_id") or peer_id)
            except (ValueError, TypeError, AttributeError):
                raise _invalid("forward is invalid") from None
            if spec.get("is_reply") and cmids:
                found = [
                    m for m in self._messages.get(source_peer, []) if m["conversation_message_id"] == cmids[0]
                ]
                if not found or source_peer != peer_id:
                    raise _invalid("forward is invalid")
                reply_to = found[0]["id"]
        if reply_to is None:
            return None
        target = self._by_id.get(reply_to)
        if target is None or target["peer_id"] != peer_id:
            raise _invalid("reply_to is invalid")
        return reply_to

    def _send_one(self, peer_id: int, random_id: int, content: JSON, params: JSON) -> JSON:
        self._peer(peer_id)
        reply_to = self._reply_target(peer_id, params)
        now = self.clock()
        if random_id:
            earlier = self._random_ids.get((peer_id, random_id))
            if earlier is not None and now - earlier[1] < DEDUP_WINDOW:
                self.stats.duplicate_random_id += 1
                return self._by_id[earlier[0]]
        message = self._store(
            peer_id,
            {
                "from_id": -self.group_id,
                "out": 1,
                "random_id": random_id,
                **copy.deepcopy(content),
                "reply_to": reply_to,
            },
        )
        if random_id:
            self._random_ids[(peer_id, random_id)] = (message["id"], now)
        self.stats.sent_messages += 1
        return message

    def _content(self, params: JSON) -> JSON:
        text = str(params.get("message") or "")
        attachments = self._attachments(params.get("attachment"))
        if not text.strip() and not attachments and not params.get("forward_messages"):
            raise _invalid("message is empty or invalid")
        if len(text) > TEXT_LIMIT:
            raise VKError(914)
        keyboard = self._keyboard(params.get("keyboard"))
        return {"text": text, "keyboard": keyboard, "attachments": attachments}

    # --- API methods --------------------------------------------------------------------------------

    def _group(self, group_id: int) -> JSON:
        name = self.group_name if group_id == self.group_id else f"club{group_id}"
        return {
            "id": group_id,
            "name": name,
            "screen_name": f"club{group_id}",
            "is_closed": 0,
            "type": "group",
        }

    async def _api_groups_get_by_id(self, params: JSON) -> Any:
        ids = self._int_list(params, "group_ids") or self._int_list(params, "group_id")
        return {"groups": [self._group(group_id) for group_id in ids or [self.group_id]], "profiles": []}

    async def _api_groups_get_long_poll_server(self, params: JSON) -> Any:
        if self._int(params, "group_id") != self.group_id:
            raise _invalid("group_id is invalid")
        key = secrets.token_hex(20)
        self._keys.add(key)
        return {"key": key, "server": f"{self.base_url}/lp", "ts": str(self._next_ts)}

    async def _api_messages_send(self, params: JSON) -> Any:
        random_id = self._int(params, "random_id")
        content = self._content(params)
        if params.get("peer_ids"):
            results = []
            for peer_id in self._int_list(params, "peer_ids"):
                try:
                    sent = self._send_one(peer_id, random_id, content, params)
                except VKError as error:
                    item = {"peer_id": peer_id, "error": {"code": error.code, "description": error.message}}
                    results.append(item)
                    continue
                results.append(
                    {
                        "peer_id": peer_id,
                        "message_id": sent["id"],
                        "conversation_message_id": sent["conversation_message_id"],
                    }
                )
            return results
        peer_id = self._opt_int(params, "peer_id") or self._opt_int(params, "user_id")
        if not peer_id:
            raise _invalid("you should specify peer_id, user_id, domain, chat_id or user_ids param")
        return self._send_one(peer_id, random_id, content, params)["id"]

    async def _api_messages_edit(self, params: JSON) -> Any:
        peer_id = self._int(params, "peer_id")
        message_id = self._opt_int(params, "message_id")
        cmid = self._opt_int(params, "conversation_message_id")
        stored = None
        if message_id is not None:
            stored = self._by_id.get(message_id)
        elif cmid is not None:
            found = [m for m in self._messages.get(peer_id, []) if m["conversation_message_id"] == cmid]
            stored = found[0] if found else None
        if stored is None or stored["peer_id"] != peer_id:
            raise _invalid("message_id is invalid")
        if stored["from_id"] != -self.group_id:
            raise VKError(15)
        content = self._content(params)
        # Like VK, whatever is not sent again (keyboard, attachments) is gone after the edit.
        stored.update(content)
        self._version += 1
        stored["_version"] = self._version
        stored["_edits"] += 1
        stored["_update_time"] = _now()
        return 1

    async def _api_messages_send_message_event_answer(self, params: JSON) -> Any:
        entry = self._presses.get(str(params.get("event_id") or ""))
        if entry is None or entry["answer"] is not None:
            raise _invalid("event_id is invalid")
        obj = entry["object"]
        if self._int(params, "user_id") != obj["user_id"]:
            raise _invalid("user_id is invalid")
        if self._int(params, "peer_id") != obj["peer_id"]:
            raise _invalid("peer_id is invalid")
        answer: JSON = {}
        if params.get("event_data"):
            try:
                answer = json.loads(params["event_data"])
            except ValueError:
                raise _invalid("event_data is invalid") from None
            if not self._valid_event_data(answer):
                raise _invalid("event_data is invalid")
        entry["answer"] = answer
        return 1

    @staticmethod
    def _valid_event_data(data: Any) -> bool:
        if not isinstance(data, dict):
            return False
        kind = data.get("type")
        if kind == "show_snackbar":
            text = data.get("text")
            return isinstance(text, str) and 0 < len(text) <= SNACKBAR_LIMIT
        if kind == "open_link":
            return str(data.get("link") or "").startswith(("http://", "https://"))
        if kind == "open_app":
            return isinstance(data.get("app_id"), int)
        return False

    async def _api_messages_get_by_id(self, params: JSON) -> Any:
        ids = self._int_list(params, "message_ids")
        if not ids:
            raise _invalid("message_ids is undefined")
        items = [self._vk_message(self._by_id[i]) for i in ids if i in self._by_id]
        return {"count": len(items), "items": items}

    async def _api_messages_get_by_conversation_message_id(self, params: JSON) -> Any:
        peer_id = self._int(params, "peer_id")
        wanted = self._int_list(params, "conversation_message_ids")
        if not wanted:
            raise _invalid("conversation_message_ids is undefined")
        by_number = {m["conversation_message_id"]: m for m in self._messages.get(peer_id, [])}
        items = [self._vk_message(by_number[n]) for n in wanted if n in by_number]
        return {"count": len(items), "items": items}

    async def _api_messages_get_conversations_by_id(self, params: JSON) -> Any:
        items = []
        for peer_id in self._int_list(params, "peer_ids"):
            history = self._messages.get(peer_id)
            if peer_id not in self.users or not history:
                continue
            can_write: JSON = {"allowed": peer_id not in self._forbidden}
            if peer_id in self._forbidden:
                can_write["reason"] = 901
            last_in = max((m["id"] for m in history if m["out"] == 0), default=0)
            last_out = max((m["id"] for m in history if m["out"] == 1), default=0)
            items.append(
                {
                    "peer": {"id": peer_id, "type": "user", "local_id": peer_id},
                    "last_message_id": history[-1]["id"],
                    "last_conversation_message_id": history[-1]["conversation_message_id"],
                    "in_read": last_in,
                    "out_read": last_out,
                    "version": history[-1]["_version"],
                    "is_marked_unread": False,
                    "important": False,
                    "can_write": can_write,
                }
            )
        return {"count": len(items), "items": items}

    async def _api_docs_get_messages_upload_server(self, params: JSON) -> Any:
        peer_id = int(params.get("peer_id") or 0)
        if not peer_id:
            raise _invalid("peer_id is undefined")
        self._peer(peer_id)
        sig = secrets.token_hex(16)
        self._upload_sigs.add(sig)
        return {"upload_url": f"{self.base_url}/upload/doc?sig={sig}"}

    async def _api_docs_save(self, params: JSON) -> Any:
        upload = self._doc_uploads.pop(str(params.get("file") or ""), None)
        if upload is None:
            raise _invalid("file is undefined")
        name, content = upload
        doc_id = self._next_photo_id
        self._next_photo_id += 1
        title = str(params.get("title") or name)
        doc: JSON = {
            "id": doc_id,
            "owner_id": -self.group_id,
            "title": title,
            "size": len(content),
            "ext": name.rsplit(".", 1)[-1].lower(),
            "date": _now(),
            "type": 1,
            "url": f"{self.base_url}/doc/{doc_id}",
        }
        self.docs[doc_id] = {**doc, "content": content}
        return {"type": "doc", "doc": doc}

    async def _api_photos_get_messages_upload_server(self, params: JSON) -> Any:
        sig = secrets.token_hex(16)
        self._upload_sigs.add(sig)
        return {
            "album_id": MESSAGES_ALBUM,
            "upload_url": f"{self.base_url}/upload/photo?sig={sig}",
            "user_id": 0,
            "group_id": self.group_id,
        }

    async def _api_photos_save_messages_photo(self, params: JSON) -> Any:
        raw = str(params.get("photo") or "")
        try:
            items = json.loads(raw) if raw else []
        except ValueError:
            items = []
        if not items or not isinstance(items, list) or not isinstance(items[0], dict):
            raise _invalid("photo is undefined")
        if params.get("server") != UPLOAD_SERVER:
            raise _invalid("server is invalid")
        if params.get("hash") != self._hash(raw):
            raise VKError(121)
        content = self._uploads.get(str(items[0].get("photo", "")).split(":", 1)[0])
        if content is None:
            raise _invalid("photo is invalid")
        photo = self._new_photo(-self.group_id, MESSAGES_ALBUM, UPLOADED_SIZES)
        self._photo_bytes[photo["id"]] = content
        self.uploaded[photo["id"]] = content
        return [photo]

    async def _api_users_get(self, params: JSON) -> Any:
        raw = [item.strip() for item in str(params.get("user_ids") or "").split(",") if item.strip()]
        fields = {f.strip() for f in str(params.get("fields") or "").split(",")}
        result = []
        for item in raw:
            match = re.fullmatch(r"(?:id)?(\d+)", item)
            if match is None:
                raise VKError(113, "Invalid user id")
            user_id = int(match[1])
            user = copy.deepcopy(self.users.get(user_id)) or {
                "id": user_id,
                "first_name": "DELETED",
                "last_name": "",
                "deactivated": "deleted",
                "can_access_closed": True,
                "is_closed": False,
            }
            for name in ("screen_name", "domain"):
                if name in fields:
                    user[name] = f"id{user_id}"
            result.append(user)
        return result
