"""Storage: tickets filed per second through the service against raw inserts through aiosqlite.

Service: `TicketService.open_ticket` files a citizen's stored draft (one photo) as production does, one
transaction each: the ticket, its photo and event, the draft cleared, two messages queued (the
citizen's confirmation and the agency's card). Raw: one `INSERT INTO tickets` and its COMMIT per ticket
through aiosqlite, with the bot's pragmas (WAL, synchronous=NORMAL, foreign keys, BEGIN IMMEDIATE).
Both one after the other, each on its own freshly migrated file; drafts and citizens are made before
the clock starts.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite

from bench.harness import Section, migrate, routing, sqlite_url
from bench.population import stored
from bot.clock import SystemClock
from bot.delivery.outbox import Outbox
from bot.domain import Attachment, Citizen, Draft, MediaKind, Platform
from bot.i18n import Translator
from bot.messages import draft_to_json
from bot.tickets import TicketService
from storage.db import Database
from storage.repository import Repository

FIRST_CITIZEN = 6_000_000
RAW_INSERT = (
    "INSERT INTO tickets (number, citizen_id, category_id, agency_id, status, text, address, created_at, "
    "updated_at, due_at, remind_at, next_alert_at, next_update_at) "
    "VALUES (?, ?, 'potholes', 'roads', 'new', ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def _citizens_with_drafts(db: Database, count: int) -> list[Citizen]:
    now = datetime.now(UTC)
    made = []
    async with db.transaction() as conn:
        repo = Repository(conn)
        for index in range(count):
            user_id = FIRST_CITIZEN + index
            citizen = await repo.ensure_citizen(Platform.telegram, user_id, f"C{user_id}", "ru", now)
            draft = Draft(
                step="confirm",
                category_id="potholes",
                text=f"Citizen {user_id} reports a pothole in front of the house",
                photos=[Attachment(MediaKind.photo, Platform.telegram, f"AgACAgIAAxkBAAI{user_id}")],
                location_done=True,
            )
            await repo.save_conversation(Platform.telegram, user_id, {"draft": draft_to_json(draft)}, now)
            made.append(citizen)
    return made


async def through_service(database: Path, count: int) -> float:
    """Tickets per second through TicketService.open_ticket."""
    await migrate(database)
    db = Database(sqlite_url(database))
    rules = routing()
    service = TicketService(Outbox(db, SystemClock()), rules, Translator(default=rules.default_locale))
    try:
        citizens = await _citizens_with_drafts(db, count)
        started = time.perf_counter()
        for citizen in citizens:
            ticket = await service.open_ticket(citizen, citizen.external_id)
            assert ticket is not None, "the draft was not filed"
        return count / (time.perf_counter() - started)
    finally:
        await db.close()


async def raw_inserts(database: Path, count: int) -> float:
    """Tickets per second as bare INSERT + COMMIT pairs through aiosqlite."""
    await migrate(database)
    now = datetime.now(UTC)
    async with aiosqlite.connect(database, isolation_level=None) as conn:
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000", "synchronous=NORMAL"):
            await conn.execute(f"PRAGMA {pragma}")
        await conn.execute("BEGIN IMMEDIATE")
        await conn.executemany(
            "INSERT INTO citizens (id, platform, external_id, display_name, locale, created_at) "
            "VALUES (?, 'tg', ?, '', 'ru', ?)",
            [(index + 1, FIRST_CITIZEN + index, stored(now)) for index in range(count)],
        )
        await conn.execute("COMMIT")
        due = stored(now + timedelta(days=3))
        started = time.perf_counter()
        for index in range(count):
            moment = stored(datetime.now(UTC))
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(
                RAW_INSERT,
                (
                    index + 1,
                    index + 1,
                    f"Citizen {index} reports a pothole in front of the house",
                    None,
                    moment,
                    moment,
                    due,
                    due,
                    due,
                    due,
                ),
            )
            await conn.execute("COMMIT")
        return count / (time.perf_counter() - started)


async def run(workdir: Path, count: int) -> Section:
    section = Section("storage")
    raw = await raw_inserts(workdir / "writes_raw.db", count)
    service = await through_service(workdir / "writes_service.db", count)
    section.add(f"TicketService.open_ticket ({count:,} in a row)", service, "tickets/s")
    section.add("raw INSERT + COMMIT through aiosqlite", raw, "tickets/s")
    section.add("service / raw", service / raw, "×")
    section.notes.append(
        "open_ticket is one transaction: ticket, photo, event, draft cleared, two messages queued. "
        "Raw: one INSERT and COMMIT per ticket, same pragmas. Sequential, one at a time."
    )
    section.details = {"count": count, "service_per_s": service, "raw_per_s": raw}
    return section
