"""Keeping the promises: reminders before a deadline, overdue alerts after it, news for citizens who
wait, follow-ups that close what nobody answers, and the coordinators' daily digest.

Each scan reads only the rows whose time has come (indexed), and the database alone remembers what was
already sent, in the same transaction as the message: a restart neither skips nor repeats anything, and
whatever fell due while the bot was down is caught up once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta

from bot.delivery.outbox import Unit
from bot.domain import EventKind, Platform, Ticket, TicketStatus
from bot.i18n import Html
from bot.messages import Outgoing
from bot.policy import Policy
from bot.tickets import STAFF_PLATFORM, TicketService

log = logging.getLogger(__name__)

WORKING = (TicketStatus.new, TicketStatus.in_progress)
# Tickets one pass acts on, in one transaction: the write turn a pass holds stays short (a report waits
# behind it), and a backlog is worked through by passes back to back, each committed.
BATCH = 100
# Passes of one kind in a scan at most (10,000 tickets); anything beyond is the next scan's.
PASSES = 100
GROUP_LINES = 30
# The last overdue alert (its event's id) the coordinators were told of.
OVERDUE_REPORTED = "overdue-reported"

# A pass: how many due tickets it found (a full batch means there may be more) and how many it acted on.
Pass = tuple[int, int]


class Deadlines:
    def __init__(self, tickets: TicketService, policy: Policy | None = None, passes: int = PASSES) -> None:
        self.tickets = tickets
        self.policy = policy or Policy()
        self.passes = passes
        self.outbox = tickets.outbox
        self.render = tickets.render
        self.t = tickets.t
        self.routing = tickets.routing

    async def scan(self, now: datetime) -> dict[str, int]:
        """Every promise that is due, once; returns how many tickets each part acted on."""
        done = {
            "reminders": await self._drain(self.remind, now),
            "overdue": await self._drain(self.alert_overdue, now),
            "citizen_updates": await self._drain(self.update_citizens, now),
            "auto_closed": await self._drain(self.close_unconfirmed, now),
            "closed_no_answer": await self._drain(self.close_unanswered, now),
        }
        await self.report_overdue(now)
        done["digest"] = await self.digest(now)
        return done

    async def _drain(self, part: Callable[[datetime], Awaitable[Pass]], now: datetime) -> int:
        """Passes of `part` until one finds less than a full batch. Every pass leaves the tickets it found
        no longer due at `now`, so each finds the next ones."""
        acted = 0
        for _ in range(self.passes):
            found, did = await part(now)
            acted += did
            if found < BATCH:
                break
        return acted

    async def remind(self, now: datetime) -> Pass:
        async with self.outbox.unit() as u:
            due = await u.repo.due("remind_at", WORKING, now, BATCH)
            reminded = 0
            for ticket in due:
                await u.repo.update_ticket(ticket.id, remind_at=None, reminder_level=1)
                if ticket.due_at <= now:
                    continue  # too late to remind: the overdue alert says it better
                await u.repo.add_event(ticket.id, EventKind.reminded, "system", {}, now)
                await self.tickets.tell_agency(
                    u,
                    ticket,
                    "agency.reminder",
                    deadline=self.render.local_time(ticket.due_at),
                    left=self.render.duration(
                        self.tickets.agency_locale(ticket.agency_id), ticket.due_at - now
                    ),
                    dedupe_key=f"remind:{ticket.id}:{ticket.due_at.isoformat()}",
                )
                reminded += 1
            return len(due), reminded

    async def alert_overdue(self, now: datetime) -> Pass:
        """Alerts in the agency's chat, repeated every `overdue_repeat` with a rising level; each is
        recorded as an event, which `report_overdue` tells the coordinators of."""
        async with self.outbox.unit() as u:
            due = await u.repo.due("next_alert_at", WORKING, now, BATCH)
            alerted = 0
            for ticket in due:
                if ticket.due_at > now:  # a deadline moved on after the alert time was set
                    await u.repo.update_ticket(ticket.id, next_alert_at=ticket.due_at)
                    continue
                level = ticket.overdue_level + 1
                # One alert however many intervals were missed while the bot was down.
                await u.repo.update_ticket(
                    ticket.id, overdue_level=level, next_alert_at=now + self.policy.overdue_repeat
                )
                await u.repo.add_event(ticket.id, EventKind.overdue, "system", {"level": level}, now)
                locale = self.tickets.agency_locale(ticket.agency_id)
                await self.tickets.tell_agency(
                    u,
                    ticket,
                    "agency.overdue",
                    late=self.render.duration(locale, now - ticket.due_at),
                    level=level,
                    status=self.render.status(locale, ticket.status),
                    dedupe_key=f"overdue:{ticket.id}:{level}",
                )
                if level == 1 and self.policy.citizen_overdue_notice:
                    citizen = await u.repo.citizen(ticket.citizen_id)
                    await self.tickets.tell_citizen(
                        u,
                        citizen,
                        ticket,
                        "citizen.overdue",
                        agency=self.render.agency(citizen.locale, ticket.agency_id),
                    )
                alerted += 1
            return len(due), alerted

    async def report_overdue(self, now: datetime) -> int:
        """The coordinators hear of every overdue alert raised since they were last told: a message per
        ticket, or one for all when more than `group_threshold` came at once (a backlog is one message
        however many passes it took). The alerts' events are what is owed, and a cursor, moved in the
        transaction that queues the telling, marks what was told: alerts a crash kept from being told
        are told by the next scan."""
        async with self.outbox.unit() as u:
            told = int(await u.repo.cursor(OVERDUE_REPORTED) or 0)
            count, last, alerted = await u.repo.overdue_alerts_after(
                told, max(self.policy.group_threshold, GROUP_LINES)
            )
            if count:
                await self._alert_coordinators(u, count, alerted, now, last)
                await u.repo.save_cursor(OVERDUE_REPORTED, str(last), now)
            return count

    async def _alert_coordinators(
        self, u: Unit, count: int, alerted: list[tuple[Ticket, int]], now: datetime, last: int
    ) -> None:
        chat_id = self.tickets.chats.coordinators_chat
        locale = self.tickets.chat_locale(chat_id)
        lines: list[str] = [
            self.t.render(
                locale,
                "coordinators.overdue_line",
                tag=self.render.tag(ticket),
                category=self.render.category(locale, ticket.category_id),
                agency=self.render.agency(locale, ticket.agency_id),
                late=self.render.duration(locale, now - ticket.due_at),
                status=self.render.status(locale, ticket.status),
                level=level,
            )
            for ticket, level in alerted
        ]
        if count <= self.policy.group_threshold:
            for (ticket, level), line in zip(alerted, lines, strict=True):
                text = self.t.render(locale, "coordinators.overdue", line=line)
                await u.send(
                    STAFF_PLATFORM,
                    chat_id,
                    Outgoing(text, link_ticket_id=ticket.id, link_role="alert"),
                    ticket_id=ticket.id,
                    dedupe_key=f"coord-overdue:{ticket.id}:{level}",
                )
            return
        shown = lines[:GROUP_LINES]
        if count > GROUP_LINES:
            shown.append(self.t.render(locale, "coordinators.more", number=count - GROUP_LINES))
        header = self.t.plural(locale, "coordinators.overdue_group", count)
        await u.send(
            STAFF_PLATFORM,
            chat_id,
            Outgoing(Html("\n".join([header, "", *shown]))),
            dedupe_key=f"coord-overdue-group:{last}",
        )

    async def update_citizens(self, now: datetime) -> Pass:
        every = self.policy.citizen_update_every
        async with self.outbox.unit() as u:
            due = await u.repo.due("next_update_at", WORKING, now, BATCH)
            for ticket in due:
                await u.repo.update_ticket(ticket.id, next_update_at=now + every if every else None)
                if every is None:
                    continue
                citizen = await u.repo.citizen(ticket.citizen_id)
                await self.tickets.tell_citizen(
                    u,
                    citizen,
                    ticket,
                    "citizen.still_in_work",
                    agency=self.render.agency(citizen.locale, ticket.agency_id),
                    status=self.render.status(citizen.locale, ticket.status),
                    deadline=self.render.local_time(ticket.due_at),
                )
            return len(due), len(due) if every else 0

    async def close_unconfirmed(self, now: datetime) -> Pass:
        """A resolved ticket whose citizen never answered "Solved?" is closed as solved."""
        after = self.policy.resolved_autoclose
        if after is None:
            return 0, 0
        return await self._close(
            now,
            "resolved_at",
            TicketStatus.resolved,
            after,
            EventKind.auto_closed,
            ("citizen.auto_closed", "agency.auto_closed"),
        )

    async def close_unanswered(self, now: datetime) -> Pass:
        """A ticket that waited too long for the citizen's information is closed as unanswered."""
        after = self.policy.need_info_timeout
        if after is None:
            return 0, 0
        return await self._close(
            now,
            "waiting_since",
            TicketStatus.need_info,
            after,
            EventKind.closed_no_answer,
            ("citizen.no_answer", "agency.no_answer"),
        )

    async def _close(
        self,
        now: datetime,
        column: str,
        status: TicketStatus,
        after: timedelta,
        kind: EventKind,
        notices: tuple[str, str],
    ) -> Pass:
        citizen_key, agency_key = notices
        async with self.outbox.unit() as u:
            due = await u.repo.due(column, (status,), now - after, BATCH)
            for ticket in due:
                closed = await u.repo.update_ticket(
                    ticket.id,
                    status=TicketStatus.closed.value,
                    closed_at=now,
                    waiting_since=None,
                    updated_at=now,
                )
                await u.repo.add_event(ticket.id, kind, "system", {}, now)
                citizen = await u.repo.citizen(ticket.citizen_id)
                await self.tickets.tell_citizen(u, citizen, closed, citizen_key)
                await self.tickets.tell_agency(u, closed, agency_key)
                await self.tickets.refresh_cards(u, closed)
                await self.tickets.close_feedback_buttons(u, citizen, closed)
            return len(due), len(due)

    def _local_at(self, day: date, at: time) -> datetime:
        """`at` o'clock on `day` in the routing's time zone, as UTC (a local day is 23 or 25 hours long
        when the clocks change)."""
        return datetime.combine(day, at, tzinfo=self.routing.timezone).astimezone(UTC)

    async def digest(self, now: datetime) -> int:
        """Once a day at `digest_at` local time: per agency, what was filed and resolved since the last
        digest's hour (yesterday's, or the day of the last digest sent if days were missed) up to today's,
        in local days, however late the digest goes; what is open and overdue now; the longest overdue."""
        at = self.policy.digest_at
        if at is None:
            return 0
        local = now.astimezone(self.routing.timezone)
        if local.time() < at:
            return 0
        today = local.date().isoformat()
        async with self.outbox.read() as repo:
            last = await repo.cursor("digest")
        if last == today:
            return 0
        since_day = date.fromisoformat(last) if last else local.date() - timedelta(days=1)
        since, until = self._local_at(since_day, at), self._local_at(local.date(), at)
        # Counting goes over the whole table: outside the write turn, and off the event loop.
        async with self.outbox.read(offload=True) as repo:
            counts = {row.agency_id: row for row in await repo.digest_counts(since, until, now)}
        async with self.outbox.unit() as u:
            if await u.repo.cursor("digest") == today:
                return 0  # sent meanwhile (by another instance)
            await u.repo.save_cursor("digest", today, now)
            chat_id = self.tickets.chats.coordinators_chat
            locale = self.tickets.chat_locale(chat_id)
            lines: list[str] = [self.t.render(locale, "digest.header", date=local.strftime("%d.%m.%Y"))]
            for agency in self.routing.agencies:
                row = counts.get(agency.id)
                lines.append(
                    self.t.render(
                        locale,
                        "digest.agency",
                        agency=self.render.agency(locale, agency.id),
                        new=row.new if row else 0,
                        resolved=row.resolved if row else 0,
                        overdue=row.overdue if row else 0,
                        open=row.open if row else 0,
                    )
                )
            worst = await u.repo.longest_overdue(now, 5)
            if worst:
                lines += ["", self.t.render(locale, "digest.longest")]
                lines += [
                    self.t.render(
                        locale,
                        "digest.longest_line",
                        tag=self.render.tag(ticket),
                        agency=self.render.agency(locale, ticket.agency_id),
                        late=self.render.duration(locale, now - ticket.due_at),
                    )
                    for ticket in worst
                ]
            else:
                lines += ["", self.t.render(locale, "digest.none_overdue")]
            await u.send(
                Platform.telegram, chat_id, Outgoing(Html("\n".join(lines))), dedupe_key=f"digest:{today}"
            )
            return 1
