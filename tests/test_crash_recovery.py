"""Crash safety of the real process: an update that reached the bot becomes exactly one ticket however
often `python -m bot` is SIGKILLed and restarted, nothing it owes is lost or sent twice over, and a
report half written when the process died is still there after the restart.

The fake Telegram server lives in the test's event loop, so it keeps unconfirmed updates, chats and
callback queries across runs exactly as Telegram would.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TOKEN, WASTE_CHAT
from tests.crash_driver import (
    CARD,
    TAG,
    TG,
    BotProcess,
    Citizen,
    Message,
    duplicates_by_kill,
    eventually,
    high_water,
    text_of,
    unstored_confirmed,
)
from tests.fakes.telegram import FakeTelegram

CITIZENS = 60
REPORTS_PER_CITIZEN = 4
KILLS = 5
# /new, category, text, skip, confirm.
UPDATES_PER_REPORT = 5
FIRST_CITIZEN = 10_000
SEED = int(os.environ.get("CRASH_TEST_SEED", "20260612"))
AGENCY_CHATS = {"roads": ROADS_CHAT, "waste": WASTE_CHAT}
CATEGORIES = ("potholes", "garbage")
DRAIN_TIMEOUT = 60.0


@asynccontextmanager
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, bot_id=123456, bot_username="civicdesk_test_bot") as tg:
        for chat_id, title in ((ROADS_CHAT, "Roads"), (WASTE_CHAT, "Waste"), (COORDINATORS_CHAT, "Centre")):
            tg.add_group(chat_id=chat_id, title=title, type="supergroup")
        yield tg


@asynccontextmanager
async def installed_bot(tmp_path: Path, tg: FakeTelegram, database_url: str) -> AsyncIterator[BotProcess]:
    bot = BotProcess(tmp_path, tg, database_url)
    try:
        await bot.migrate()
        await bot.start()
        yield bot
    except BaseException:
        print(bot.log_tail())
        raise
    finally:
        await bot.cleanup()


async def drained(bot: BotProcess, tg: FakeTelegram) -> None:
    """Wait until nothing is left to handle, send or confirm."""

    left: dict[str, int] = {}

    def idle() -> bool:
        bot.check_alive()
        left["outbox"] = bot.query("SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0]
        left["inbox"] = bot.query("SELECT count(*) FROM inbox")[0][0]
        left["unconfirmed"] = tg.pending_updates
        return not any(left.values())

    try:
        await eventually(idle, DRAIN_TIMEOUT, "the backlog drained")
    except AssertionError as error:
        raise AssertionError(f"{error}; still left: {left}") from None


@pytest.mark.timeout(300)
async def test_sigkill_at_random_moments_loses_and_repeats_nothing(
    tmp_path: Path, empty_database_url: str
) -> None:
    rng = random.Random(SEED)
    async with telegram() as tg, installed_bot(tmp_path, tg, empty_database_url) as bot:
        citizens = []
        for index in range(CITIZENS):
            user_id = FIRST_CITIZEN + index
            tg.add_user(user_id=user_id, first_name=f"Citizen{index}", language_code="ru")
            citizens.append(Citizen(tg, user_id, random.Random(SEED * 1000 + index)))

        async def file_reports(citizen: Citizen) -> None:
            # People do not all start at the same instant.
            await asyncio.sleep(citizen.rng.uniform(0, 2))
            for n in range(REPORTS_PER_CITIZEN):
                await citizen.file(citizen.rng.choice(CATEGORIES), f"report {citizen.user_id}-{n}")

        at_kill: list[dict[str, int]] = []
        marks: list[dict[int, int]] = []
        watched = [c.user_id for c in citizens] + list(AGENCY_CHATS.values())

        async def kill_and_restart(filing: asyncio.Future[object]) -> None:
            expected = CITIZENS * REPORTS_PER_CITIZEN * UPDATES_PER_REPORT
            # Moments tied to the citizens' progress, so every kill lands while reports are in flight;
            # two close moments kill a run that is still replaying what the last one left.
            moments = sorted(rng.uniform(0.05, 0.85) * expected for _ in range(KILLS))
            for moment in moments:

                def reached(moment: float = moment) -> bool:
                    bot.check_alive()
                    return len(tg.updates) >= moment

                await eventually(reached, 120, f"{moment:.0f} updates from citizens")
                await asyncio.sleep(rng.uniform(0, 0.5))
                await bot.kill()
                lost = unstored_confirmed(bot, tg)
                assert not lost, f"confirmed to Telegram but neither stored nor handled: {lost}"
                marks.append(high_water(tg, watched))
                at_kill.append(
                    {
                        "updates": len(tg.updates),
                        "inbox": bot.query("SELECT count(*) FROM inbox")[0][0],
                        "outbox": bot.query("SELECT count(*) FROM outbox WHERE status = 'pending'")[0][0],
                        "tickets": bot.query("SELECT count(*) FROM tickets")[0][0],
                    }
                )
                await asyncio.sleep(rng.uniform(0, 0.5))
                await bot.start()

            def finished() -> bool:
                bot.check_alive()
                return filing.done()

            await eventually(finished, 240, "citizens done filing")

        filing = asyncio.gather(*(file_reports(c) for c in citizens))
        killer = asyncio.ensure_future(kill_and_restart(filing))
        try:
            await asyncio.gather(filing, killer)
        finally:
            for task in (filing, killer):
                task.cancel()
            await asyncio.gather(filing, killer, return_exceptions=True)

        await drained(bot, tg)
        await bot.stop()

        problems = check_invariants(bot, tg, citizens)
        registrations, cards = registration_messages(tg, citizens), card_messages(tg)
        *registrations_by_kill, unexplained_registrations = duplicates_by_kill(registrations, marks)
        *cards_by_kill, unexplained_cards = duplicates_by_kill(cards, marks)
        print(
            f"seed {SEED}: {sum(len(c.confirmed) for c in citizens)} reports from {CITIZENS} citizens, "
            f"{bot.kills} kills, {sum(c.repeats for c in citizens)} repeated presses, "
            f"{len(tg.updates)} updates; "
            f"duplicate registrations by kill {registrations_by_kill} (+{unexplained_registrations} with no "
            f"kill between), duplicate cards by kill {cards_by_kill} (+{unexplained_cards}); "
            f"state at each kill {at_kill}"
        )
        assert bot.kills == KILLS
        if unexplained_registrations or unexplained_cards:
            problems.append(
                f"{unexplained_registrations} registrations and {unexplained_cards} cards repeated "
                "with no kill in between"
            )
        # A send the process could not record before it died may repeat: no message more than once per kill.
        for chat, found in {**registrations, **cards}.items():
            texts = [text_of(m) for m in found]
            worst = max((texts.count(t) for t in set(texts)), default=0)
            if worst - 1 > bot.kills:
                problems.append(
                    f"a message in chat {chat} was delivered {worst} times after {bot.kills} kills"
                )
        assert not problems, "\n".join(problems)


def registration_messages(tg: FakeTelegram, citizens: list[Citizen]) -> dict[int, list[Message]]:
    return {c.user_id: [m for m in tg.bot_messages(c.user_id) if TAG.search(text_of(m))] for c in citizens}


def card_messages(tg: FakeTelegram) -> dict[int, list[Message]]:
    return {
        chat: [m for m in tg.bot_messages(chat) if CARD.match(text_of(m)) and tg.button_data(m)]
        for chat in AGENCY_CHATS.values()
    }


def check_invariants(bot: BotProcess, tg: FakeTelegram, citizens: list[Citizen]) -> list[str]:
    """Every broken promise, so one run shows them all."""
    problems = []
    rows = bot.query(
        "SELECT t.number, c.external_id, t.text, t.agency_id, t.address, t.latitude "
        "FROM tickets t JOIN citizens c ON c.id = t.citizen_id ORDER BY t.number"
    )

    # Every confirmed report is exactly one ticket, and no ticket exists without a confirmation.
    filed: defaultdict[int, list[str]] = defaultdict(list)
    numbers: defaultdict[int, set[int]] = defaultdict(set)
    for number, user_id, text, _, _, _ in rows:
        filed[user_id].append(text)
        numbers[user_id].add(number)
    confirmed = sum(len(c.confirmed) for c in citizens)
    if confirmed != CITIZENS * REPORTS_PER_CITIZEN:
        problems.append(f"citizens confirmed {confirmed} reports, not {CITIZENS * REPORTS_PER_CITIZEN}")
    wrong = {
        c.user_id: (sorted(filed[c.user_id]), sorted(c.confirmed))
        for c in citizens
        if sorted(filed[c.user_id]) != sorted(c.confirmed)
    }
    if wrong or len(rows) != confirmed:
        problems.append(f"{len(rows)} tickets for {confirmed} confirmed reports; (filed, confirmed): {wrong}")
    repeated = [text for text, count in Counter(r[2] for r in rows).items() if count > 1]
    if repeated:
        problems.append(f"reports filed more than once: {repeated}")

    # Every citizen pressed "skip": a place on a ticket means an update was handled a second time, its
    # text taken again, at the next step of the conversation, as the address.
    placed = [
        (number, text, address) for number, _, text, _, address, latitude in rows if address or latitude
    ]
    if placed:
        handled = bot.handled_in_runs()
        evidence = []
        for number, text, address in placed:
            update = next(u["update_id"] for u in tg.updates if u.get("message", {}).get("text") == text)
            evidence.append(
                f"#T{number} {text!r} has address {address!r}; its text was update {update}, "
                f"handled in runs {handled.get(update)}"
            )
        problems.append("tickets that gained a place nobody gave:\n  " + "\n  ".join(evidence))

    # Every card reached its agency chat, every citizen heard about every ticket.
    card_numbers = {
        chat: Counter(int(CARD.match(text_of(m))[1]) for m in found)
        for chat, found in card_messages(tg).items()
    }
    no_card = [
        number for number, _, _, agency, _, _ in rows if not card_numbers[AGENCY_CHATS[agency]][number]
    ]
    if no_card:
        problems.append(f"tickets without a card in their agency chat: {no_card}")
    stray = {
        chat: sorted(set(found) - {r[0] for r in rows if AGENCY_CHATS[r[3]] == chat})
        for chat, found in card_numbers.items()
    }
    if any(stray.values()):
        problems.append(f"cards of unknown or other agencies' tickets: {stray}")
    unheard = {
        user_id: sorted(numbers[user_id] - {int(TAG.search(text_of(m))[1]) for m in found})
        for user_id, found in registration_messages(tg, citizens).items()
    }
    if any(unheard.values()):
        problems.append(f"tickets the citizen was never told about: {unheard}")

    # Every update Telegram delivered was handled; nothing owed was given up.
    handled_keys = {key for (key,) in bot.query("SELECT key FROM processed_updates WHERE platform = ?", TG)}
    unhandled = [u["update_id"] for u in tg.updates if str(u["update_id"]) not in handled_keys]
    if unhandled:
        problems.append(f"updates never handled: {unhandled}")
    failed = bot.query("SELECT id, chat_id, last_error FROM outbox WHERE status = 'failed'")
    if failed:
        problems.append(f"messages given up: {failed}")
    return problems


@pytest.mark.timeout(120)
async def test_a_report_half_written_survives_a_kill(tmp_path: Path, empty_database_url: str) -> None:
    async with telegram() as tg, installed_bot(tmp_path, tg, empty_database_url) as bot:
        vera = Citizen(tg, 201, random.Random(1), pause=(0, 0))
        ivan = Citizen(tg, 202, random.Random(2), pause=(0, 0))
        tg.add_user(user_id=vera.user_id, first_name="Вера", language_code="ru")
        tg.add_user(user_id=ivan.user_id, first_name="Иван", language_code="ru")
        vera_text, ivan_text = "Яма у школы №3", "Контейнеры не вывозят с понедельника"

        keyboard = await vera.new_report()
        await vera.choose(keyboard, "potholes")
        location_prompt = await vera.describe(vera_text)
        keyboard = await ivan.new_report()
        await ivan.choose(keyboard, "garbage")
        # Ivan's text is on its way when the process dies: he waits for the answer through the restart.
        sent = len(tg.updates)
        ivan_answer = asyncio.ensure_future(ivan.describe(ivan_text))
        try:
            await tg.wait_until(lambda: len(tg.updates) > sent, timeout=10)
            await bot.kill()
            assert not unstored_confirmed(bot, tg)
            await bot.start()

            summary = await vera.skip(location_prompt)
            assert vera_text in text_of(summary)
            await vera.confirm(summary, vera_text)
            prompt = await ivan_answer
        finally:
            ivan_answer.cancel()
        summary = await ivan.skip(prompt) if "d:skip" in tg.button_data(prompt) else prompt
        assert ivan_text in text_of(summary)
        await ivan.confirm(summary, ivan_text)

        await drained(bot, tg)
        await bot.stop()
        rows = bot.query(
            "SELECT c.external_id, t.text, t.address, t.latitude "
            "FROM tickets t JOIN citizens c ON c.id = t.citizen_id ORDER BY t.number"
        )
        assert sorted(rows) == [(vera.user_id, vera_text, None, None), (ivan.user_id, ivan_text, None, None)]


async def test_an_album_cut_short_by_a_kill_is_gathered_again(
    tmp_path: Path, empty_database_url: str
) -> None:
    """The parts of an album wait for one another before they are handled: a kill meanwhile must leave
    every part to be handled again, not the first alone."""
    async with telegram() as tg, installed_bot(tmp_path, tg, empty_database_url) as bot:
        nina = Citizen(tg, 203, random.Random(3), pause=(0, 0))
        tg.add_user(user_id=nina.user_id, first_name="Нина", language_code="ru")
        # A run that waits long for an album's last part, so the kill lands while it waits.
        bot.env["ALBUM_WAIT_SECONDS"] = "10"
        await bot.kill()
        await bot.start()
        await nina.choose(await nina.new_report(), "potholes")
        seen = await nina.send_album(3, "Яма и разбитый бордюр")
        parts = [str(update["update_id"]) for update in tg.updates[-3:]]

        def all_taken() -> bool:
            bot.check_alive()
            kept = {key for (key,) in bot.query("SELECT key FROM inbox")}
            kept |= {key for (key,) in bot.query("SELECT key FROM processed_updates")}
            return set(parts) <= kept

        await eventually(all_taken, 30, "the album's parts stored")
        await bot.kill()
        bot.env["ALBUM_WAIT_SECONDS"] = "0.3"
        await bot.start()

        summary = await nina.skip(await nina.next_prompt(seen))
        assert "3 фотографии" in text_of(summary)
        await nina.confirm(summary, "Яма и разбитый бордюр")
        await drained(bot, tg)
        await bot.stop()
        assert bot.query("SELECT count(*) FROM ticket_media") == [(3,)]
