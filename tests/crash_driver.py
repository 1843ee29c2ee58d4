"""The bot as an operator runs it (`python -m bot`), killed and restarted against one FakeTelegram that
outlives every run, plus citizens who file reports through the buttons and what the runs left in the
database."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.domain import Platform
from tests.conftest import TEST_ROUTING, TOKEN
from tests.databases import Peek
from tests.fakes.telegram import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
Message = dict[str, Any]
TG = Platform.telegram.value

# A cold start imports aiogram, vkbottle, alembic and APScheduler: slow on a loaded 2-core runner.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# One step of a citizen, however many restarts fall into it.
STEP_TIMEOUT = 90.0
TAG = re.compile(r"#T(\d+)\b")
CARD = re.compile(r"^#T(\d+)\b")
RUN_MARK = re.compile(r"python -m bot run \(run (\d+)\)")
HANDLED = re.compile(r"Update id=(\d+) is (?:not )?handled")


def bot_env(tmp_path: Path, api_url: str, database_url: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "DATABASE_", "ROUTING_", "VK_"))
    }
    routing = tmp_path / "routing.toml"
    routing.write_text(TEST_ROUTING, encoding="utf-8")
    env.update(
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_API_URL=api_url,
        DATABASE_URL=database_url,
        ROUTING_FILE=str(routing),
        TELEGRAM_POLLING_TIMEOUT="1",
        OUTBOX_POLL_SECONDS="0.2",
        ALBUM_WAIT_SECONDS="0.3",
        SCHEDULER_INTERVAL="3600",
        # Hundreds of cards into two groups: Telegram's pace (20 a minute per group, 30 a second in
        # all) would stretch the test to minutes; the fake does not enforce it.
        TELEGRAM_GROUP_RATE="0",
        TELEGRAM_GLOBAL_RATE="0",
        REPORTS_PER_HOUR="0",
        PYTHONPATH=str(ROOT),
    )
    return env


async def eventually(condition: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> None:
    """Poll a condition nothing signals (a file, another process) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


def text_of(message: Message) -> str:
    return str(message.get("text") or message.get("caption") or "")


class BotProcess:
    """One bot installation: its database and log survive every run; each run is a fresh process."""

    def __init__(self, tmp_path: Path, tg: FakeTelegram, database_url: str) -> None:
        self.tg = tg
        self.cwd = tmp_path
        self.peek = Peek(database_url)
        self.log_path = tmp_path / "bot.log"
        self.env = bot_env(tmp_path, tg.base_url, database_url)
        self.process: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.kills = 0

    async def migrate(self) -> None:
        process = await self._spawn("migrate")
        code = await asyncio.wait_for(process.wait(), START_TIMEOUT)
        assert code == 0, f"migrate exited with {code}\n{self.log_tail()}"

    async def start(self) -> None:
        """Start a run and return once it polls: replay of the stored inbox has begun by then."""
        assert self.process is None or self.process.returncode is not None
        polls = self.tg.stats.methods["getUpdates"]
        self.runs += 1
        self.process = await self._spawn("run")
        process = self.process

        def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"run {self.runs} exited with {process.returncode}\n{self.log_tail()}")
            return self.tg.stats.methods["getUpdates"] > polls

        await eventually(ready, START_TIMEOUT, f"run {self.runs} polling Telegram")

    async def kill(self) -> None:
        process = self._running()
        process.kill()
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        self.kills += 1
        self._note(f"SIGKILL after run {self.runs}")

    async def stop(self) -> None:
        process = self._running()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        assert code == 0, f"run {self.runs} stopped with {code}\n{self.log_tail()}"

    async def cleanup(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.peek.close()

    def check_alive(self) -> None:
        self._running()

    def log_tail(self, lines: int = 120) -> str:
        if not self.log_path.exists():
            return "(no log)"
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n".join(["--- bot log tail ---", *tail])

    def handled_in_runs(self) -> dict[int, list[int]]:
        """For each update id, the runs whose dispatcher finished it, read from aiogram's log lines."""
        runs: defaultdict[int, list[int]] = defaultdict(list)
        run = 0
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if started := RUN_MARK.search(line):
                run = int(started[1])
            elif handled := HANDLED.search(line):
                runs[int(handled[1])].append(run)
        return dict(runs)

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        return self.peek.query(sql, *params)

    def _running(self) -> asyncio.subprocess.Process:
        process = self.process
        if process is None or process.returncode is not None:
            code = None if process is None else process.returncode
            raise AssertionError(f"the bot is not running (exit code {code})\n{self.log_tail()}")
        return process

    async def _spawn(self, command: str) -> asyncio.subprocess.Process:
        self._note(f"python -m bot {command} (run {self.runs})")
        with self.log_path.open("ab") as log:
            # The child keeps its own copy of the descriptor, so the file may be closed here.
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                command,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    def _note(self, line: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"=== {datetime.now(UTC):%H:%M:%S.%f} {line} ===\n")


@dataclass
class Citizen:
    """A person filing reports: each step waits for the bot's answer to the previous one. A button step
    that stays unanswered longer than their patience is pressed again, while the button is still there."""

    tg: FakeTelegram
    user_id: int
    rng: random.Random
    patience: tuple[float, float] = (2.0, 6.0)
    pause: tuple[float, float] = (0.0, 0.2)
    # Texts of the reports this citizen pressed "confirm" for, in order.
    confirmed: list[str] = field(default_factory=list)
    repeats: int = 0

    async def file(self, category: str, text: str) -> None:
        keyboard = await self.new_report()
        await self.choose(keyboard, category)
        prompt = await self.describe(text)
        # A step the bot already took for them (a location already given) goes straight to the summary.
        summary = await self.skip(prompt) if "d:skip" in self._buttons(prompt) else prompt
        assert text in text_of(summary), (
            f"citizen {self.user_id}: summary lost {text!r}: {text_of(summary)!r}"
        )
        await self.confirm(summary, text)

    async def new_report(self) -> Message:
        seen = await self._send(lambda: self.tg.send_command(self.user_id, "/new"))
        return await self._reply(seen, lambda m: "c:potholes" in self._buttons(m), "category keyboard")

    async def choose(self, keyboard: Message, category: str) -> Message:
        return await self._press(
            keyboard, f"c:{category}", lambda m: self._buttons(m) == ["d:cancel"], "description prompt"
        )

    async def describe(self, text: str) -> Message:
        seen = await self._send(lambda: self.tg.send_text(self.user_id, text))
        return await self._reply(seen, self._after_description, "location prompt")

    async def send_album(self, count: int, caption: str) -> int:
        """An album as the description; returns the newest bot message id before it (see `next_prompt`)."""
        return await self._send(lambda: self.tg.send_album(self.user_id, count, caption))

    async def next_prompt(self, seen: int) -> Message:
        """The step after the description, once the bot has answered past message `seen`."""
        return await self._reply(seen, self._after_description, "location prompt")

    def _after_description(self, message: Message) -> bool:
        buttons = self._buttons(message)
        return "d:skip" in buttons or "d:confirm" in buttons

    async def skip(self, prompt: Message) -> Message:
        return await self._press(prompt, "d:skip", lambda m: "d:confirm" in self._buttons(m), "summary")

    async def confirm(self, summary: Message, text: str) -> Message:
        self.confirmed.append(text)
        return await self._press(summary, "d:confirm", lambda m: "#T" in text_of(m), "registration")

    async def _send(self, act: Callable[[], Awaitable[object]]) -> int:
        await asyncio.sleep(self.rng.uniform(*self.pause))
        seen = self._latest()
        await act()
        return seen

    async def _press(
        self, message: Message, data: str, wanted: Callable[[Message], bool], what: str
    ) -> Message:
        seen = await self._send(lambda: self.tg.press(self.user_id, message, data))

        async def again() -> None:
            # Only a button the person still sees can be pressed.
            current = self.tg.get_message(self.user_id, message["message_id"])
            if current is not None and data in self._buttons(current):
                self.repeats += 1
                await self.tg.press(self.user_id, current, data)

        # The prompt pressed may itself become the next step (edited in place).
        return await self._reply(min(seen, message["message_id"] - 1), wanted, what, again)

    async def _reply(
        self,
        seen: int,
        wanted: Callable[[Message], bool],
        what: str,
        again: Callable[[], Awaitable[None]] | None = None,
    ) -> Message:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STEP_TIMEOUT
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                chat = [
                    (m["message_id"], text_of(m)[:60], self._buttons(m))
                    for m in self.tg.messages(self.user_id)
                ]
                raise AssertionError(
                    f"citizen {self.user_id} got no {what} within {STEP_TIMEOUT}s; chat: {chat}"
                )
            wait = min(self.rng.uniform(*self.patience), remaining)
            try:
                return await self.tg.wait_for_message(self.user_id, wanted, timeout=wait, after=seen)
            except AssertionError:
                if again is not None:
                    await again()

    def _latest(self) -> int:
        return max((m["message_id"] for m in self.tg.messages(self.user_id)), default=0)

    def _buttons(self, message: Message) -> list[str]:
        return self.tg.button_data(message)


def unstored_confirmed(bot: BotProcess, tg: FakeTelegram) -> list[int]:
    """Updates Telegram counts as delivered that the bot has neither in its inbox nor handled."""
    kept = {key for (key,) in bot.query("SELECT key FROM inbox WHERE platform = ?", TG)}
    kept |= {key for (key,) in bot.query("SELECT key FROM processed_updates WHERE platform = ?", TG)}
    return [
        u["update_id"]
        for u in tg.updates
        if u["update_id"] <= tg.confirmed_update_id and str(u["update_id"]) not in kept
    ]


def high_water(tg: FakeTelegram, chats: list[int]) -> dict[int, int]:
    """The newest message id in each chat."""
    return {chat: max((m["message_id"] for m in tg.messages(chat)), default=0) for chat in chats}


def duplicates_by_kill(messages: dict[int, list[Message]], marks: list[dict[int, int]]) -> list[int]:
    """Extra copies counted against the first kill that fell between a text's first copy and the repeat
    (marks: each chat's high water at each kill); the last item counts repeats no kill explains."""
    counts = [0] * (len(marks) + 1)
    for chat, found in messages.items():
        first: dict[str, int] = {}
        for message in found:
            text, message_id = text_of(message), message["message_id"]
            if text not in first:
                first[text] = message_id
                continue
            kill = next(
                (k for k, mark in enumerate(marks) if first[text] <= mark.get(chat, 0) < message_id),
                len(marks),
            )
            counts[kill] += 1
    return counts
