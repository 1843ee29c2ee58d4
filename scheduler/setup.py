"""APScheduler wiring: the scan every `SCHEDULER_INTERVAL` seconds, never two at once."""

from __future__ import annotations

from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from scheduler.jobs import Jobs


def build_scheduler(jobs: Jobs, interval_seconds: float) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        jobs.scan,
        IntervalTrigger(seconds=interval_seconds, timezone=UTC),
        id="scan",
        # A scan that overlaps the next tick, or ticks missed while the process slept, run once.
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        # Catch up at start-up with whatever fell due while the bot was down.
        next_run_time=datetime.now(UTC),
    )
    return scheduler
