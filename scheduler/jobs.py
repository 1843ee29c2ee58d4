"""The scheduler's job: one short scan that asks the service to keep every promise that is due."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.clock import Clock
from bot.deadlines import Deadlines

log = logging.getLogger(__name__)


class Jobs:
    def __init__(self, deadlines: Deadlines, clock: Clock) -> None:
        self.deadlines = deadlines
        self.clock = clock
        self.last_scan_ms = 0.0
        # Told each scan's duration in seconds and whether it succeeded; for the metrics.
        self.on_scan: Callable[[float, bool], None] | None = None

    async def scan(self) -> dict[str, int]:
        started = time.perf_counter()
        try:
            done = await self.deadlines.scan(self.clock.now())
        except Exception:
            # The next scan tries again: nothing was marked sent in a transaction that failed.
            log.exception("scheduler scan failed")
            if self.on_scan is not None:
                self.on_scan(time.perf_counter() - started, False)
            return {}
        elapsed = time.perf_counter() - started
        self.last_scan_ms = elapsed * 1000
        if self.on_scan is not None:
            self.on_scan(elapsed, True)
        if any(done.values()):
            log.info(
                "scan: %s in %.0f ms", ", ".join(f"{k}={v}" for k, v in done.items() if v), self.last_scan_ms
            )
        return done
