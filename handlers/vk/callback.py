"""VK Callback API through the inbox: an event is stored before VK gets its "ok".

VK sends an event again until the server answers "ok", so "ok" is given only once the event is stored,
under the same key as in long-poll mode (VK's event_id): a redelivery, or an event that also came by long
poll before a switch of modes, is handled once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web
from vkbottle import API
from vkbottle.dispatch.abc import ABCRouter

from bot.clock import Clock
from bot.domain import Platform
from bot.intake import Intake, Pushed
from storage.db import Database

log = logging.getLogger(__name__)


class VkCallback(Pushed):
    def __init__(
        self,
        api: API,
        router: ABCRouter,
        group_id: int,
        db: Database,
        clock: Clock,
        *,
        secret: str,
        confirmation_code: str,
    ) -> None:
        self.api = api
        self.router = router
        self.group_id = group_id
        self._secret = secret.encode()
        self._confirmation_code = confirmation_code
        self.intake = Intake(db, clock, Platform.vk, self._route)
        super().__init__()

    async def _route(self, event: dict[str, Any]) -> None:
        await self.router.route(event, self.api)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return web.Response(status=400, text="the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            return web.Response(status=400, text="not a VK event")
        ours = str(body.get("group_id")) == str(self.group_id)
        if body["type"] == "confirmation":
            # The confirmation code is what VK shows the community's admins; it proves nothing secret.
            if not ours:
                log.warning("VK asked to confirm the server for another community; refused")
                return web.Response(status=403, text="another community")
            return web.Response(text=self._confirmation_code)
        given = body.get("secret")
        given_bytes = given.encode("utf-8", "replace") if isinstance(given, str) else b""
        if not hmac.compare_digest(given_bytes, self._secret):
            return web.Response(status=403, text="wrong secret")
        if not ours:
            log.warning("VK event for another community (group_id %r); refused", body.get("group_id"))
            return web.Response(status=403, text="another community")
        event = {key: value for key, value in body.items() if key != "secret"}
        try:
            await self.intake.accept([(_event_key(event), event)])
        except Exception:
            # Not answered "ok", so VK sends the event again.
            log.exception("VK event %s could not be stored", event.get("event_id"))
            return web.Response(status=500, text="not stored; send it again")
        return web.Response(text="ok")


def _event_key(event: dict[str, Any]) -> str:
    """VK's event_id; an event without one is keyed by its content, so its redelivery matches it."""
    event_id = event.get("event_id")
    if event_id:
        return str(event_id)
    canonical = json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:48]
