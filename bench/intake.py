"""Intake: many citizens file a report with a photo at once, each step as soon as the bot answered the
previous one; a bare aiogram echo bot under the same closed-loop load is the baseline.

A report is five updates (/new, the category button, a photo with its caption, "skip" for the place,
"confirm"). Throughput is compared per update: the bot's updates/s against the echo bot's updates/s,
where every echo update is one text message answered with one message.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import (
    JSON,
    ROADS_CHAT,
    BenchError,
    BenchTelegram,
    Process,
    Section,
    TxStats,
    bot_env,
    bot_process,
    percentile,
    text_of,
)

STEPS_PER_REPORT = 5
STEP_TIMEOUT = 120.0
WARM_UP = 10
INTAKE_SETTINGS: dict[str, str | int | float] = {
    "TELEGRAM_GLOBAL_RATE": 0,
    "TELEGRAM_PRIVATE_RATE": 0,
    "TELEGRAM_GROUP_RATE": 0,
    "REPORTS_PER_HOUR": 0,
    # Nothing falls due during the run; a scan would only add noise.
    "SCHEDULER_INTERVAL": 3600,
}


@dataclass
class Load:
    """What one closed-loop run measured."""

    began: float
    ended: float = 0.0
    updates: int = 0
    completed: int = 0
    failed: list[str] = field(default_factory=list)
    # Update injected → the bot's answer in the same chat, every step.
    step_latency: list[float] = field(default_factory=list)
    # Confirm pressed → the card in the agency chat (intake only).
    card_latency: list[float] = field(default_factory=list)
    # CPU seconds the bot (or echo bot) process used during the run.
    cpu_seconds: float = 0.0
    # Bot API calls the fake served during the run, by method.
    api_calls: Counter[str] = field(default_factory=Counter)

    def calls_per_update(self, updates: int) -> float:
        """Calls besides getUpdates, per update handled."""
        return sum(n for name, n in self.api_calls.items() if name.lower() != "getupdates") / max(updates, 1)

    @property
    def span(self) -> float:
        return self.ended - self.began


def _buttons(message: JSON) -> list[str]:
    return BenchTelegram.button_data(message)


async def _answer(
    tg: BenchTelegram,
    load: Load,
    chat_id: int,
    wanted: Callable[[JSON], bool],
    act: Callable[[], Awaitable[object]],
) -> tuple[float, JSON]:
    """Do one step and wait for the bot's answer to it; the step's latency is recorded."""
    future = tg.expect(chat_id, wanted)
    started = time.perf_counter()
    await act()
    load.updates += 1
    at, message = await asyncio.wait_for(future, STEP_TIMEOUT)
    load.step_latency.append(at - started)
    return at, message


async def file_report(tg: BenchTelegram, load: Load, user_id: int) -> None:
    """One citizen's report through the buttons, the way a person files it."""
    marker = f"Citizen {user_id} reports a pothole"
    _, keyboard = await _answer(
        tg, load, user_id, lambda m: "c:potholes" in _buttons(m), lambda: tg.send_command(user_id, "/new")
    )
    await _answer(
        tg,
        load,
        user_id,
        lambda m: _buttons(m) == ["d:cancel"],
        lambda: tg.press(user_id, keyboard, "c:potholes"),
    )
    _, prompt = await _answer(
        tg,
        load,
        user_id,
        lambda m: "d:skip" in _buttons(m) or "d:confirm" in _buttons(m),
        lambda: tg.send_photo(user_id, caption=marker),
    )
    summary = prompt
    if "d:skip" in _buttons(prompt):
        _, summary = await _answer(
            tg,
            load,
            user_id,
            lambda m: "d:confirm" in _buttons(m),
            lambda: tg.press(user_id, prompt, "d:skip"),
        )
    card = tg.expect(ROADS_CHAT, lambda m: marker in text_of(m) and bool(_buttons(m)))
    confirmed = time.perf_counter()
    await _answer(
        tg, load, user_id, lambda m: "#T" in text_of(m), lambda: tg.press(user_id, summary, "d:confirm")
    )
    at, _ = await asyncio.wait_for(card, STEP_TIMEOUT)
    load.card_latency.append(at - confirmed)


async def echo_exchange(tg: BenchTelegram, load: Load, user_id: int, count: int) -> None:
    for index in range(count):
        text = f"echo {user_id} {index}"
        await _answer(
            tg, load, user_id, lambda m, t=text: text_of(m) == t, lambda t=text: tg.send_text(user_id, t)
        )


async def _crowd(people: list[int], run: Callable[[Load, int], Awaitable[None]]) -> Load:
    """Everyone at once; a person whose step times out is counted as failed, the others go on."""
    load = Load(began=time.perf_counter())

    async def one(user_id: int) -> None:
        try:
            await run(load, user_id)
            load.completed += 1
        except (TimeoutError, BenchError) as error:
            load.failed.append(f"user {user_id}: {error!r}")

    await asyncio.gather(*(one(user_id) for user_id in people))
    load.ended = time.perf_counter()
    return load


def _add_people(tg: BenchTelegram, first: int, count: int) -> list[int]:
    people = list(range(first, first + count))
    for user_id in people:
        tg.add_user(user_id, first_name=f"Citizen{user_id}", language_code="ru")
    return people


async def run_echo(workdir: Path, users: int) -> Load:
    async with BenchTelegram() as tg:
        env = bot_env(workdir, tg.base_url, workdir / "unused.db")
        echo = Process("echo_bot", [sys.executable, "-m", "bench.echo_bot"], env, workdir)
        try:
            await echo.start(tg)
            warm = _add_people(tg, 3_000_000, WARM_UP)
            await _crowd(warm, lambda load, uid: echo_exchange(tg, load, uid, STEPS_PER_REPORT))
            people = _add_people(tg, 2_000_000, users)
            await echo.measuring()
            cpu, calls = echo.cpu_seconds(), len(tg.requests)
            load = await _crowd(people, lambda load, uid: echo_exchange(tg, load, uid, STEPS_PER_REPORT))
            load.cpu_seconds = echo.cpu_seconds() - cpu
            load.api_calls = Counter(name for name, _ in tg.requests[calls:])
            return load
        finally:
            await echo.stop()


async def run_intake(workdir: Path, citizens: int) -> tuple[Load, dict[str, int], JSON | None]:
    """Returns the load, the bot's memory (VmHWM, VmRSS in KiB) right after it, and with --tx-stats
    its write transactions by call site."""
    async with BenchTelegram() as tg:
        env = bot_env(workdir, tg.base_url, workdir / "intake.db", **INTAKE_SETTINGS)
        bot = bot_process(workdir, env, "bot_intake")
        try:
            await bot.start(tg)
            warm = _add_people(tg, 3_000_000, WARM_UP)
            await _crowd(warm, lambda load, uid: file_report(tg, load, uid))
            people = _add_people(tg, 1_000_000, citizens)
            await bot.measuring()
            cpu, calls = bot.cpu_seconds(), len(tg.requests)
            load = await _crowd(people, lambda load, uid: file_report(tg, load, uid))
            bot.check_alive()
            load.cpu_seconds = bot.cpu_seconds() - cpu
            load.api_calls = Counter(name for name, _ in tg.requests[calls:])
            memory = bot.memory_kib()
        finally:
            await bot.stop()
        return load, memory, TxStats.read(bot)


async def run(workdir: Path, citizens: int) -> Section:
    section = Section("intake")
    echo = await run_echo(workdir, citizens)
    intake, memory, transactions = await run_intake(workdir, citizens)
    reports_per_s = intake.completed / intake.span
    intake_updates_per_s = intake.completed * STEPS_PER_REPORT / intake.span
    echo_updates_per_s = echo.updates / echo.span
    ratio = intake_updates_per_s / echo_updates_per_s
    ms = 1000.0
    section.add("citizens (each one report with a photo)", intake.completed, "", note=f"{citizens} started")
    section.add("reports/s", reports_per_s, "1/s")
    section.add("updates/s (5 per report)", intake_updates_per_s, "1/s")
    section.add("confirm → card in agency chat, p50", percentile(intake.card_latency, 0.5) * ms, "ms")
    section.add("confirm → card in agency chat, p99", percentile(intake.card_latency, 0.99) * ms, "ms")
    section.add("update → bot's answer, p50", percentile(intake.step_latency, 0.5) * ms, "ms")
    section.add("update → bot's answer, p99", percentile(intake.step_latency, 0.99) * ms, "ms")
    section.add("echo bot: updates/s", echo_updates_per_s, "1/s", note=f"{citizens} users × 5 messages")
    section.add("echo bot: update → echo, p50", percentile(echo.step_latency, 0.5) * ms, "ms")
    section.add("echo bot: update → echo, p99", percentile(echo.step_latency, 0.99) * ms, "ms")
    section.add("intake / echo (updates/s)", ratio, "×", aim="≥ 0.5", ok=ratio >= 0.5)
    intake_updates = intake.completed * STEPS_PER_REPORT
    section.add("bot CPU per update", intake.cpu_seconds / max(intake_updates, 1) * ms, "ms")
    section.add("echo bot CPU per update", echo.cpu_seconds / max(echo.updates, 1) * ms, "ms")
    section.add("bot CPU busy during intake", intake.cpu_seconds / intake.span, "cores")
    section.add(
        "bot's Bot API calls per update, getUpdates aside",
        intake.calls_per_update(intake_updates),
        "",
        note=", ".join(f"{name} {n / intake_updates:.2f}" for name, n in intake.api_calls.most_common()),
    )
    section.add(
        "echo bot's Bot API calls per update, getUpdates aside", echo.calls_per_update(echo.updates), ""
    )
    section.notes.append(
        "Closed loop: every citizen (and every echo user) sends the next update as soon as the bot "
        "answered the previous one; all start together. Rate limits and the hourly report limit off; "
        f"{WARM_UP} warm-up reports (and echoes) first, not counted."
    )
    section.details = {
        "citizens": citizens,
        "intake": {
            "completed": intake.completed,
            "failed": intake.failed[:20],
            "seconds": intake.span,
            "updates": intake.completed * STEPS_PER_REPORT,
            "bot_cpu_seconds": intake.cpu_seconds,
            "api_calls": dict(intake.api_calls),
        },
        "echo": {
            "updates": echo.updates,
            "seconds": echo.span,
            "failed": echo.failed[:20],
            "cpu_seconds": echo.cpu_seconds,
            "api_calls": dict(echo.api_calls),
        },
        "bot_memory_kib": memory,
    }
    if transactions:
        reports = citizens + WARM_UP
        total = sum(entry["count"] for entry in transactions.values())
        section.add("write transactions per report", total / reports, "", note="--tx-stats")
        top = sorted(transactions.items(), key=lambda item: -item[1]["count"])[:8]
        section.notes.append(
            "write transactions per report by call site: "
            + "; ".join(f"{entry['count'] / reports:.1f} {site}" for site, entry in top)
        )
        section.details["write_transactions"] = transactions
    if intake.failed or echo.failed:
        section.notes.append(f"failed: intake {len(intake.failed)}, echo {len(echo.failed)}")
    return section
