"""The scheduler's promises, with a hand-moved clock: exactly which messages go out, and once each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from bot import deadlines as deadlines_module
from bot.clock import ManualClock
from bot.config import Routing, parse_routing
from bot.deadlines import Deadlines
from bot.delivery.outbox import Outbox
from bot.dialog import CitizenDialog, CitizenInput, Person
from bot.domain import Platform, TicketStatus
from bot.i18n import Translator
from bot.messages import Ref
from bot.policy import Policy
from bot.tickets import Staff, TicketService
from storage.db import Database, migrate
from storage.schema import outbox as outbox_table
from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TEST_ROUTING, WASTE_CHAT

# Monday 2 March 2026, 10:00 in Moscow.
MONDAY = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)


async def queued_after(db: Database, seen: int) -> tuple[int, list[tuple[int, str]]]:
    """The messages (not edits) queued after outbox row `seen`, as (chat, text), and the last row's id."""
    async with db.read() as conn:
        rows = list(
            await conn.execute(
                sa.select(outbox_table.c.id, outbox_table.c.chat_id, outbox_table.c.payload)
                .where(outbox_table.c.id > seen, outbox_table.c.kind == "send")
                .order_by(outbox_table.c.id)
            )
        )
    return (rows[-1].id if rows else seen), [(r.chat_id, r.payload["text"]) for r in rows]


@dataclass
class Desk:
    db: Database
    clock: ManualClock
    tickets: TicketService
    dialog: CitizenDialog
    deadlines: Deadlines
    t: Translator
    seen: int = 0

    async def file(self, user_id: int, category: str = "garbage", text: str = "Мусор") -> int:
        who = Person(Platform.telegram, user_id, user_id, "A", "ru")
        await self.dialog.press(who, f"c:{category}", Ref(message_id=1))
        await self.dialog.message(CitizenInput(who=who, text=text))
        await self.dialog.press(who, "d:skip", Ref(message_id=2))
        await self.dialog.press(who, "d:confirm", Ref(message_id=3))
        async with self.tickets.outbox.read() as repo:
            citizen = await repo.citizen_by_external(Platform.telegram, user_id)
            assert citizen is not None
            return (await repo.citizen_tickets(citizen.id, 1))[0].id

    async def new_messages(self) -> list[tuple[int, str]]:
        """(chat, text) of messages queued since the last call."""
        self.seen, messages = await queued_after(self.db, self.seen)
        return messages

    async def at(self, when: datetime) -> list[tuple[int, str]]:
        """Move the clock, run one scan, and return what it queued."""
        self.clock.set(when)
        await self.new_messages()
        await self.deadlines.scan(when)
        return await self.new_messages()

    async def status(self, ticket_id: int) -> TicketStatus:
        async with self.tickets.outbox.read() as repo:
            return (await repo.ticket(ticket_id)).status

    def key(self, key: str) -> str:
        """A fragment of a translated text that identifies it (the part before the first placeholder)."""
        return self.t.get("ru", key).split("{")[0].strip() or self.t.get("ru", key).split("}")[-1][:20]


def make_desk(db: Database, routing: Routing, policy: Policy, clock: ManualClock) -> Desk:
    translator = Translator()
    outbox = Outbox(db, clock)
    tickets = TicketService(outbox, routing, translator, citizen_update_every=policy.citizen_update_every)
    dialog = CitizenDialog(outbox, tickets, routing, translator)
    return Desk(db, clock, tickets, dialog, Deadlines(tickets, policy), translator)


QUIET = Policy(citizen_update_every=None, digest_at=None)


@pytest.fixture
async def desk(db: Database) -> AsyncIterator[Desk]:
    clock = ManualClock(MONDAY)
    yield make_desk(db, parse_routing(TEST_ROUTING), QUIET, clock)


def texts(messages: list[tuple[int, str]], chat_id: int) -> list[str]:
    return [text for chat, text in messages if chat == chat_id]


async def test_reminder_goes_once_before_the_deadline(desk: Desk) -> None:
    ticket = await desk.file(11)  # garbage: 1 day, reminded at 25% of it before
    due = MONDAY + timedelta(days=1)
    assert await desk.at(due - timedelta(hours=6, minutes=1)) == []
    reminded = await desk.at(due - timedelta(hours=5, minutes=59))
    assert len(texts(reminded, WASTE_CHAT)) == 1 and f"#T{ticket}" in texts(reminded, WASTE_CHAT)[0]
    assert await desk.at(due - timedelta(hours=1)) == []


async def test_overdue_alerts_agency_coordinators_and_citizen_then_repeat_with_a_rising_level(
    desk: Desk,
) -> None:
    ticket = await desk.file(12)
    due = MONDAY + timedelta(days=1)
    await desk.at(due - timedelta(hours=3))  # the reminder
    first = await desk.at(due + timedelta(seconds=1))
    assert len(texts(first, WASTE_CHAT)) == 1 and len(texts(first, COORDINATORS_CHAT)) == 1
    assert len(texts(first, 12)) == 1  # the citizen hears the coordinators were alerted
    assert f"#T{ticket}" in texts(first, COORDINATORS_CHAT)[0]
    assert await desk.at(due + timedelta(hours=3, minutes=59)) == []
    second = await desk.at(due + timedelta(hours=4, seconds=2))
    assert len(texts(second, WASTE_CHAT)) == 1 and len(texts(second, COORDINATORS_CHAT)) == 1
    assert texts(second, 12) == []
    assert "2" in texts(second, COORDINATORS_CHAT)[0]


async def test_an_agency_chat_in_another_language_gets_its_alerts_wholly_in_it(db: Database) -> None:
    english_waste = TEST_ROUTING.replace(
        "chat_id = -1001000000020", 'chat_id = -1001000000020\nlocale = "en"'
    )
    desk = make_desk(db, parse_routing(english_waste), QUIET, ManualClock(MONDAY))
    await desk.file(13)  # garbage, at the waste operator; the routing's own language is ru
    due = MONDAY + timedelta(days=1)
    reminder = texts(await desk.at(due - timedelta(hours=5)), WASTE_CHAT)
    alert = texts(await desk.at(due + timedelta(hours=2)), WASTE_CHAT)
    assert len(reminder) == 1 and "5 hours left" in reminder[0]
    assert len(alert) == 1 and "passed 2 hours ago" in alert[0] and "Status: " in alert[0]
    for text in reminder + alert:
        assert not any("а" <= char.lower() <= "я" for char in text), text


async def test_many_overdue_at_once_reach_coordinators_as_one_message(db: Database) -> None:
    desk = make_desk(
        db, parse_routing(TEST_ROUTING), Policy(group_threshold=2, digest_at=None), ManualClock(MONDAY)
    )
    numbers = [await desk.file(20 + i) for i in range(4)]
    alerts = await desk.at(MONDAY + timedelta(days=2))
    coordinators = texts(alerts, COORDINATORS_CHAT)
    assert len(coordinators) == 1
    assert all(f"#T{n}" in coordinators[0] for n in numbers)
    assert len(texts(alerts, WASTE_CHAT)) == 4


async def test_a_backlog_goes_in_short_passes_and_reaches_coordinators_as_one_message(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadlines_module, "BATCH", 3)
    desk = make_desk(
        db, parse_routing(TEST_ROUTING), Policy(group_threshold=2, digest_at=None), ManualClock(MONDAY)
    )
    numbers = [await desk.file(40 + i) for i in range(7)]
    # A write that comes while the first pass holds the write turn waits for that pass alone: it runs
    # after the first pass's alerts and before the second's.
    order: list[str] = []
    writes: list[asyncio.Task[None]] = []

    async def a_write() -> None:
        async with db.transaction():
            order.append("write")

    tell_agency = desk.tickets.tell_agency

    async def telling(*args: Any, **kwargs: Any) -> None:
        order.append("alert")
        if not writes:  # inside the first pass's transaction
            writes.append(asyncio.create_task(a_write()))
            await asyncio.sleep(0)  # the write now waits for the turn
        await tell_agency(*args, **kwargs)

    monkeypatch.setattr(desk.tickets, "tell_agency", telling)
    alerts = await desk.at(MONDAY + timedelta(days=2))
    await asyncio.wait_for(writes[0], 5)
    assert order == ["alert"] * 3 + ["write"] + ["alert"] * 4  # passes of 3 + 3 + 1 tickets
    assert len(texts(alerts, WASTE_CHAT)) == 7
    coordinators = texts(alerts, COORDINATORS_CHAT)
    assert len(coordinators) == 1
    assert all(f"#T{n}" in coordinators[0] for n in numbers)


async def test_alerts_a_crash_kept_from_the_coordinators_reach_them_at_the_next_scan(desk: Desk) -> None:
    ticket = await desk.file(50)
    await desk.new_messages()
    late = MONDAY + timedelta(days=1, minutes=1)
    desk.clock.set(late)
    await desk.deadlines.alert_overdue(late)  # the pass committed; the process died before the report
    passed = await desk.new_messages()
    assert len(texts(passed, WASTE_CHAT)) == 1 and texts(passed, COORDINATORS_CHAT) == []
    coordinators = texts(await desk.at(late + timedelta(minutes=1)), COORDINATORS_CHAT)
    assert len(coordinators) == 1 and f"#T{ticket}" in coordinators[0]
    assert await desk.at(late + timedelta(minutes=2)) == []


async def test_the_upgrade_counts_earlier_alerts_as_told(empty_database_url: str) -> None:
    await asyncio.to_thread(migrate, empty_database_url, "0006")
    db = Database(empty_database_url)
    try:
        desk = make_desk(db, parse_routing(TEST_ROUTING), QUIET, ManualClock(MONDAY))
        await desk.file(60)
        late = MONDAY + timedelta(days=1, minutes=1)
        await desk.deadlines.alert_overdue(late)  # alerted, and told, by the version before
        await asyncio.to_thread(migrate, empty_database_url)
        assert await desk.deadlines.report_overdue(late) == 0
        ticket = await desk.file(61)
        assert await desk.at(late + timedelta(days=1)) != []
        async with desk.tickets.outbox.read() as repo:
            assert (await repo.ticket(ticket)).overdue_level == 1
        assert await desk.deadlines.report_overdue(late + timedelta(days=1)) == 0
    finally:
        await db.close()


async def test_need_info_pauses_the_clock(desk: Desk) -> None:
    ticket = await desk.file(13)
    staff = Staff(WASTE_CHAT, 1, "Ольга")
    desk.clock.set(MONDAY + timedelta(hours=2))
    await desk.tickets.staff_message(ticket, staff, "card", "/ask Какой адрес?", [], 100)
    due = MONDAY + timedelta(days=1)
    assert texts(await desk.at(due + timedelta(hours=1)), COORDINATORS_CHAT) == []  # waiting: no alert
    desk.clock.set(MONDAY + timedelta(days=2, hours=2))  # the citizen answers two days after the question
    await desk.dialog.message(CitizenInput(who=Person(Platform.telegram, 13, 13), text="Ленина, 1"))
    async with desk.tickets.outbox.read() as repo:
        moved = (await repo.ticket(ticket)).due_at
    assert moved == due + timedelta(days=2)
    assert texts(await desk.at(moved - timedelta(minutes=1)), COORDINATORS_CHAT) == []
    assert len(texts(await desk.at(moved + timedelta(minutes=1)), COORDINATORS_CHAT)) == 1


async def test_a_restart_neither_repeats_nor_skips_and_missed_intervals_alert_once(
    db: Database, desk: Desk
) -> None:
    await desk.file(14)
    due = MONDAY + timedelta(days=1)
    assert len(texts(await desk.at(due + timedelta(minutes=1)), COORDINATORS_CHAT)) == 1
    # A new process on the same database, down for a day: six alert intervals passed, one alert is owed.
    again = make_desk(db, parse_routing(TEST_ROUTING), QUIET, ManualClock(due))
    again.seen = desk.seen
    assert texts(await again.at(due + timedelta(minutes=2)), COORDINATORS_CHAT) == []
    assert len(texts(await again.at(due + timedelta(days=1)), COORDINATORS_CHAT)) == 1
    assert texts(await again.at(due + timedelta(days=1, minutes=1)), COORDINATORS_CHAT) == []


async def test_unconfirmed_resolutions_and_unanswered_questions_are_closed(desk: Desk) -> None:
    resolved = await desk.file(15)
    waiting = await desk.file(16, category="potholes")
    desk.clock.set(MONDAY + timedelta(hours=1))
    await desk.tickets.staff_message(resolved, Staff(WASTE_CHAT, 1, "О"), "card", "/resolve Вывезли", [], 1)
    await desk.tickets.staff_message(waiting, Staff(ROADS_CHAT, 2, "П"), "card", "/ask Где?", [], 2)
    await desk.at(MONDAY + timedelta(days=3))  # not yet: it was resolved an hour after Monday 10:00
    assert await desk.status(resolved) is TicketStatus.resolved
    closed = await desk.at(MONDAY + timedelta(days=3, hours=1, minutes=1))
    assert await desk.status(resolved) is TicketStatus.closed
    assert len(texts(closed, 15)) == 1 and len(texts(closed, WASTE_CHAT)) == 1
    assert await desk.status(waiting) is TicketStatus.need_info
    unanswered = await desk.at(MONDAY + timedelta(days=7, hours=1, minutes=1))
    assert await desk.status(waiting) is TicketStatus.closed
    assert len(texts(unanswered, 16)) == 1 and len(texts(unanswered, ROADS_CHAT)) == 1


async def test_the_daily_digest_goes_once_at_the_local_hour(db: Database) -> None:
    desk = make_desk(
        db,
        parse_routing(TEST_ROUTING),
        Policy(citizen_update_every=None, digest_at=time(9, 0)),
        ManualClock(MONDAY),
    )
    await desk.file(17)
    await desk.file(18, category="potholes")
    tuesday_0859 = datetime(2026, 3, 3, 5, 59, tzinfo=UTC)  # 08:59 in Moscow
    await desk.at(tuesday_0859 - timedelta(hours=12))  # Monday's digest went at the first scan after 09:00
    assert texts(await desk.at(tuesday_0859), COORDINATORS_CHAT) == []
    digest = texts(await desk.at(tuesday_0859 + timedelta(minutes=2)), COORDINATORS_CHAT)
    assert len(digest) == 1 and "03.03.2026" in digest[0]
    assert "Региональный оператор" in digest[0] and "Управление дорог" in digest[0]
    later = texts(await desk.at(tuesday_0859 + timedelta(hours=5)), COORDINATORS_CHAT)
    assert not [text for text in later if "03.03.2026" in text]  # overdue alerts, but no second digest


async def test_a_late_digest_counts_the_day_between_the_digest_hours(db: Database) -> None:
    desk = make_desk(
        db,
        parse_routing(TEST_ROUTING),
        Policy(citizen_update_every=None, digest_at=time(9, 0)),
        ManualClock(MONDAY),
    )
    assert len(texts(await desk.at(MONDAY), COORDINATORS_CHAT)) == 1  # Monday's, at 10:00
    desk.clock.set(MONDAY + timedelta(hours=2))
    await desk.file(21, category="potholes")  # Monday 12:00: Tuesday's digest tells of it
    desk.clock.set(MONDAY + timedelta(days=1))
    await desk.file(22, category="garbage")  # Tuesday 10:00, after its digest's hour: Wednesday's
    # No scan from Monday evening until Tuesday 15:00 (the bot was down): Tuesday's digest goes late.
    tuesday = texts(await desk.at(MONDAY + timedelta(days=1, hours=5)), COORDINATORS_CHAT)
    digest = [text for text in tuesday if "03.03.2026" in text]
    assert len(digest) == 1
    assert "Управление дорог: 1 ·" in digest[0] and "Региональный оператор: 0 ·" in digest[0]
    wednesday = texts(await desk.at(MONDAY + timedelta(days=2)), COORDINATORS_CHAT)
    digest = [text for text in wednesday if "04.03.2026" in text]
    assert len(digest) == 1
    assert "Управление дорог: 0 ·" in digest[0] and "Региональный оператор: 1 ·" in digest[0]


async def test_citizens_hear_that_their_ticket_is_still_in_work(db: Database) -> None:
    desk = make_desk(
        db,
        parse_routing(TEST_ROUTING),
        Policy(citizen_update_every=timedelta(hours=6), citizen_overdue_notice=False, digest_at=None),
        ManualClock(MONDAY),
    )
    await desk.file(19, category="potholes")
    assert texts(await desk.at(MONDAY + timedelta(hours=5)), 19) == []
    assert len(texts(await desk.at(MONDAY + timedelta(hours=6, minutes=1)), 19)) == 1
    assert texts(await desk.at(MONDAY + timedelta(hours=7)), 19) == []


async def test_a_scan_reads_only_due_rows_through_an_index(desk: Desk) -> None:
    async with desk.db.read() as conn:
        explain = "EXPLAIN QUERY PLAN"
        if desk.db.is_postgres:
            # The planner would rather read a table this small whole: this asks whether an index can serve.
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            explain = "EXPLAIN"
        for column in ("remind_at", "next_alert_at", "next_update_at", "resolved_at", "waiting_since"):
            # The shape of Repository.due: one status at a time, in the index's own order.
            plan = await conn.exec_driver_sql(
                f"{explain} SELECT * FROM tickets WHERE status = 'new' "  # noqa: S608
                f"AND {column} <= '2026-01-01' ORDER BY {column}, id LIMIT 500"
            )
            detail = " ".join(str(row[-1]) for row in plan)
            assert f"ix_tickets_status_{column}" in detail, detail
            assert "TEMP B-TREE" not in detail, f"every due row would be sorted: {detail}"


async def test_the_coordinators_report_reads_the_alerts_it_owes_through_their_own_index(desk: Desk) -> None:
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "ticket_events" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    await desk.file(70)
    engines = {desk.db.engine.sync_engine, desk.db._writer.sync_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", capture)
    try:
        assert len(texts(await desk.at(MONDAY + timedelta(days=2)), COORDINATORS_CHAT)) == 1
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", capture)
    assert len(statements) == 2  # how many are owed, then the first of them
    async with desk.db.read() as conn:
        explain = "EXPLAIN QUERY PLAN"
        if desk.db.is_postgres:
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            explain = "EXPLAIN"
        for statement, parameters in statements:
            plan = await conn.exec_driver_sql(f"{explain} {statement}", parameters)
            detail = " ".join(str(row[-1]) for row in plan)
            assert "ix_ticket_events_overdue" in detail, detail


async def test_working_day_deadlines_skip_weekends_and_holidays(db: Database) -> None:
    routing = parse_routing(
        TEST_ROUTING.replace('sla = "1d"', 'sla = "1wd"')
        + '\n[calendar]\nworking_hours = "09:00-18:00"\nweekends = ["sat", "sun"]\n'
        + 'holidays = ["2026-03-09"]\n'
    )
    friday_evening = datetime(2026, 3, 6, 16, 0, tzinfo=UTC)  # Friday 19:00 in Moscow, after hours
    desk = make_desk(db, routing, QUIET, ManualClock(friday_evening))
    ticket = await desk.file(40)
    async with desk.tickets.outbox.read() as repo:
        due = (await repo.ticket(ticket)).due_at
    # Monday 9 March is a holiday: one working day from Friday evening ends on Tuesday at 18:00.
    assert due == datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
    assert texts(await desk.at(datetime(2026, 3, 9, 20, 0, tzinfo=UTC)), COORDINATORS_CHAT) == []
    assert texts(await desk.at(due - timedelta(minutes=1)), COORDINATORS_CHAT) == []
    assert len(texts(await desk.at(due + timedelta(minutes=1)), COORDINATORS_CHAT)) == 1
