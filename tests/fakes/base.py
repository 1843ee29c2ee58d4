"""What the fake Telegram and VK servers share: an aiohttp server on 127.0.0.1 that lives as long as the
test, a background task that pushes updates to the bot (a webhook, VK's Callback API), and a condition
that tests and long polls wait on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web


class FakeServer:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._cond = asyncio.Condition()
        self._notify_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._site_port: int | None = None
        self._pusher: asyncio.Task[None] | None = None

    def _routes(self, app: web.Application) -> None:
        """The platform's endpoints."""
        raise NotImplementedError

    async def _push_loop(self) -> None:
        """Hands updates to the bot's own endpoint, when one is set, until the server stops."""
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=60 * 1024 * 1024)
        self._routes(app)
        # Cancelling handlers on disconnect lets an abandoned long poll stop counting as "in flight".
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self._site_port = int(self._runner.addresses[0][1])
        self._closing = False
        self._pusher = asyncio.create_task(self._push_loop())

    async def stop(self) -> None:
        self._closing = True
        await self._notify()
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.gather(*self._notify_tasks, return_exceptions=True)
        self._notify_tasks.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self._site_port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self._site_port}"

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        try:
            async with self._cond:
                await asyncio.wait_for(self._cond.wait_for(condition), timeout)
        except TimeoutError:
            raise AssertionError(f"condition not met within {timeout}s") from None

    def _signal(self) -> None:
        """Wake every waiter; callable from sync code, so the notify runs as a task."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._notify())
        self._notify_tasks.add(task)
        task.add_done_callback(self._notify_tasks.discard)

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()
