"""Memory: the bot process's peak resident set (VmHWM in /proc/<pid>/status), idle on an empty database
and idle with the scan benchmark's largest database (nothing due: its overdue tickets are postponed).
The figure during the intake run comes from the intake benchmark.

Idle means: started, polling, its start-up scan done (the scheduler's first scan runs at start), then
left alone for a few seconds.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from bench import population
from bench.harness import BenchTelegram, Process, Section, bot_env, bot_process

IDLE_SECONDS = 5.0
AIM_KIB = 150 * 1024


async def idle_peak(workdir: Path, database: Path, name: str, idle: float) -> dict[str, int]:
    async with BenchTelegram() as tg:
        env = bot_env(workdir, tg.base_url, database, SCHEDULER_INTERVAL=3600)
        bot: Process = bot_process(workdir, env, name)
        try:
            await bot.start(tg)
            await asyncio.sleep(idle)
            bot.check_alive()
            return bot.memory_kib()
        finally:
            await bot.stop()


def _mib(kib: int) -> float:
    return kib / 1024


async def run(
    workdir: Path,
    stored: Path,
    intake_memory: dict[str, int] | None,
    idle: float = IDLE_SECONDS,
    *,
    empty: bool = True,
) -> Section:
    """Idle with `stored` (and, with `empty`, idle on an empty database too, for comparison)."""
    section = Section("memory (bot VmHWM)")
    bare = await idle_peak(workdir, workdir / "memory_empty.db", "bot_idle_empty", idle) if empty else None
    postponed = population.postpone_due(stored, datetime.now(UTC))
    tickets = population.ticket_count(stored)
    full = await idle_peak(workdir, stored, "bot_idle_full", idle)
    if bare is not None:
        section.add("idle, empty database", _mib(bare["VmHWM"]), "MiB")
    ok = full["VmHWM"] < AIM_KIB
    section.add(f"idle, {tickets:,} tickets stored", _mib(full["VmHWM"]), "MiB", aim="< 150 MiB", ok=ok)
    if intake_memory:
        ok = intake_memory["VmHWM"] < AIM_KIB
        section.add("during the intake run", _mib(intake_memory["VmHWM"]), "MiB", aim="< 150 MiB", ok=ok)
    section.notes.append(
        f"VmHWM after start-up, the first scheduler scan and {idle:.0f} s idle; with the stored "
        f"tickets, the {postponed:,} overdue ones were postponed first so nothing is due."
    )
    section.details = {
        "idle_empty_kib": bare,
        "idle_full_kib": full,
        "tickets": tickets,
        "intake_kib": intake_memory,
    }
    return section
