"""Sending to VK through the API with our own `random_id`, and mapping VK errors onto retry decisions.

vkbottle's `message.answer()` sends `random_id=0`, which turns VK's de-duplication off; every send here
derives `random_id` from the outbox row instead, so a resend after a failure or a crash is one message.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from vkbottle import API, VKAPIError
from vkbottle.tools import PhotoMessageUploader

from bot.domain import Attachment, MediaKind, Platform
from bot.messages import Button, Outgoing

from .base import PermanentError, Progress, RetryAfter, TransientError

Fetch = Callable[[Attachment], Awaitable[bytes]]

TEXT_LIMIT = 4096
# VK's limits for inline keyboards; a longer list goes as a regular keyboard (up to 10 rows of 5).
INLINE_ROWS, INLINE_BUTTONS = 6, 10
LABEL_LIMIT = 40
RETRY_LATER = {6: 1.0, 9: 30.0}  # too many requests per second; flood control
TRANSIENT = {1, 10}  # unknown error; internal server error
UNREACHABLE = {900, 901, 902, 936}  # blacklisted; no permission; privacy settings; contact not found
_LINK = re.compile(r'<a href="([^"]*)">(.*?)</a>', re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def html_to_text(text: str) -> str:
    """VK shows plain text: drop our formatting, keep links readable, and turn entities back into the
    characters the user typed (VK does not interpret markup, so nothing can be injected)."""
    text = _LINK.sub(lambda m: f"{m.group(2)} ({html.unescape(m.group(1))})", text)
    return html.unescape(_TAG.sub("", text))


def keyboard(rows: list[list[Button]]) -> str | None:
    if not rows:
        return None
    count = sum(len(row) for row in rows)
    inline = len(rows) <= INLINE_ROWS and count <= INLINE_BUTTONS
    if not inline:
        flat = [button for row in rows for button in row]
        rows = [flat[i : i + 2] for i in range(0, len(flat), 2)]
    return json.dumps(
        {
            "inline": inline,
            "one_time": False,
            "buttons": [
                [
                    {
                        "action": {
                            "type": "callback",
                            "label": _label(button.text),
                            "payload": json.dumps({"d": button.data}),
                        },
                        "color": "secondary",
                    }
                    for button in row
                ]
                for row in rows
            ],
        },
        ensure_ascii=False,
    )


def _label(text: str) -> str:
    return text if len(text) <= LABEL_LIMIT else text[: LABEL_LIMIT - 1] + "…"


def split_plain(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = text.rfind(" ", 0, limit)
        if cut < limit // 2:
            cut = limit
        parts.append(text[:cut])
        text = text[cut:].lstrip("\n ")
    parts.append(text)
    return [p for p in parts if p.strip()] or [""]


class VkMessenger:
    platform = Platform.vk

    def __init__(self, api: API, group_id: int, fetch: Fetch) -> None:
        self.api = api
        self.group_id = group_id
        self.fetch = fetch
        self.uploader = PhotoMessageUploader(api)

    async def send(
        self,
        chat_id: int,
        message: Outgoing,
        reply_to: int | None,
        nonce: int,
        progress: Progress | None = None,
    ) -> list[int]:
        progress = progress or Progress()
        # Only photos cross to VK; a document stays on record in the ticket and with the agency.
        photos = [a for a in message.photos if a.kind is MediaKind.photo]
        attachments = [await self._attachment(chat_id, photo) for photo in photos[:10]]
        parts = split_plain(html_to_text(message.text))
        ids: list[int] = []
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            params: dict[str, Any] = {
                "peer_id": chat_id,
                # Distinct per part, the same on every attempt: VK drops a repeat within an hour.
                "random_id": nonce * 16 + index,
                "message": part,
                "dont_parse_links": 1,
                "disable_mentions": 1,
            }
            if last and attachments:
                params["attachment"] = ",".join(attachments)
            if last and (markup := keyboard(message.buttons)):
                params["keyboard"] = markup
            if reply_to and index == 0:
                params["reply_to"] = reply_to
            ids += await progress.part(f"text{index}", partial(self._send_one, params))
        return [ids[-1], *ids[:-1]]

    async def _send_one(self, params: dict[str, Any]) -> list[int]:
        return [int(await self._call("messages.send", params))]

    async def edit(self, chat_id: int, message_id: int, message: Outgoing) -> None:
        if message.buttons_only:
            # Taking buttons off would mean re-sending the text; a stale button is refused by the
            # dialog anyway, so VK keeps its keyboards.
            return
        params: dict[str, Any] = {
            "peer_id": chat_id,
            "message_id": message_id,
            "message": html_to_text(message.text)[:TEXT_LIMIT],
            "keep_forward_messages": 1,
            "keep_snippets": 1,
        }
        if markup := keyboard(message.buttons):
            params["keyboard"] = markup
        await self._call("messages.edit", params)

    async def _attachment(self, peer_id: int, photo: Attachment) -> str:
        if photo.platform is Platform.vk and photo.file_id.startswith("photo"):
            return photo.file_id
        data = await self.fetch(photo)
        try:
            return str(await self.uploader.upload(file_source=data, peer_id=peer_id))
        except VKAPIError as error:
            raise _translate(error) from None
        except (OSError, ValueError) as error:
            raise TransientError(f"photo upload failed: {error}") from None

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        try:
            response = await self.api.request(method, params)
        except VKAPIError as error:
            raise _translate(error) from None
        except (OSError, TimeoutError, ValueError) as error:
            raise TransientError(f"{method}: {error!r}") from None
        if not isinstance(response, dict) or "response" not in response:
            raise TransientError(f"{method}: unexpected answer")
        return response["response"]


def _translate(error: VKAPIError) -> Exception:
    code = int(error.code)
    detail = f"VK error {code}: {error.error_msg}"
    if code in RETRY_LATER:
        return RetryAfter(RETRY_LATER[code], detail)
    if code in TRANSIENT:
        return TransientError(detail)
    if code in UNREACHABLE:
        return PermanentError("blocked", detail)
    return PermanentError("bad_request", detail)
