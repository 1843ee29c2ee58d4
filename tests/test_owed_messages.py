"""What a ticket still owes after a pause, through TicketService on a real database with a hand-moved
clock: a deadline paused by a question to the citizen moves by the working time the wait took (not by
the nights and weekends in it), and the messages a citizen missed while they had blocked the bot reach
them, in order and once, when they can be written to again."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bot.clock import ManualClock
from bot.config import Routing, parse_routing
from bot.deadlines import Deadlines
from bot.delivery.base import PermanentError, Progress
from bot.delivery.outbox import Outbox
from bot.delivery.worker import DeliveryWorker
from bot.dialog import CitizenDialog, CitizenInput, Person
from bot.domain import Citizen, Platform, Ticket, TicketStatus
from bot.i18n import Translator
from bot.messages import Outgoing, Ref
from bot.policy import Policy
from bot.tickets import Staff, TicketService
from storage.db import Database
from storage.schema import outbox as outbox_table
from tests.conftest import COORDINATORS_CHAT, ROADS_CHAT, TEST_ROUTING, WASTE_CHAT
from tests.test_scheduler import queued_after

MOSCOW = ZoneInfo("Europe/Moscow")
QUIET = Policy(citizen_update_every=None, digest_at=None)


def msk(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment of March 2026 in Moscow: the 2nd is a Monday, the 6th a Friday, the 7th and 8th a weekend."""
    return datetime(2026, 3, day, hour, minute, tzinfo=MOSCOW)


def working_routing(sla: str, remind_before: str = "4h", holidays: tuple[str, ...] = ()) -> Routing:
    """The test routing with potholes (at the roads department) on a working-time SLA, counted on a
    Monday-to-Friday 09:00-18:00 calendar in Moscow."""
    text = TEST_ROUTING.replace('sla = "3d"', f'sla = "{sla}"\nremind_before = "{remind_before}"')
    text += '\n[calendar]\nworking_hours = "09:00-18:00"\nweekends = ["sat", "sun"]\n'
    text += "holidays = [" + ", ".join(f'"{day}"' for day in holidays) + "]\n"
    return parse_routing(text)


class Phone:
    """A messenger whose chats can block the bot: a send or an edit there fails as the platform's would.
    A message containing one of `broken`'s fragments fails for another reason (bad markup)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.blocked: set[int] = set()
        self.broken: set[str] = set()
        # ("send", chat, message, id) and ("edit", chat, message, id edited), in the order they happened.
        self.log: list[tuple[str, int, Outgoing, int]] = []
        self.next_id = 1000

    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        if any(fragment in message.text for fragment in self.broken):
            raise PermanentError("bad_request", "can't parse entities")
        if chat_id in self.blocked:
            raise PermanentError("blocked", "Forbidden: bot was blocked by the user")
        self.next_id += 1
        self.log.append(("send", chat_id, message, self.next_id))
        return [self.next_id]

    async def edit(self, chat_id: int, message_id: int, message: Outgoing) -> None:
        if chat_id in self.blocked:
            raise PermanentError("blocked", "Forbidden: bot was blocked by the user")
        self.log.append(("edit", chat_id, message, message_id))

    def sent_to(self, chat_id: int) -> list[Outgoing]:
        return [message for kind, chat, message, _ in self.log if kind == "send" and chat == chat_id]


@dataclass
class Office:
    db: Database
    clock: ManualClock
    tickets: TicketService
    dialog: CitizenDialog
    deadlines: Deadlines
    worker: DeliveryWorker
    phones: dict[Platform, Phone]
    t: Translator
    seen: int = 0
    staff: Staff = field(default_factory=lambda: Staff(ROADS_CHAT, 1, "Пётр"))

    async def file(self, who: Person, category: str = "potholes", text: str = "Яма") -> int:
        await self.dialog.press(who, f"c:{category}", Ref(message_id=1))
        await self.dialog.message(CitizenInput(who=who, text=text))
        await self.dialog.press(who, "d:skip", Ref(message_id=2))
        await self.dialog.press(who, "d:confirm", Ref(message_id=3))
        citizen = await self.citizen(who)
        async with self.tickets.outbox.read() as repo:
            return (await repo.citizen_tickets(citizen.id, 1))[0].id

    async def citizen(self, who: Person) -> Citizen:
        async with self.tickets.outbox.read() as repo:
            citizen = await repo.citizen_by_external(who.platform, who.user_id)
        assert citizen is not None
        return citizen

    async def ticket(self, ticket_id: int) -> Ticket:
        async with self.tickets.outbox.read() as repo:
            return await repo.ticket(ticket_id)

    async def staff_says(self, ticket_id: int, text: str, at: datetime | None = None) -> None:
        if at is not None:
            self.clock.set(at)
        await self.tickets.staff_message(ticket_id, self.staff, "card", text, [], 100)

    async def citizen_says(self, who: Person, text: str, at: datetime | None = None) -> None:
        if at is not None:
            self.clock.set(at)
        await self.dialog.message(CitizenInput(who=who, text=text))

    async def scan(self, at: datetime) -> list[tuple[int, str]]:
        """Move the clock, run one scheduler scan, and return the (chat, text) it queued."""
        self.clock.set(at)
        await self.queued()
        await self.deadlines.scan(at)
        return await self.queued()

    async def queued(self) -> list[tuple[int, str]]:
        """(chat, text) of the messages queued since the last call."""
        self.seen, messages = await queued_after(self.db, self.seen)
        return messages

    async def deliver(self) -> None:
        """Run the delivery worker until nothing more goes (a failure may queue a notice elsewhere)."""
        for _ in range(10):
            if not await self.worker.deliver_due():
                return

    async def rows(self, platform: Platform, chat_id: int) -> list[tuple[str, str, str | None]]:
        """(text, status, last error) of every outbox row for the chat, in order."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                sa.select(outbox_table.c.payload, outbox_table.c.status, outbox_table.c.last_error)
                .where(outbox_table.c.platform == platform.value, outbox_table.c.chat_id == chat_id)
                .order_by(outbox_table.c.id)
            )
            return [(row.payload["text"], row.status, row.last_error) for row in rows]

    def text(self, key: str, **params: object) -> str:
        return self.t.render("ru", key, **params)


def make_office(db: Database, routing: Routing, clock: ManualClock, policy: Policy = QUIET) -> Office:
    translator = Translator()
    outbox = Outbox(db, clock)
    tickets = TicketService(outbox, routing, translator)
    dialog = CitizenDialog(outbox, tickets, routing, translator)
    phones = {Platform.telegram: Phone(Platform.telegram), Platform.vk: Phone(Platform.vk)}
    worker = DeliveryWorker(db, phones, clock, on_unreachable=tickets.chat_unreachable)
    return Office(db, clock, tickets, dialog, Deadlines(tickets, policy), worker, phones, translator)


def texts(messages: list[tuple[int, str]], chat_id: int) -> list[str]:
    return [text for chat, text in messages if chat == chat_id]


def telegram(user_id: int) -> Person:
    return Person(Platform.telegram, user_id, user_id, "A", "ru")


def vk(user_id: int) -> Person:
    return Person(Platform.vk, user_id, user_id, "A", "ru")


# --- a question pauses the clock: by working time on a working-time SLA ------------------------


async def test_a_question_over_the_weekend_moves_a_working_hours_deadline_by_one_working_hour(
    db: Database,
) -> None:
    # 16 working hours from Friday 10:00 fall due on Monday at 17:00. Asked on Friday at 17:00 and
    # answered on Monday at 09:00, the ticket waited through one working hour, Friday 17:00-18:00.
    office = make_office(db, working_routing("16wh", remind_before="4h"), ManualClock(msk(6, 10)))
    ticket = await office.file(telegram(11))
    opened = await office.ticket(ticket)
    assert (opened.due_at, opened.remind_at) == (msk(9, 17), msk(9, 13))
    await office.staff_says(ticket, "/ask Какой адрес?", at=msk(6, 17))
    await office.citizen_says(telegram(11), "Ленина, 1", at=msk(9, 9))
    moved = await office.ticket(ticket)
    assert moved.status is TicketStatus.in_progress
    assert moved.due_at == msk(9, 18)
    assert moved.remind_at == msk(9, 14)  # still four hours before the deadline
    assert moved.next_alert_at == msk(9, 18)
    # The scheduler keeps the moved promises at their new times.
    assert texts(await office.scan(msk(9, 13, 59)), ROADS_CHAT) == []
    assert len(texts(await office.scan(msk(9, 14, 1)), ROADS_CHAT)) == 1  # the reminder
    assert texts(await office.scan(msk(9, 17, 59)), COORDINATORS_CHAT) == []
    assert len(texts(await office.scan(msk(9, 18, 1)), COORDINATORS_CHAT)) == 1  # overdue


async def test_a_holiday_in_the_wait_takes_no_working_time(db: Database) -> None:
    # Monday 9 March a holiday: due on Tuesday at 17:00; answered on Tuesday at 09:00, the wait took
    # Friday's last hour only, as the weekend and the holiday are not working time.
    routing = working_routing("16wh", remind_before="4h", holidays=("2026-03-09",))
    office = make_office(db, routing, ManualClock(msk(6, 10)))
    ticket = await office.file(telegram(12))
    assert (await office.ticket(ticket)).due_at == msk(10, 17)
    await office.staff_says(ticket, "/ask Какой адрес?", at=msk(6, 17))
    await office.citizen_says(telegram(12), "Ленина, 1", at=msk(10, 9))
    moved = await office.ticket(ticket)
    assert (moved.due_at, moved.remind_at, moved.next_alert_at) == (msk(10, 18), msk(10, 14), msk(10, 18))


async def test_a_question_moves_a_working_days_deadline_by_the_working_hours_of_the_wait(
    db: Database,
) -> None:
    # 2 working days from Monday: due on Wednesday at closing. Two working hours of waiting on Tuesday
    # push it two hours into Thursday, where the clock would have run out had it been stopped.
    office = make_office(db, working_routing("2wd", remind_before="4h"), ManualClock(msk(2, 10)))
    ticket = await office.file(telegram(13))
    assert (await office.ticket(ticket)).due_at == msk(4, 18)
    await office.staff_says(ticket, "/ask Какой адрес?", at=msk(3, 12))
    await office.citizen_says(telegram(13), "Ленина, 1", at=msk(3, 14))
    moved = await office.ticket(ticket)
    assert (moved.due_at, moved.remind_at, moved.next_alert_at) == (msk(5, 11), msk(5, 7), msk(5, 11))
    assert texts(await office.scan(msk(5, 10, 59)), COORDINATORS_CHAT) == []
    assert len(texts(await office.scan(msk(5, 11, 1)), COORDINATORS_CHAT)) == 1


async def test_a_wait_outside_working_hours_moves_nothing(db: Database) -> None:
    office = make_office(db, working_routing("16wh", remind_before="4h"), ManualClock(msk(6, 10)))
    ticket = await office.file(telegram(14))
    await office.staff_says(ticket, "/ask Какой адрес?", at=msk(6, 18, 30))  # after Friday's closing
    await office.citizen_says(telegram(14), "Ленина, 1", at=msk(8, 20))  # Sunday evening
    moved = await office.ticket(ticket)
    assert (moved.due_at, moved.remind_at, moved.next_alert_at) == (msk(9, 17), msk(9, 13), msk(9, 17))


# --- a citizen who could not be written to gets what they missed -------------------------------


async def test_a_citizen_who_unblocks_the_bot_gets_what_they_missed_in_order_and_once(db: Database) -> None:
    office = make_office(db, parse_routing(TEST_ROUTING), ManualClock(msk(2, 10)))
    phone = office.phones[Platform.telegram]
    anna = telegram(21)
    ticket = await office.file(anna)
    await office.deliver()
    got = len(phone.sent_to(21))  # the dialog's prompts, and "registered"
    phone.blocked.add(21)
    await office.tickets.take(ticket, office.staff, TicketStatus.new)
    phone.broken.add("Битая разметка")  # fails for a reason of its own, blocked or not
    await office.staff_says(ticket, "Битая разметка")
    await office.staff_says(ticket, "Приедем завтра")
    await office.staff_says(ticket, "/resolve Заделали")
    await office.deliver()
    assert (await office.citizen(anna)).unreachable_at is not None
    rows = await office.rows(Platform.telegram, 21)
    missed = [
        text for text, status, error in rows if status == "failed" and (error or "").startswith("blocked:")
    ]
    assert len(missed) == 3  # taken, the answer, the final answer with "Solved?"
    assert "Приедем завтра" in missed[1] and "Заделали" in missed[2]

    phone.blocked.discard(21)
    # Telegram's word that the bot was unblocked, twice (a redelivered update, or the citizen writing
    # right after): the missed messages are queued once, as the same rows.
    await office.tickets.citizen_reachable(Platform.telegram, 21)
    await office.tickets.citizen_reachable(Platform.telegram, 21)
    assert len(await office.rows(Platform.telegram, 21)) == len(rows)
    await office.deliver()
    resent = phone.sent_to(21)[got:]
    assert [message.text for message in resent] == missed
    assert resent[2].buttons  # "Solved? Yes / No"
    assert (await office.citizen(anna)).unreachable_at is None
    broken = [
        (status, error) for text, status, error in await office.rows(Platform.telegram, 21) if "Битая" in text
    ]
    assert len(broken) == 1 and broken[0][0] == "failed" and (broken[0][1] or "").startswith("bad_request:")

    await office.tickets.citizen_reachable(Platform.telegram, 21)
    await office.deliver()
    assert [message.text for message in phone.sent_to(21)[got:]] == missed  # nothing went twice


async def test_a_vk_citizen_writing_again_gets_the_missed_solved_question_then_its_closing(
    db: Database,
) -> None:
    # Resolved while the citizen had forbidden messages, then closed unanswered three days later: when
    # they write again, the answer with "Solved?" goes first, then the closing notice, and the buttons
    # come off the answer, before anything said to what they wrote now.
    policy = Policy(citizen_update_every=None, digest_at=None, resolved_autoclose=timedelta(days=3))
    office = make_office(db, parse_routing(TEST_ROUTING), ManualClock(msk(2, 10)), policy)
    phone = office.phones[Platform.vk]
    boris = vk(41)
    ticket = await office.file(boris, category="garbage")
    await office.deliver()
    before = len(phone.log)
    phone.blocked.add(41)
    office.staff = Staff(WASTE_CHAT, 2, "Ольга")
    await office.staff_says(ticket, "/resolve Вывезли", at=msk(2, 11))
    await office.deliver()
    assert (await office.citizen(boris)).unreachable_at is not None
    await office.scan(msk(5, 11, 1))
    assert (await office.ticket(ticket)).status is TicketStatus.closed
    await office.deliver()
    assert len(phone.log) == before  # nothing reached them meanwhile

    phone.blocked.discard(41)
    office.clock.set(msk(6, 9))
    await office.citizen_says(boris, "Здравствуйте")
    await office.deliver()
    after = [(kind, message, number) for kind, chat, message, number in phone.log[before:] if chat == 41]
    (k1, resolved, resolved_id), (k2, closed, _), (k3, edit, edited_id) = after[:3]
    assert (k1, k2, k3) == ("send", "send", "edit")
    assert "Вывезли" in resolved.text and resolved.buttons
    assert closed.text == office.text("citizen.auto_closed", tag=f"#T{ticket}")
    assert edited_id == resolved_id and edit.buttons_only and not edit.buttons
    assert len(after) > 3  # and then the answer to what they wrote
    assert [message.text for kind, message, _ in after].count(resolved.text) == 1


async def test_only_the_person_reachable_again_gets_their_messages_and_only_those_about_tickets(
    db: Database,
) -> None:
    # The same number on Telegram and VK is two people. A dialog reply that failed (an answer to a
    # command, about no ticket) is a conversation that has moved on, not something owed.
    office = make_office(db, parse_routing(TEST_ROUTING), ManualClock(msk(2, 10)))
    on_telegram, on_vk = telegram(51), vk(51)
    for who in (on_telegram, on_vk):
        ticket = await office.file(who)
        await office.deliver()
        office.phones[who.platform].blocked.add(51)
        await office.staff_says(ticket, f"Ответ для {who.platform.value}")
    await office.dialog.command(on_vk, "help")
    await office.deliver()

    office.phones[Platform.vk].blocked.discard(51)
    await office.tickets.citizen_reachable(Platform.vk, 51)
    await office.deliver()
    vk_rows = await office.rows(Platform.vk, 51)
    assert [text for text, status, _ in vk_rows if status == "failed"] == [vk_rows[-1][0]]  # the /help reply
    assert "Ответ для vk" in office.phones[Platform.vk].sent_to(51)[-1].text
    assert [
        status for text, status, _ in await office.rows(Platform.telegram, 51) if "Ответ для" in text
    ] == ["failed"]
    assert (await office.citizen(on_telegram)).unreachable_at is not None
