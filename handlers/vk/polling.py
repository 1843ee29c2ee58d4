"""VK Bots Long Poll through the inbox, resuming from the saved `ts` after a restart.

vkbottle's own polling moves `ts` as it hands events out, keeps it in a file in the working directory
and by default skips what arrived while the bot was down. Here each batch and the `ts` after it are
committed together, so a restart asks again from exactly where the last stored batch ended.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import ClientTimeout
from vkbottle import API, VKAPIError
from vkbottle.dispatch.abc import ABCRouter

from bot.clock import Clock
from bot.domain import Platform
from bot.intake import Intake, pause, until_stopped
from storage.db import Database
from storage.repository import Repository

log = logging.getLogger(__name__)


class VkPolling:
    def __init__(
        self, api: API, router: ABCRouter, group_id: int, db: Database, clock: Clock, *, wait: int = 25
    ) -> None:
        self.api = api
        self.router = router
        self.group_id = group_id
        self.db = db
        self.wait = wait
        self.cursor_name = f"vk:{group_id}:ts"
        self.clock = clock
        self.intake = Intake(db, clock, Platform.vk, self._route)
        self._stopping = asyncio.Event()
        self._server_info: dict[str, Any] | None = None

    async def prepare(self) -> None:
        """Take a long-poll position before start-up finishes, so nothing sent after it is missed;
        on the very first run it is saved at once, so even a crash before any event loses nothing."""
        self._server_info = await self._server()

    async def _route(self, event: dict[str, Any]) -> None:
        await self.router.route(event, self.api)

    async def run(self) -> None:
        await self.intake.replay()
        failures = 0
        server, self._server_info = self._server_info, None
        while not self._stopping.is_set():
            try:
                if server is None:
                    server = await self._server()
                answer = await until_stopped(self._stopping, self._check(server))
            except (VKAPIError, OSError, TimeoutError, ValueError) as error:
                failures += 1
                delay = min(2.0 ** min(failures, 5), 30.0)
                log.warning("VK long poll failed (%r); again in %.0fs", error, delay)
                server = None
                await pause(self._stopping, delay)
                continue
            if answer is None:
                break
            failures = 0
            server = await self._follow(server, answer)
        await self.intake.drain()

    def stop(self) -> None:
        self._stopping.set()

    async def _server(self) -> dict[str, Any]:
        response = await self.api.request("groups.getLongPollServer", {"group_id": self.group_id})
        server: dict[str, Any] = dict(response["response"])
        async with self.db.read() as conn:
            saved = await Repository(conn).cursor(self.cursor_name)
        if saved is not None:
            server["ts"] = saved
        else:
            async with self.db.transaction() as conn:
                await Repository(conn).save_cursor(self.cursor_name, str(server["ts"]), self.clock.now())
        return server

    async def _check(self, server: dict[str, Any]) -> Any:
        return await self.api.http_client.request_json(
            url=server["server"],
            method="POST",
            params={"act": "a_check", "key": server["key"], "ts": server["ts"], "wait": self.wait},
            timeout=ClientTimeout(total=self.wait + 10),
        )

    async def _follow(self, server: dict[str, Any], answer: Any) -> dict[str, Any] | None:
        """Handle one long-poll answer; returns the server to ask next (None: get a new key)."""
        if not isinstance(answer, dict):
            return None
        failed = answer.get("failed")
        if failed == 1:
            # Events between our ts and the oldest VK still keeps are gone; say so and go on.
            log.error("VK long poll lost history before ts %s; resuming at %s", server["ts"], answer["ts"])
            return {**server, "ts": str(answer["ts"])}
        if failed is not None:
            return None
        updates = [u for u in answer.get("updates", []) if isinstance(u, dict)]
        ts = str(answer["ts"])
        batch = [(str(u.get("event_id") or f"{ts}:{i}"), u) for i, u in enumerate(updates)]
        await self.intake.accept(batch, cursor=(self.cursor_name, ts))
        return {**server, "ts": ts}
