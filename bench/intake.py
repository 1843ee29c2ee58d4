"""Intake: many citizens file a report with a photo at once, each step as soon as the bot answered the
previous one; a bare aiogram echo bot under the same closed-loop load is the baseline.

A report is five updates (/new, the category button, a photo with its caption, "skip" for the place,
"confirm"). Throughput is compared per update: the bot's updates/s against the echo bot's updates/s,
where every echo update is one text message answered with one message.

Latency under that closed loop is mostly the queue a stampede builds. Each bot then also takes a steady
load, citizens arriving at a fixed pace, half the report rate the bot reached: the wait a citizen and
an agency see on a busy day. The echo bot gets the same pace of updates.
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
# The steady load: this share of the closed loop's report rate, for this long.
STEADY_SHARE = 0.5
STEADY_SECONDS = 6.0
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
        return (sum(self.api_calls.values()) - self.polls) / max(updates, 1)

    @property
    def polls(self) -> int:
        """getUpdates calls (method names are case-insensitive in the Bot API)."""
        return sum(n for name, n in self.api_calls.items() if name.lower() == "getupdates")

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


async def _person(load: Load, run: Callable[[Load, int], Awaitable[None]], user_id: int) -> None:
    """One person's part; a person whose step times out is counted as failed, the others go on."""
    try:
        await run(load, user_id)
        load.completed += 1
    except (TimeoutError, BenchError) as error:
        load.failed.append(f"user {user_id}: {error!r}")


async def _crowd(people: list[int], run: Callable[[Load, int], Awaitable[None]]) -> Load:
    """Everyone at once."""
    load = Load(began=time.perf_counter())
    await asyncio.gather(*(_person(load, run, user_id) for user_id in people))
    load.ended = time.perf_counter()
    return load


async def _steady(people: list[int], per_second: float, run: Callable[[Load, int], Awaitable[None]]) -> Load:
    """One person every 1/per_second seconds, whatever the bot's pace (an open loop: a slow bot is not
    spared arrivals, so its queue, if any, shows in the latency)."""
    load = Load(began=time.perf_counter())
    tasks: list[asyncio.Task[None]] = []
    for index, user_id in enumerate(people):
        await asyncio.sleep(max(0.0, load.began + index / per_second - time.perf_counter()))
        tasks.append(asyncio.create_task(_person(load, run, user_id)))
    await asyncio.gather(*tasks)
    load.ended = time.perf_counter()
    return load


def _add_people(tg: BenchTelegram, first: int, count: int) -> list[int]:
    people = list(range(first, first + count))
    for user_id in people:
        tg.add_user(user_id, first_name=f"Citizen{user_id}", language_code="ru")
    return people


async def run_echo(
    workdir: Path, users: int, steady_updates_per_s: float | None, answers: int = 1
) -> tuple[Load, Load | None]:
    """The closed loop, then (unless `steady_updates_per_s` is None) the steady load at that pace of
    updates. `answers`: how many times the echo bot answers each message."""
    async with BenchTelegram() as tg:
        env = bot_env(workdir, tg.base_url, workdir / "unused.db", echo_answers=answers)
        name = "echo_bot" if answers == 1 else f"echo_bot_x{answers}"
        echo = Process(name, [sys.executable, "-m", "bench.echo_bot"], env, workdir)
        try:
            await echo.start(tg)
            warm = _add_people(tg, 3_000_000, WARM_UP)
            await _crowd(warm, lambda load, uid: echo_exchange(tg, load, uid, STEPS_PER_REPORT))
            people = _add_people(tg, 2_000_000, users)
            await echo.measuring()
            cpu, calls = echo.cpu_seconds(), len(tg.requests)
            load = await _crowd(people, lambda load, uid: echo_exchange(tg, load, uid, STEPS_PER_REPORT))
            load.cpu_seconds = echo.cpu_seconds() - cpu
            load.api_calls = Counter(method for method, _ in tg.requests[calls:])
            if steady_updates_per_s is None:
                return load, None
            users_per_s = steady_updates_per_s / STEPS_PER_REPORT
            steady = await _measured(
                echo,
                tg,
                _add_people(tg, 2_500_000, _steady_count(users_per_s)),
                users_per_s,
                lambda load, uid: echo_exchange(tg, load, uid, STEPS_PER_REPORT),
            )
            return load, steady
        finally:
            await echo.stop()


async def _measured(
    process: Process,
    tg: BenchTelegram,
    people: list[int],
    per_second: float,
    run: Callable[[Load, int], Awaitable[None]],
) -> Load:
    """A steady load, with the CPU the process used and the calls it made meanwhile (and, with
    --profile, its own profile)."""
    await process.measuring("steady")
    cpu, calls = process.cpu_seconds(), len(tg.requests)
    load = await _steady(people, per_second, run)
    process.check_alive()
    load.cpu_seconds = process.cpu_seconds() - cpu
    load.api_calls = Counter(name for name, _ in tg.requests[calls:])
    return load


def _steady_count(per_second: float) -> int:
    return max(1, round(per_second * STEADY_SECONDS))


@dataclass
class Intake:
    closed: Load
    steady: Load
    steady_rate: float  # reports/s offered in the steady load
    memory: dict[str, int]  # the bot's VmHWM and VmRSS (KiB) right after the closed loop
    transactions: JSON | None  # with --tx-stats, the write transactions by call site


async def run_intake(workdir: Path, citizens: int) -> Intake:
    """The closed loop, then the steady load at half the report rate it reached."""
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
            rate = STEADY_SHARE * load.completed / load.span
            steady = await _measured(
                bot,
                tg,
                _add_people(tg, 1_500_000, _steady_count(rate)),
                rate,
                lambda load, uid: file_report(tg, load, uid),
            )
        finally:
            await bot.stop()
        return Intake(load, steady, rate, memory, TxStats.read(bot))


def _latency(section: Section, metric: str, seconds: list[float]) -> None:
    for share in (0.5, 0.99):
        section.add(f"{metric}, p{share * 100:.0f}", percentile(seconds, share) * 1000.0, "ms")


async def run(workdir: Path, citizens: int) -> Section:
    section = Section("intake")
    measured = await run_intake(workdir, citizens)
    intake, steady, memory = measured.closed, measured.steady, measured.memory
    echo, echo_steady = await run_echo(workdir, citizens, measured.steady_rate * STEPS_PER_REPORT)
    assert echo_steady is not None
    twice, _ = await run_echo(workdir, citizens, None, answers=2)
    reports_per_s = intake.completed / intake.span
    intake_updates_per_s = intake.completed * STEPS_PER_REPORT / intake.span
    echo_updates_per_s = echo.updates / echo.span
    ratio = intake_updates_per_s / echo_updates_per_s
    ms = 1000.0
    section.add("citizens (each one report with a photo)", intake.completed, "", note=f"{citizens} started")
    section.add("reports/s", reports_per_s, "1/s")
    section.add("updates/s (5 per report)", intake_updates_per_s, "1/s")
    _latency(section, "confirm → card in agency chat", intake.card_latency)
    _latency(section, "update → bot's answer", intake.step_latency)
    section.add("echo bot: updates/s", echo_updates_per_s, "1/s", note=f"{citizens} users × 5 messages")
    _latency(section, "echo bot: update → echo", echo.step_latency)
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
    twice_updates_per_s = twice.updates / twice.span
    section.add("echo bot answering twice: updates/s", twice_updates_per_s, "1/s")
    section.add(
        "echo bot answering twice: CPU per update", twice.cpu_seconds / max(twice.updates, 1) * ms, "ms"
    )
    section.add(
        "echo bot answering twice: Bot API calls per update, getUpdates aside",
        twice.calls_per_update(twice.updates),
        "",
    )
    section.add("intake / echo answering twice (updates/s)", intake_updates_per_s / twice_updates_per_s, "×")
    section.notes.append(
        "The bot makes two Bot API calls per update; the echo bot answering each message twice (two "
        "sendMessage calls, the person going on at the first) shows what the second call alone costs."
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
        "echo_answering_twice": {
            "updates": twice.updates,
            "seconds": twice.span,
            "failed": twice.failed[:20],
            "cpu_seconds": twice.cpu_seconds,
            "api_calls": dict(twice.api_calls),
        },
        "bot_memory_kib": memory,
        "steady": {
            "reports_per_s": measured.steady_rate,
            "completed": steady.completed,
            "failed": steady.failed[:20],
            "seconds": steady.span,
            "bot_cpu_seconds": steady.cpu_seconds,
            "echo_updates": echo_steady.updates,
            "echo_failed": echo_steady.failed[:20],
            "echo_cpu_seconds": echo_steady.cpu_seconds,
        },
    }
    steady_share = f"{STEADY_SHARE:.0%} of the reports/s above"
    section.add("steady load: reports/s offered", measured.steady_rate, "1/s", note=steady_share)
    _latency(section, "steady: confirm → card in agency chat", steady.card_latency)
    _latency(section, "steady: update → bot's answer", steady.step_latency)
    section.add("steady: bot CPU busy", steady.cpu_seconds / steady.span, "cores")
    section.add("steady: bot CPU per update", steady.cpu_seconds / max(steady.updates, 1) * ms, "ms")
    section.add(
        "steady: getUpdates calls per update",
        steady.polls / max(steady.updates, 1),
        "",
        note=f"closed loop: {intake.polls / max(intake_updates, 1):.2f}",
    )
    section.add(
        "steady: echo bot CPU per update", echo_steady.cpu_seconds / max(echo_steady.updates, 1) * ms, "ms"
    )
    _latency(section, "steady, echo bot at the same updates/s: update → echo", echo_steady.step_latency)
    section.notes.append(
        f"Steady: for {STEADY_SECONDS:.0f} s a citizen starts a report every 1/rate seconds, whatever the "
        "bot's pace (an open loop), at half the report rate the closed loop reached; the echo bot gets "
        "the same pace of updates. Latency here is the bot's own time, with little queue before it."
    )
    transactions = measured.transactions
    if transactions:
        reports = WARM_UP + intake.completed + steady.completed
        total = sum(entry["count"] for entry in transactions.values())
        section.add("write transactions per report", total / reports, "", note="--tx-stats")
        top = sorted(transactions.items(), key=lambda item: -item[1]["count"])[:8]
        section.notes.append(
            "write transactions per report by call site: "
            + "; ".join(f"{entry['count'] / reports:.1f} {site}" for site, entry in top)
        )
        section.details["write_transactions"] = transactions
    failures = {
        "intake": intake.failed,
        "echo": echo.failed,
        "echo answering twice": twice.failed,
        "steady intake": steady.failed,
        "steady echo": echo_steady.failed,
    }
    if any(failures.values()):
        section.notes.append("failed: " + ", ".join(f"{name} {len(f)}" for name, f in failures.items()))
    return section
