"""Sending to VK through the API with our own `random_id`, and mapping VK errors onto retry decisions.

vkbottle's `message.answer()` sends `random_id=0`, which turns VK's de-duplication off; every send here
derives `random_id` from the outbox row instead, so a resend after a failure or a crash is one message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from vkbottle import API, VKAPIError
from vkbottle.tools import DocMessagesUploader, PhotoMessageUploader

from bot.domain import Attachment, MediaKind, Platform
from bot.messages import Outgoing
from bot.redaction import describe

from .base import PermanentError, Progress, RetryAfter, TransientError
from .vk_text import TEXT_LIMIT, html_to_text, keyboard, split_plain

log = logging.getLogger(__name__)

Fetch = Callable[[Attachment], Awaitable[bytes]]

# Attachments one message takes.
ATTACHMENT_LIMIT = 10

RETRY_LATER = {6: 1.0, 9: 30.0}  # too many requests per second; flood control
TRANSIENT = {1, 10}  # unknown error; internal server error
UNREACHABLE = {900, 901, 902, 936}  # blacklisted; no permission; privacy settings; contact not found


class VkMessenger:
    platform = Platform.vk

    def __init__(self, api: API, group_id: int, fetch: Fetch) -> None:
        self.api = api
        self.group_id = group_id
        self.fetch = fetch
        self.uploader = PhotoMessageUploader(api)
        self.docs = DocMessagesUploader(api)

    async def send(
        self,
        chat_id: int,
        message: Outgoing,
        reply_to: int | None,
        nonce: int,
        progress: Progress | None = None,
    ) -> list[int]:
        progress = progress or Progress()
        photos = [a for a in message.photos if a.kind is MediaKind.photo]
        documents = [a for a in message.photos if a.kind is MediaKind.document]
        attachments = [await self._attachment(chat_id, photo) for photo in photos[:ATTACHMENT_LIMIT]]
        for document in documents[: ATTACHMENT_LIMIT - len(attachments)]:
            if (uploaded := await self._document(chat_id, document)) is not None:
                attachments.append(uploaded)
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
        by = "conversation_message_id" if message.edit and message.edit.in_conversation else "message_id"
        params: dict[str, Any] = {
            "peer_id": chat_id,
            by: message_id,
            "message": html_to_text(message.text)[:TEXT_LIMIT],
            "keep_forward_messages": 1,
            "keep_snippets": 1,
        }
        if message.buttons_only:
            # VK keeps nothing an edit does not send again (text, photos, keyboard): new buttons, or
            # none, go with the message as it stands.
            current = await self._current(chat_id, by, message_id)
            params["message"] = str(current.get("text") or "")
            if attached := _attachment_refs(current.get("attachments") or []):
                params["attachment"] = attached
        if markup := keyboard(message.buttons):
            params["keyboard"] = markup
        await self._call("messages.edit", params)

    async def _current(self, peer_id: int, by: str, message_id: int) -> dict[str, Any]:
        if by == "message_id":
            found = await self._call("messages.getById", {"message_ids": message_id})
        else:
            found = await self._call(
                "messages.getByConversationMessageId",
                {"peer_id": peer_id, "conversation_message_ids": message_id},
            )
        items = found.get("items") if isinstance(found, dict) else None
        if not items:
            raise PermanentError("not_found", f"VK message {by}={message_id} in {peer_id} is gone")
        return dict(items[0])

    async def _document(self, peer_id: int, document: Attachment) -> str | None:
        """The document uploaded for the peer; None when VK refuses the file (an executable, say): the
        message goes without it, and the file stays with the ticket and the agency."""
        data = await self.fetch(document)
        try:
            return str(
                await self.docs.upload(file_source=data, peer_id=peer_id, title=document.name or "document")
            )
        except VKAPIError as error:
            translated = _translate(error)
            if isinstance(translated, PermanentError) and translated.reason == "bad_request":
                log.warning("VK refused document %r for %s: %s", document.name, peer_id, translated)
                return None
            raise translated from None
        except (OSError, ValueError) as error:
            raise TransientError(f"document upload failed: {error}") from None

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
            # Not its text: a connect timeout's quotes the URL, access_token and all.
            raise TransientError(f"{method}: {describe(error)}") from None
        if not isinstance(response, dict) or "response" not in response:
            raise TransientError(f"{method}: unexpected answer")
        return response["response"]


def _attachment_refs(attachments: list[dict[str, Any]]) -> str:
    """A message's photos and documents as an edit names them again: photo{owner}_{id}[_{access_key}]."""
    refs = []
    for attachment in attachments:
        kind = attachment.get("type")
        item = attachment.get(kind) if kind in ("photo", "doc") else None
        if isinstance(item, dict) and "owner_id" in item and "id" in item:
            key = f"_{item['access_key']}" if item.get("access_key") else ""
            refs.append(f"{kind}{item['owner_id']}_{item['id']}{key}")
    return ",".join(refs)


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
