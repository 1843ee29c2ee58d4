"""Two bot processes behind one webhook share a PostgreSQL database; one is SIGKILLed mid-run. Every
report is still exactly one ticket, and every card and every reminder exists exactly once: the survivor
takes over what the dead one stored but did not finish, and the chats it was delivering to."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import ROADS_CHAT, TEST_ROUTING, WASTE_CHAT
from tests.crash_driver import (
    CARD,
    START_TIMEOUT,
    TAG,
    BotProcess,
    Citizen,
    eventually,
    text_of,
)
from tests.fakes.telegram import FakeTelegram
from tests.test_crash_recovery import telegram

CITIZENS = 16
REPORTS_PER_CITIZEN = 2
FIRST_CITIZEN = 20_000
CATEGORIES = ("potholes", "garbage")
AGENCY_CHATS = (ROADS_CHAT, WASTE_CHAT)
SECRET = "two-instances-secret"
# A deadline an hour out with the reminder 10 s after filing: reminders fall due during the run.
ROUTING = re.sub(r'sla = "\d+d"', 'sla = "1h"\nremind_before = "59m50s"', TEST_ROUTING)
REMINDER = re.compile(r"^⏰ #T(\d+):")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Instance(BotProcess):
    """One of several processes serving the same bot behind a load balancer (the fake's forwarding)."""

    def __init__(self, directory: Path, tg: FakeTelegram, database_url: str) -> None:
        directory.mkdir()
        super().__init__(directory, tg, database_url)
        (directory / "routing.toml").write_text(ROUTING, encoding="utf-8")
        self.port = free_port()
        self.env.update(
            TELEGRAM_MODE="webhook",
            WEBHOOK_URL="https://bot.example.org/telegram",
            WEBHOOK_SECRET=SECRET,
            HTTP_PORT=str(self.port),
            SCHEDULER_INTERVAL="1",
            OUTBOX_CLAIM_SECONDS="3",
            INBOX_SWEEP_AFTER="3",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start a run and return once its webhook server answers."""
        self.runs += 1
        self.process = await self._spawn("run")
        process = self.process

        def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"exited with {process.returncode}\n{self.log_tail()}")
            return self.log_path.exists() and "CivicDesk started" in self.log_path.read_text(
                encoding="utf-8", errors="replace"
            )

        await eventually(ready, START_TIMEOUT, f"instance on port {self.port} started")


@asynccontextmanager
async def instances(tmp_path: Path, tg: FakeTelegram, database_url: str) -> AsyncIterator[list[Instance]]:
    async with AsyncExitStack() as stack:
        started = []
        for name in ("a", "b"):
            instance = Instance(tmp_path / name, tg, database_url)
            stack.push_async_callback(instance.cleanup)
            started.append(instance)
        try:
            await started[0].migrate()
            await asyncio.gather(*(instance.start() for instance in started))
            yield started
        except BaseException:
            for instance in started:
                print(instance.log_tail())
            raise


@pytest.mark.postgres_only("several instances share one PostgreSQL database")
@pytest.mark.timeout(300)
async def test_two_instances_one_killed_mid_run_lose_and_double_nothing(
    tmp_path: Path, empty_database_url: str
) -> None:
    rng = random.Random(7)
    async with telegram() as tg, instances(tmp_path, tg, empty_database_url) as (first, second):
        tg.forward_webhooks(first.url, second.url)
        citizens = []
        for index in range(CITIZENS):
            user_id = FIRST_CITIZEN + index
            tg.add_user(user_id=user_id, first_name=f"Citizen{index}", language_code="ru")
            citizens.append(Citizen(tg, user_id, random.Random(index)))

        async def file_reports(citizen: Citizen) -> None:
            await asyncio.sleep(citizen.rng.uniform(0, 1))
            for n in range(REPORTS_PER_CITIZEN):
                await citizen.file(citizen.rng.choice(CATEGORIES), f"report {citizen.user_id}-{n}")

        filing = asyncio.gather(*(file_reports(c) for c in citizens))
        try:
            # Killed while about a third of the citizens' steps are still to come.
            await eventually(lambda: len(tg.updates) >= CITIZENS * REPORTS_PER_CITIZEN * 3, 120, "filing")
            await asyncio.sleep(rng.uniform(0, 0.3))
            await first.kill()
            await asyncio.wait_for(filing, 180)
        finally:
            filing.cancel()
            await asyncio.gather(filing, return_exceptions=True)

        numbers = {int(n) for (n,) in second.query("SELECT number FROM tickets")}
        confirmed = [text for c in citizens for text in c.confirmed]
        texts = [text for (text,) in second.query("SELECT text FROM tickets")]
        assert sorted(texts) == sorted(confirmed), "every confirmed report is exactly one ticket"
        assert len(numbers) == len(texts) == CITIZENS * REPORTS_PER_CITIZEN

        def agency_messages(pattern: re.Pattern[str]) -> Counter[int]:
            found: Counter[int] = Counter()
            for chat in AGENCY_CHATS:
                for message in tg.bot_messages(chat):
                    if match := pattern.match(text_of(message)):
                        found[int(match[1])] += 1
            return found

        def cards() -> Counter[int]:
            found: Counter[int] = Counter()
            for chat in AGENCY_CHATS:
                for message in tg.bot_messages(chat):
                    if (match := CARD.match(text_of(message))) and tg.button_data(message):
                        found[int(match[1])] += 1
            return found

        # Reminders fall due 10 s after each ticket; the survivor sends those of the dead one too.
        await eventually(lambda: set(agency_messages(REMINDER)) == numbers, 60, "a reminder for every ticket")
        await eventually(lambda: set(cards()) == numbers, 30, "a card for every ticket")
        second.check_alive()
        await second.stop()

        # The database holds each promise once: one reminder per ticket, however many instances scanned.
        reminded = Counter(
            ticket
            for (ticket,) in second.query("SELECT ticket_id FROM ticket_events WHERE kind = 'reminded'")
        )
        assert len(reminded) == len(numbers) and set(reminded.values()) == {1}
        # A message is sent once; the one exception a kill allows: a send that succeeded just before the
        # process died, with no time to record it, is sent again by the survivor.
        registrations: Counter[str] = Counter()
        for citizen in citizens:
            for message in tg.bot_messages(citizen.user_id):
                if tag := TAG.search(text_of(message)):
                    registrations[f"{citizen.user_id}:{tag[0]}"] += 1
        repeats = {
            "cards": sum(count - 1 for count in cards().values()),
            "reminders": sum(count - 1 for count in agency_messages(REMINDER).values()),
            "registrations": sum(count - 1 for count in registrations.values()),
        }
        print(f"{len(numbers)} tickets; {len(tg.updates)} updates; repeats after the kill: {repeats}")
        assert sum(repeats.values()) <= 1, repeats
