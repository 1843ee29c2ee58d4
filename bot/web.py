"""The HTTP server: Telegram's webhook, VK's Callback API, /healthz and /metrics on one aiohttp site.

It listens on HTTP_HOST:HTTP_PORT (127.0.0.1 unless told otherwise: a TLS proxy in front of it is what
Telegram and VK talk to, and /metrics is not meant for the internet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.clock import Clock
from bot.domain import Platform
from bot.metrics import CONTENT_TYPE, Backlog, DatabaseState, Metrics, render
from storage.db import Database
from storage.repository import Repository

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
# A health check that hangs is worse than one that says "no": the database gets this long to answer.
DATABASE_TIMEOUT = 5.0


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: Database,
        clock: Clock,
        metrics: Metrics,
        platforms: Sequence[Platform],
        max_outbox_lag: float,
        routes: Mapping[str, Handler] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.clock = clock
        self.metrics = metrics
        # The channels that are on: messages queued for one that is off wait for it by design and do not
        # make the bot unhealthy.
        self.platforms = tuple(platforms)
        self.max_outbox_lag = max_outbox_lag
        self.app = web.Application()
        self.app.router.add_get(HEALTH_PATH, self.health)
        self.app.router.add_get(METRICS_PATH, self.scrape)
        for path, handler in (routes or {}).items():
            self.app.router.add_post(path, handler)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        # Without handler cancellation (aiohttp's default) a caller that hangs up mid-request does not
        # interrupt storing an update halfway: the store finishes, and the platform sends it again.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("HTTP server on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def state(self) -> DatabaseState | None:
        """What the database says now: tickets by status and the outbox backlog; None if it did not answer."""
        try:
            # Off the event loop on SQLite (counting every ticket is a scan): the timeout can fire.
            async with asyncio.timeout(DATABASE_TIMEOUT), self.db.read(offload=True) as conn:
                repo = Repository(conn)
                tickets = await repo.ticket_counts()
                backlog = await repo.outbox_backlog()
        except Exception as error:
            log.warning("health: the database did not answer (%s)", type(error).__name__)
            return None
        now = self.clock.now()
        return DatabaseState(
            tickets=tickets,
            backlog={
                Platform(name): Backlog(count, _age(now, oldest))
                for name, (count, oldest) in backlog.items()
                if name in {p.value for p in Platform}
            },
        )

    async def health(self, request: web.Request) -> web.Response:
        state = await self.state()
        outbox: dict[str, Any] = {"pending": None, "oldest_age_seconds": None}
        healthy = state is not None
        if state is not None:
            watched = [state.backlog[p] for p in self.platforms if p in state.backlog]
            oldest = max((b.oldest_age_seconds for b in watched), default=0.0)
            outbox = {"pending": sum(b.pending for b in watched), "oldest_age_seconds": round(oldest, 3)}
            healthy = oldest <= self.max_outbox_lag
        body = {"status": "ok" if healthy else "degraded", "database": state is not None, "outbox": outbox}
        return web.json_response(body, status=200 if healthy else 503)

    async def scrape(self, request: web.Request) -> web.Response:
        text = render(self.metrics, await self.state())
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def _age(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max((now - then).total_seconds(), 0.0)
