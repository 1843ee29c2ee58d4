"""Keeping the promises: reminders before a deadline, overdue alerts after it, news for citizens who
wait, follow-ups that close what nobody answers, and the coordinators' daily digest.

Each scan reads only the rows whose time has come (indexed), and the database alone remembers what was
already sent, in the same transaction as the message: a restart neither skips nor repeats anything, and
whatever fell due while the bot was down is caught up once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from bot.delivery.outbox import Unit
from bot.domain import EventKind, Platform, Ticket, TicketStatus
from bot.i18n import Html
from bot.messages import Outgoing
from bot.policy import Policy
from bot.tickets import STAFF_PLATFORM, TicketService

log = logging.getLogger(__name__)

WORKING = (TicketStatus.new, TicketStatus.in_progress)
BATCH = 500
GROUP_LINES = 30


class Deadlines:
    def __init__(self, tickets: TicketService, policy: Policy | None = None) -> None:
        self.tickets = tickets
        self.policy = policy or Policy()
        self.outbox = tickets.outbox
        self.render = tickets.render
        self.t = tickets.t
        self.routing = tickets.routing

    async def scan(self, now: datetime) -> dict[str, int]:
        """Every promise, once; returns how many tickets each part acted on."""
        return {
            "reminders": await self.remind(now),
            "overdue": await self.alert_overdue(now),
            "citizen_updates": await self.update_citizens(now),
            "auto_closed": await self.close_unconfirmed(now),
            "closed_no_answer": await self.close_unanswered(now),
            "digest": await self.digest(now),
        }

    async def remind(self, now: datetime) -> int:
        async with self.outbox.unit() as u:
            due = await u.repo.due("remind_at", WORKING, now, BATCH)
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
                    left=self.render.duration(self.routing.default_locale, ticket.due_at - now),
                    dedupe_key=f"remind:{ticket.id}:{ticket.due_at.isoformat()}",
                )
            return len(due)

    async def alert_overdue(self, now: datetime) -> int:
        """Alerts in the agency's chat and the coordinators' chat, repeated every `overdue_repeat` with
        a rising level. Many at once reach the coordinators as one grouped message."""
        async with self.outbox.unit() as u:
            due = await u.repo.due("next_alert_at", WORKING, now, BATCH)
            alerted: list[tuple[Ticket, int]] = []
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
                await self.tickets.tell_agency(
                    u,
                    ticket,
                    "agency.overdue",
                    late=self.render.duration(self.routing.default_locale, now - ticket.due_at),
                    level=level,
                    status=self.render.status(self.routing.default_locale, ticket.status),
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
                alerted.append((ticket, level))
            await self._alert_coordinators(u, alerted, now)
            return len(alerted)

    async def _alert_coordinators(self, u: Unit, alerted: list[tuple[Ticket, int]], now: datetime) -> None:
        if not alerted:
            return
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
        if len(alerted) <= self.policy.group_threshold:
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
        if len(lines) > GROUP_LINES:
            shown.append(self.t.render(locale, "coordinators.more", number=len(lines) - GROUP_LINES))
        header = self.t.plural(locale, "coordinators.overdue_group", len(alerted))
        await u.send(
            STAFF_PLATFORM,
            chat_id,
            Outgoing(Html("\n".join([header, "", *shown]))),
            dedupe_key=f"coord-overdue-group:{now.isoformat()}:{alerted[0][0].id}",
        )

    async def update_citizens(self, now: datetime) -> int:
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
            return len(due) if every else 0

    async def close_unconfirmed(self, now: datetime) -> int:
        """A resolved ticket whose citizen never answered "Solved?" is closed as solved."""
        after = self.policy.resolved_autoclose
        if after is None:
            return 0
        return await self._close(
            now,
            "resolved_at",
            TicketStatus.resolved,
            after,
            EventKind.auto_closed,
            ("citizen.auto_closed", "agency.auto_closed"),
        )

    async def close_unanswered(self, now: datetime) -> int:
        """A ticket that waited too long for the citizen's information is closed as unanswered."""
        after = self.policy.need_info_timeout
        if after is None:
            return 0
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
    ) -> int:
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
            return len(due)

    async def digest(self, now: datetime) -> int:
        """Once a day at `digest_at` local time: the last day per agency, and the longest overdue."""
        at = self.policy.digest_at
        if at is None:
            return 0
        local = now.astimezone(self.routing.timezone)
        if local.time() < at:
            return 0
        today = local.date().isoformat()
        async with self.outbox.read() as repo:
            if await repo.cursor("digest") == today:
                return 0
        # Counting goes over the whole table: outside the write turn, and off the event loop.
        async with self.outbox.read(offload=True) as repo:
            counts = {row.agency_id: row for row in await repo.digest_counts(now - timedelta(days=1), now)}
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
