"""Delivery under Telegram's limits: messages queued in the outbox (through the ticket service, as the
bot queues them), then the bot started against a fake that answers 429 to whatever exceeds the limits.

Two runs: status messages to many citizens (the global 30/s binds), and ticket cards with a photo to one
agency group (the per-group limit binds; a card with one photo is one message, that photo with the
card's text as its caption). The bot's limit per group is set in messages per minute over a 60 s window
(`TELEGRAM_GROUP_RATE`, see bot/delivery/limits.py); Telegram's 20/min would make 200 cards take ten
minutes, so the bot and the fake are both set to the same higher per-minute value.

achieved / allowed = the shortest first-to-last span the limits allow for these sends (every send as
early as its windows let it) ÷ the measured span. 1.0 is a sender that never leaves room unused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import tests.fakes.telegram as fake_telegram
from bench.harness import (
    ROADS_CHAT,
    BenchTelegram,
    Section,
    bot_env,
    bot_process,
    migrate,
    query,
    routing,
    shortest_span,
    sqlite_url,
)
from bot.clock import SystemClock
from bot.delivery.limits import telegram_cost
from bot.delivery.outbox import Outbox
from bot.domain import Attachment, MediaKind, Platform, Ticket, TicketStatus
from bot.i18n import Translator
from bot.messages import Outgoing
from bot.tickets import TicketService
from storage.db import Database

GLOBAL_LIMIT, GLOBAL_WINDOW = 30, 1.0  # Telegram: messages per second, all chats
PRIVATE_LIMIT, PRIVATE_WINDOW = 1, 1.0  # one message a second per private chat
GROUP_WINDOW = 60.0
FIRST_CITIZEN = 5_000_000  # citizens who get a status message
FIRST_FILER = 5_500_000  # citizens whose tickets' cards go to the group


@dataclass
class Delivery:
    what: str
    expected: int
    chats: list[int]
    span: float
    shortest: float
    too_many_requests: int
    lost: int
    duplicates: int
    not_sent_rows: int
    group_rate: int
    in_group: int  # of `expected`, the messages to the group

    @property
    def efficiency(self) -> float:
        return self.shortest / self.span if self.span > 0 else float("nan")


async def _prepare(database: Path, citizens: Sequence[int], photos: bool) -> list[tuple[int, int]]:
    """A citizen and a ticket for each user id, in one transaction; returns (user id, ticket number)."""
    db = Database(sqlite_url(database))
    outbox = Outbox(db, SystemClock())
    now = datetime.now(UTC)
    made = []
    try:
        async with outbox.unit() as u:
            for user_id in citizens:
                citizen = await u.repo.ensure_citizen(Platform.telegram, user_id, f"C{user_id}", "ru", now)
                ticket = await u.repo.insert_ticket(
                    citizen_id=citizen.id,
                    category_id="potholes",
                    agency_id="roads",
                    status=TicketStatus.new.value,
                    text=f"Pothole in front of house {user_id}",
                    address=f"Lenina street, {user_id % 200}",
                    created_at=now,
                    updated_at=now,
                    due_at=now + timedelta(days=3),
                    next_alert_at=now + timedelta(days=3),
                )
                if photos:
                    photo = Attachment(MediaKind.photo, Platform.telegram, f"AgACAgIAAxkBAAI{user_id}")
                    await u.repo.add_media(ticket.id, [photo], "citizen", now)
                made.append((user_id, ticket.number))
    finally:
        await db.close()
    return made


async def _queue_statuses(database: Path, citizens: Sequence[int]) -> None:
    """The "taken into work" notice for each citizen, queued by the ticket service in one transaction."""
    db = Database(sqlite_url(database))
    rules = routing()
    service = TicketService(Outbox(db, SystemClock()), rules, Translator(default=rules.default_locale))
    try:
        async with service.outbox.unit() as u:
            for user_id in citizens:
                citizen = await u.repo.citizen_by_external(Platform.telegram, user_id)
                assert citizen is not None
                ticket: Ticket = (await u.repo.citizen_tickets(citizen.id, 1))[0]
                await service.tell_citizen(
                    u, citizen, ticket, "citizen.taken", agency=service.render.agency("ru", ticket.agency_id)
                )
    finally:
        await db.close()


async def _queue_cards(database: Path, numbers: Sequence[int]) -> None:
    """A fresh card of each ticket in the agency's group: `/card N`."""
    db = Database(sqlite_url(database))
    rules = routing()
    service = TicketService(Outbox(db, SystemClock()), rules, Translator(default=rules.default_locale))
    try:
        for number in numbers:
            await service.post_card(number, ROADS_CHAT)
    finally:
        await db.close()


def _windows(group_rate: int) -> Callable[[int], list[tuple[str, int, float]]]:
    def windows(chat: int) -> list[tuple[str, int, float]]:
        found = [("global", GLOBAL_LIMIT, GLOBAL_WINDOW)]
        if chat > 0:
            found.append((f"chat{chat}", PRIVATE_LIMIT, PRIVATE_WINDOW))
        else:
            found.append((f"chat{chat}", group_rate, GROUP_WINDOW))
        return found

    return windows


async def _deliver(workdir: Path, name: str, statuses: int, cards: int, group_rate: int) -> Delivery:
    """One bot run: `statuses` status messages to as many citizens and `cards` cards to one group."""
    database = workdir / f"delivery_{name}.db"
    await migrate(database)
    people = list(range(FIRST_CITIZEN, FIRST_CITIZEN + statuses))
    filers = list(range(FIRST_FILER, FIRST_FILER + cards))
    await _prepare(database, people, photos=False)
    made = await _prepare(database, filers, photos=True)
    await _queue_statuses(database, people)
    await _queue_cards(database, [number for _, number in made])
    in_group = _queued_messages(database, ROADS_CHAT)
    expected = statuses + in_group
    saved_limit = fake_telegram.GROUP_LIMIT, fake_telegram.GROUP_WINDOW
    # The fake enforces the same per-group limit the bot is told to keep.
    fake_telegram.GROUP_LIMIT, fake_telegram.GROUP_WINDOW = group_rate, GROUP_WINDOW
    try:
        async with BenchTelegram() as tg:
            for user_id in people + filers:
                tg.add_user(user_id, first_name=f"C{user_id}")
            tg.enforce_limits = True
            env = bot_env(
                workdir,
                tg.base_url,
                database,
                TELEGRAM_GLOBAL_RATE=GLOBAL_LIMIT,
                TELEGRAM_PRIVATE_RATE=PRIVATE_LIMIT,
                TELEGRAM_GROUP_RATE=group_rate,
                SCHEDULER_INTERVAL=3600,
                DIGEST_TIME="off",
            )
            bot = bot_process(workdir, env, f"bot_delivery_{name}")
            try:
                await bot.start(tg)
                limit_s = expected / min(GLOBAL_LIMIT, group_rate / GROUP_WINDOW) + GROUP_WINDOW + 60
                await tg.sent_count(expected, within=limit_s)
                bot.check_alive()
            finally:
                await bot.stop()
            chats = [chat for _, chat in tg.sent]
            times = [at for at, _ in tg.sent]
            per_citizen = [len(tg.bot_messages(user_id)) for user_id in people]
            got_in_group = len(tg.bot_messages(ROADS_CHAT))
            too_many = tg.stats.too_many_requests
    finally:
        fake_telegram.GROUP_LIMIT, fake_telegram.GROUP_WINDOW = saved_limit
    lost = sum(1 for n in per_citizen if n < 1) + max(0, in_group - got_in_group)
    duplicates = sum(max(0, n - 1) for n in per_citizen) + max(0, got_in_group - in_group)
    not_sent = query(database, "SELECT count(*) FROM outbox WHERE status != 'sent'")[0][0]
    return Delivery(
        what=name,
        expected=expected,
        chats=chats,
        span=times[-1] - times[0] if len(times) > 1 else 0.0,
        shortest=shortest_span(chats, _windows(group_rate)),
        too_many_requests=too_many,
        lost=lost,
        duplicates=duplicates,
        not_sent_rows=int(not_sent),
        group_rate=group_rate,
        in_group=in_group,
    )


def _queued_messages(database: Path, chat_id: int) -> int:
    """How many messages the rows queued for a chat put into it."""
    rows = query(database, "SELECT payload FROM outbox WHERE chat_id = ?", chat_id)
    return sum(telegram_cost(Outgoing.from_json(json.loads(payload))) for (payload,) in rows)


async def run(
    workdir: Path, citizens: int, cards: int, group_rate: int, *, together: bool = False
) -> Section:
    """Two bot runs (statuses, then cards), or with `together` one run with both (saves a start-up)."""
    section = Section("delivery under limits")
    started = time.perf_counter()
    statuses = f"{citizens:,} status messages to {citizens:,} citizens"
    group = f"{cards} cards with a photo to one group"
    if together:
        runs = [(f"{statuses} + {group}", await _deliver(workdir, "mixed", citizens, cards, group_rate))]
    else:
        runs = [
            (statuses, await _deliver(workdir, "citizens", citizens, 0, group_rate)),
            (group, await _deliver(workdir, "group", 0, cards, group_rate)),
        ]
    for label, result in runs:
        allowed = (result.expected - 1) / result.shortest if result.shortest else float("nan")
        achieved = (result.expected - 1) / result.span if result.span else float("nan")
        section.add(f"{label}: achieved rate", achieved, "msg/s", note=f"allowed {allowed:.1f}/s")
        section.add(
            f"{label}: achieved / allowed", result.efficiency, "×", aim="≥ 0.9", ok=result.efficiency >= 0.9
        )
        section.add(
            f"{label}: 429 received", result.too_many_requests, "", aim="0", ok=result.too_many_requests == 0
        )
        missing = result.lost + result.not_sent_rows
        section.add(f"{label}: lost", missing, "", aim="0", ok=missing == 0)
    group_binds = any(result.in_group > group_rate for _, result in runs)
    section.notes.append(
        f"Fake enforces 30/s in all, 1/s per private chat and {group_rate} per {GROUP_WINDOW:.0f} s per "
        f"group; the bot is set to the same (TELEGRAM_GROUP_RATE={group_rate}, per minute: Telegram's 20 "
        "would stretch the run to minutes). achieved/allowed = shortest span the limits allow for these "
        "sends ÷ measured first-to-last span."
        + ("" if group_binds else " With this few cards the group limit does not bind; the global one does.")
    )
    section.details = {
        result.what: {
            "messages": result.expected,
            "span_seconds": round(result.span, 2),
            "shortest_span_seconds": round(result.shortest, 2),
            "too_many_requests": result.too_many_requests,
            "lost": result.lost,
            "duplicates": result.duplicates,
            "outbox_rows_not_sent": result.not_sent_rows,
            "group_rate_per_minute": result.group_rate,
        }
        for _, result in runs
    }
    section.seconds = time.perf_counter() - started
    return section
