"""TicketService: every rule of a ticket's life, and who is told what when it changes.

Each public method is one transaction: the change, its `ticket_events` row and the outbox rows for
everyone who must hear of it. No platform library is imported here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.chats import ChatDirectory
from bot.config import Routing
from bot.delivery.outbox import Outbox, Unit
from bot.domain import (
    Action,
    Attachment,
    Citizen,
    Draft,
    EventKind,
    Location,
    NotAllowedHere,
    Platform,
    Ticket,
    TicketClosed,
    TicketEvent,
    TicketNotFound,
    TicketStatus,
    UnknownCommand,
    check_action,
)
from bot.i18n import Html, Translator
from bot.messages import Button, Outgoing, Ref, agency_mark, draft_from_json, feedback
from bot.render import Renderer
from bot.sla import deadline_after_pause

log = logging.getLogger(__name__)

# A staff reply that starts with a command ("/resolve@bot words"): the command, and the words after it.
STAFF_COMMAND = re.compile(r"(/[A-Za-z0-9_]+)(?:@\w+)?(?:\s+(.*))?$", re.DOTALL)

STAFF_PLATFORM = Platform.telegram
# A cursor row per staff chat the bot cannot write to, holding since when.
LOST_CHAT = "lost-chat:"


@dataclass(frozen=True, slots=True)
class Staff:
    """A person acting in an agency's or the coordinators' chat."""

    chat_id: int
    user_id: int
    name: str

    @property
    def actor(self) -> str:
        return f"staff:{self.user_id}"


class TicketService:
    def __init__(
        self,
        outbox: Outbox,
        routing: Routing,
        translator: Translator,
        *,
        citizen_update_every: timedelta | None = None,
    ) -> None:
        self.citizen_update_every = citizen_update_every
        self.outbox = outbox
        self.routing = routing
        self.t = translator
        self.render = Renderer(translator, routing)
        self.chats = ChatDirectory(routing)

    # -- reading

    async def citizen_tickets(self, citizen: Citizen, limit: int = 10) -> list[Ticket]:
        async with self.outbox.read() as repo:
            return await repo.citizen_tickets(citizen.id, limit)

    async def citizen_ticket(self, citizen: Citizen, number: int) -> Ticket:
        """One of the citizen's own tickets; someone else's number is simply not found."""
        async with self.outbox.read() as repo:
            ticket = await repo.ticket_by_number(number)
        if ticket is None or ticket.citizen_id != citizen.id:
            raise TicketNotFound(str(number))
        return ticket

    async def ticket_for_chat(self, number: int, chat_id: int) -> tuple[Ticket, list[TicketEvent]]:
        async with self.outbox.read() as repo:
            ticket = await repo.ticket_by_number(number)
            if ticket is None:
                raise TicketNotFound(str(number))
            self._authorize(ticket, chat_id)
            return ticket, await repo.events(ticket.id)

    async def post_history(self, number: int, chat_id: int, reply_to: int) -> None:
        """`/history N`: the ticket's timeline from its events, in a chat that has authority over it."""
        ticket, events = await self.ticket_for_chat(number, chat_id)
        async with self.outbox.unit() as u:
            await u.send(
                STAFF_PLATFORM,
                chat_id,
                Outgoing(
                    self.render.timeline(self.chat_locale(chat_id), ticket, events),
                    reply_to=Ref(message_id=reply_to),
                    link_ticket_id=ticket.id,
                    link_role="history",
                ),
                ticket_id=ticket.id,
            )

    async def post_card(self, number: int, chat_id: int) -> None:
        """`/card N`: a fresh card with live buttons, e.g. for coordinators acting on any ticket."""
        ticket, _ = await self.ticket_for_chat(number, chat_id)
        async with self.outbox.unit() as u:
            await self._post_card(u, ticket, chat_id, await u.repo.media(ticket.id, source="citizen"))

    # -- citizens

    async def open_ticket(
        self, citizen: Citizen, chat_id: int, also: Callable[[Unit, Draft], Awaitable[None]] | None = None
    ) -> Ticket | None:
        """File the citizen's stored draft as a ticket. The draft is cleared in the same transaction,
        so a repeated "confirm" (a double tap, a redelivered update) files nothing more. `also` adds the
        caller's own writes to that transaction, given the draft filed (the pressed summary kept as the
        record of it)."""
        async with self.outbox.unit() as u:
            state = await u.repo.conversation(citizen.platform, chat_id)
            draft = draft_from_json(state.get("draft")) if state else None
            if draft is None or draft.category_id is None or not draft.text:
                return None
            category = self.routing.category(draft.category_id)
            due_at = self.routing.deadline(category.id, u.now)
            ticket = await u.repo.insert_ticket(
                citizen_id=citizen.id,
                category_id=category.id,
                agency_id=category.agency,
                status=TicketStatus.new.value,
                text=draft.text,
                latitude=draft.latitude,
                longitude=draft.longitude,
                address=draft.address,
                created_at=u.now,
                updated_at=u.now,
                due_at=due_at,
                remind_at=self.routing.reminder_at(category.id, u.now, due_at),
                next_alert_at=due_at,
                next_update_at=u.now + every if (every := self.citizen_update_every) else None,
            )
            await u.repo.add_media(ticket.id, draft.photos, "citizen", u.now)
            await u.repo.add_event(ticket.id, EventKind.created, f"citizen:{citizen.id}", {}, u.now)
            await u.repo.save_conversation(citizen.platform, chat_id, None, u.now)
            if also is not None:
                await also(u, draft)
            locale = citizen.locale
            await u.send(
                citizen.platform,
                citizen.external_id,
                Outgoing(
                    self.t.render(
                        locale,
                        "citizen.registered",
                        tag=self.render.tag(ticket),
                        category=self.render.category(locale, ticket.category_id),
                        agency=self.render.agency(locale, ticket.agency_id),
                        deadline=self.render.local_time(ticket.due_at),
                    ),
                    link_ticket_id=ticket.id,
                    link_role="registered",
                ),
                ticket_id=ticket.id,
            )
            await self._post_card(u, ticket, self.agency_chat(ticket.agency_id), draft.photos)
            return ticket

    async def citizen_message(
        self,
        citizen: Citizen,
        ticket_id: int,
        text: str,
        photos: Sequence[Attachment],
        *,
        location: Location | None = None,
        also: Callable[[Unit], Awaitable[None]] | None = None,
    ) -> Ticket:
        """A citizen's answer or addition: stored, shown in the agency chat under the card. An answer to
        a question restarts the clock, moving the deadline by the time that counted while the ticket
        waited: all of it for a calendar-duration SLA, the working time for a working-time one.

        A `location` goes to the agency with the message (a map link) and into the event; a ticket filed
        without a place takes it as its place, so the card shows it. A place the report already has stays:
        the point is then shown only with this message. `also` adds the caller's own writes to the
        transaction (what it has to tell the citizen about the message)."""
        async with self.outbox.unit() as u:
            ticket = await self._ticket(u, ticket_id)
            if ticket.citizen_id != citizen.id:
                raise TicketNotFound(str(ticket_id))
            if not ticket.status.is_open:
                raise TicketClosed(str(ticket.number))
            await u.repo.add_media(ticket.id, photos, "citizen", u.now)
            payload: dict[str, object] = {"text": text}
            if location is not None:
                payload.update(latitude=location.latitude, longitude=location.longitude)
            await u.repo.add_event(
                ticket.id, EventKind.citizen_message, f"citizen:{citizen.id}", payload, u.now
            )
            # A report filed without a place takes the point as its place; one with a place keeps it.
            placed = False
            if location is not None and not ticket.address and ticket.latitude is None:
                ticket = await u.repo.update_ticket(
                    ticket.id, latitude=location.latitude, longitude=location.longitude, updated_at=u.now
                )
                placed = True
            if ticket.status is TicketStatus.need_info:
                # The clock stood still while the ticket waited: the deadline moves to where it would
                # have fallen had it stopped, and the promises tied to it move with it.
                since = ticket.waiting_since or u.now
                due_at = self._deadline_after_pause(ticket, since, u.now)
                ticket = await u.repo.update_ticket(
                    ticket.id,
                    status=TicketStatus.in_progress.value,
                    due_at=due_at,
                    # The reminder keeps its lead before the deadline; one already sent stays sent.
                    remind_at=due_at - (ticket.due_at - ticket.remind_at) if ticket.remind_at else None,
                    # Not yet alerted: the first alert is at the deadline. Alerted already: the next
                    # repeat (a real-time interval) keeps the time it had left when the wait began.
                    next_alert_at=(
                        due_at
                        if ticket.overdue_level == 0 or ticket.next_alert_at is None
                        else max(due_at, ticket.next_alert_at + (u.now - since))
                    ),
                    waiting_since=None,
                    updated_at=u.now,
                )
                await self.refresh_cards(u, ticket)
            elif placed:
                await self.refresh_cards(u, ticket)
            chat_id = self.agency_chat(ticket.agency_id)
            locale = self.chat_locale(chat_id)
            await u.send(
                STAFF_PLATFORM,
                chat_id,
                Outgoing(
                    self.t.render(
                        locale,
                        "agency.citizen_message",
                        tag=self.render.tag(ticket),
                        text=self.render.citizen_words(locale, text, location),
                    ),
                    photos=list(photos),
                    photo_caption=self.render.tag(ticket),
                    reply_to=Ref(ticket_id=ticket.id, role="card"),
                    link_ticket_id=ticket.id,
                    link_role="citizen",
                ),
                ticket_id=ticket.id,
            )
            await self.tell_citizen(u, citizen, ticket, "citizen.message_added", role="ack")
            if also is not None:
                await also(u)
            return ticket

    def _deadline_after_pause(self, ticket: Ticket, paused_at: datetime, resumed_at: datetime) -> datetime:
        """The ticket's deadline once its clock, stopped from `paused_at`, runs again at `resumed_at`:
        moved by the real time of the wait for a calendar-duration SLA, by the working time that
        passed meanwhile on the routing's calendar for a working-days or working-hours SLA."""
        try:
            sla = self.routing.category(ticket.category_id).sla
        except KeyError:
            # A category gone from the routing: its SLA is unknown, so the wait counts in real time.
            return ticket.due_at + max(resumed_at - paused_at, timedelta(0))
        return deadline_after_pause(ticket.due_at, paused_at, resumed_at, sla, self.routing.calendar)

    async def answer_feedback(self, citizen: Citizen, ticket_id: int, solved: bool) -> str:
        """The citizen's "Solved? Yes / No". Returns the key of the short answer to show them."""
        async with self.outbox.unit() as u:
            ticket = await self._ticket(u, ticket_id)
            if ticket.citizen_id != citizen.id:
                raise TicketNotFound(str(ticket_id))
            if ticket.status is not TicketStatus.resolved:
                return "toast.already_answered"
            if solved:
                ticket = await u.repo.update_ticket(
                    ticket.id, status=TicketStatus.closed.value, closed_at=u.now, updated_at=u.now
                )
                await u.repo.add_event(ticket.id, EventKind.confirmed, f"citizen:{citizen.id}", {}, u.now)
                await self.tell_citizen(u, citizen, ticket, "citizen.thanks")
                await self.tell_agency(u, ticket, "agency.confirmed")
            else:
                ticket = await u.repo.update_ticket(
                    ticket.id, status=TicketStatus.in_progress.value, resolved_at=None, updated_at=u.now
                )
                await u.repo.add_event(ticket.id, EventKind.reopened, f"citizen:{citizen.id}", {}, u.now)
                await self.tell_citizen(u, citizen, ticket, "citizen.reopened")
                await self.tell_agency(u, ticket, "agency.reopened")
            await self.refresh_cards(u, ticket)
            await self.close_feedback_buttons(u, citizen, ticket)
            return "toast.thanks"

    async def citizen_unreachable(self, platform: Platform, external_id: int, ticket_id: int | None) -> None:
        """The platform says we may not write to this person any more (blocked the bot, forbade messages).
        The agency of a ticket whose message did not get through is told, once per ticket, so it knows
        its answers do not arrive."""
        async with self.outbox.unit() as u:
            citizen = await u.repo.citizen_by_external(platform, external_id)
            if citizen is None:
                return
            since = citizen.unreachable_at or u.now
            if citizen.unreachable_at is None:
                await u.repo.set_citizen_unreachable(citizen.id, since)
            if ticket_id is None:
                return
            ticket = await u.repo.ticket(ticket_id)
            if ticket.citizen_id == citizen.id:
                await self.tell_agency(
                    u,
                    ticket,
                    "agency.citizen_unreachable",
                    dedupe_key=f"unreachable:{ticket.id}:{since.isoformat()}",
                )

    async def chat_unreachable(
        self, platform: Platform, chat_id: int, ticket_id: int | None, reason: str
    ) -> None:
        """A send failed because the chat itself is out of reach: a staff chat the bot was removed from
        (or that is gone), or a citizen who blocked the bot."""
        if platform is STAFF_PLATFORM and self.chats.is_staff_chat(chat_id):
            await self.staff_chat_lost(chat_id)
        else:
            await self.citizen_unreachable(platform, chat_id, ticket_id)

    async def staff_chat_lost(self, chat_id: int) -> None:
        """The bot can no longer write to an agency's (or the coordinators') chat. The coordinators are
        told once, until the bot is back; what failed meanwhile is sent again when it is."""
        key = f"{LOST_CHAT}{chat_id}"
        async with self.outbox.unit() as u:
            if await u.repo.cursor(key) is not None:
                return
            await u.repo.save_cursor(key, u.now.isoformat(), u.now)
            coordinators = self.chats.coordinators_chat
            if chat_id == coordinators:
                log.error("the coordinators' chat %s cannot be reached: add the bot back", chat_id)
                return
            await u.send(
                STAFF_PLATFORM,
                coordinators,
                Outgoing(
                    self.t.render(
                        self.chat_locale(coordinators),
                        "coordinators.chat_lost",
                        chat=self._chat_name(chat_id),
                    )
                ),
                dedupe_key=f"{key}:{u.now.isoformat()}",
            )
        log.warning("staff chat %s cannot be reached; coordinators told", chat_id)

    async def staff_chat_back(self, chat_id: int) -> None:
        """The bot was added back to a staff chat: resend what could not be delivered, and say so."""
        key = f"{LOST_CHAT}{chat_id}"
        async with self.outbox.unit() as u:
            lost = await u.repo.cursor(key) is not None
            await u.repo.drop_cursor(key)
            resent = await u.repo.outbox_requeue_unreachable(STAFF_PLATFORM, chat_id, u.now)
            coordinators = self.chats.coordinators_chat
            if not lost and not resent:
                return
            if chat_id != coordinators:
                await u.send(
                    STAFF_PLATFORM,
                    coordinators,
                    Outgoing(
                        self.t.plural(
                            self.chat_locale(coordinators),
                            "coordinators.chat_back",
                            resent,
                            chat=self._chat_name(chat_id),
                        )
                    ),
                    dedupe_key=f"{key}:back:{u.now.isoformat()}",
                )
            if resent:
                u.queued.add((STAFF_PLATFORM, chat_id))  # wakes the worker for the requeued rows
        log.info("staff chat %s is reachable again; %s messages requeued", chat_id, resent)

    def _chat_name(self, chat_id: int) -> str:
        locale = self.chat_locale(self.chats.coordinators_chat)
        agency = self.chats.agency_at(chat_id)
        if agency is None:
            return self.t.get(locale, "coordinators.own_chat")
        return self.render.agency(locale, agency.id)

    async def chat_migrated(self, platform: Platform, old: int, new: int) -> None:
        """A group became a supergroup: remember where it went, so routing follows it after restarts."""
        if platform is not STAFF_PLATFORM or not self.chats.is_staff_chat(old):
            return
        async with self.outbox.unit() as u:
            await self.chats.remember(u.repo, old, new, u.now)
            await u.repo.outbox_move_chat(platform, old, new)

    async def citizen_reachable(self, platform: Platform, external_id: int) -> None:
        """The person may be written to again (unblocked the bot, allowed messages, wrote to us), on
        either platform. What they were owed about their tickets and did not get because they were out
        of reach (answers, "Solved?", notices) goes again, in its original order: the failed rows are
        queued again in place, so each is still one message, and a second call finds none to resend."""
        async with self.outbox.unit() as u:
            citizen = await u.repo.citizen_by_external(platform, external_id)
            if citizen is None:
                return
            if citizen.unreachable_at is not None:
                await u.repo.set_citizen_unreachable(citizen.id, None)
            resent = await u.repo.outbox_requeue_owed(platform, external_id, u.now)
            if resent:
                u.queued.add((platform, external_id))  # wakes the worker for the requeued rows
        if resent:
            log.info(
                "%s citizen %s is reachable again; %s messages requeued", platform.value, citizen.id, resent
            )

    # -- staff

    async def take(self, ticket_id: int, staff: Staff, seen: TicketStatus) -> str:
        async with self.outbox.unit() as u:
            ticket = await self._ticket_for_staff(u, ticket_id, staff)
            if ticket.status is not seen:
                await self.refresh_cards(u, ticket)
                return "toast.stale"
            check_action(ticket.status, Action.take)
            ticket = await u.repo.update_ticket(
                ticket.id,
                status=TicketStatus.in_progress.value,
                first_response_at=ticket.first_response_at or u.now,
                updated_at=u.now,
            )
            await u.repo.add_event(ticket.id, EventKind.taken, staff.actor, {"by": staff.name}, u.now)
            await self.refresh_cards(u, ticket)
            citizen = await u.repo.citizen(ticket.citizen_id)
            await self.tell_citizen(
                u,
                citizen,
                ticket,
                "citizen.taken",
                agency=self.render.agency(citizen.locale, ticket.agency_id),
            )
            return "toast.taken"

    async def prompt(self, ticket_id: int, staff: Staff, action: Action, seen: TicketStatus) -> str:
        """Need info, Resolve and Reject need words from staff: ask for them as a reply."""
        async with self.outbox.unit() as u:
            ticket = await self._ticket_for_staff(u, ticket_id, staff)
            if ticket.status is not seen:
                await self.refresh_cards(u, ticket)
                return "toast.stale"
            await self.prompt_in(u, ticket, staff, action)
            return "toast.reply_with_text"

    async def show_transfer_targets(
        self, ticket_id: int, staff: Staff, seen: TicketStatus, card_message_id: int
    ) -> str:
        async with self.outbox.unit() as u:
            ticket = await self._ticket_for_staff(u, ticket_id, staff)
            if ticket.status is not seen:
                await self.refresh_cards(u, ticket)
                return "toast.stale"
            check_action(ticket.status, Action.transfer)
            locale = self.chat_locale(staff.chat_id)
            await u.send(
                STAFF_PLATFORM,
                staff.chat_id,
                Outgoing(
                    "",
                    buttons=self.render.transfer_buttons(locale, ticket),
                    edit=Ref(message_id=card_message_id),
                    buttons_only=True,
                ),
                ticket_id=ticket.id,
            )
            return "toast.choose_agency"

    async def restore_card(self, ticket_id: int, staff: Staff) -> str:
        async with self.outbox.unit() as u:
            ticket = await self._ticket_for_staff(u, ticket_id, staff)
            await self.refresh_cards(u, ticket)
            return "toast.ok"

    async def transfer(
        self, ticket_id: int, staff: Staff, agency_id: str, shown_for: str | None = None
    ) -> str:
        """`shown_for`: the `agency_mark` of the agency the list of targets was shown for (buttons made
        before it was carried have none); a second tap on that list, the ticket moved by the first, is
        stale rather than a second move."""
        target = self.routing.agency(agency_id)
        async with self.outbox.unit() as u:
            ticket = await self._ticket_for_staff(u, ticket_id, staff)
            check_action(ticket.status, Action.transfer)
            if shown_for is not None and shown_for != agency_mark(ticket.agency_id):
                await self.refresh_cards(u, ticket)
                return "toast.stale"
            if target.id == ticket.agency_id:
                return "toast.stale"
            old_chat = self.agency_chat(ticket.agency_id)
            old_locale = self.chat_locale(old_chat)
            ticket = await u.repo.update_ticket(
                ticket.id, agency_id=target.id, status=TicketStatus.new.value, updated_at=u.now
            )
            await u.repo.add_event(
                ticket.id,
                EventKind.transferred,
                staff.actor,
                {"by": staff.name, "to": target.id},
                u.now,
            )
            citizen = await u.repo.citizen(ticket.citizen_id)
            photos = await u.repo.media(ticket.id, source="citizen")
            # The old agency keeps a card that says where the ticket went, without buttons.
            await u.send(
                STAFF_PLATFORM,
                old_chat,
                Outgoing(
                    self.render.card(
                        old_locale,
                        ticket,
                        citizen.id,
                        len(photos),
                        transferred_to=self.render.agency(old_locale, target.id),
                    ),
                    edit=Ref(ticket_id=ticket.id, role="card"),
                ),
                ticket_id=ticket.id,
            )
            new_chat = self.agency_chat(target.id)
            await self._post_card(u, ticket, new_chat, photos)
            await self.refresh_cards(u, ticket, skip={new_chat, old_chat})
            await self.tell_citizen(
                u,
                citizen,
                ticket,
                "citizen.transferred",
                agency=self.render.agency(citizen.locale, target.id),
            )
            return "toast.transferred"

    async def staff_message(
        self,
        ticket_id: int,
        staff: Staff,
        role: str,
        text: str,
        photos: Sequence[Attachment],
        message_id: int,
        also: Callable[[Unit], Awaitable[None]] | None = None,
    ) -> None:
        """A staff reply in the chat to one of the ticket's messages: an answer to the citizen, an
        internal note (`!`), or the words a prompt asked for (question, final answer, reason). `also`
        adds the caller's own writes to the transaction."""
        explicit = {"/ask": Action.need_info, "/resolve": Action.resolve, "/reject": Action.reject}
        command = STAFF_COMMAND.match(text)
        if command is not None and command.group(1).lower() not in explicit:
            raise UnknownCommand(command.group(1))
        action: Action | None = None
        if role.startswith("prompt:"):
            action = Action(role.removeprefix("prompt:"))
        elif command is not None:
            action, text = explicit[command.group(1).lower()], (command.group(2) or "").strip()
        async with self.outbox.unit() as u:
            ticket = await self._ticket_for_staff(u, ticket_id, staff)
            if action is None and text.startswith("!"):
                await self._note(u, ticket, staff, text[1:].strip(), message_id)
            elif action is None:
                await self._reply(u, ticket, staff, text, photos, message_id)
            elif not text and not (action is Action.resolve and photos):
                await self.prompt_in(u, ticket, staff, action)
            else:
                await self._apply(u, ticket, staff, action, text, photos, message_id)
            if also is not None:
                await also(u)

    async def prompt_in(self, u: Unit, ticket: Ticket, staff: Staff, action: Action) -> None:
        check_action(ticket.status, action)
        locale = self.chat_locale(staff.chat_id)
        await u.send(
            STAFF_PLATFORM,
            staff.chat_id,
            Outgoing(
                self.t.render(locale, f"prompt.{action.name}", tag=self.render.tag(ticket), name=staff.name),
                reply_to=Ref(ticket_id=ticket.id, role="card"),
                force_reply=True,
                link_ticket_id=ticket.id,
                link_role=f"prompt:{action.value}",
            ),
            ticket_id=ticket.id,
        )

    async def _note(self, u: Unit, ticket: Ticket, staff: Staff, text: str, message_id: int) -> None:
        await u.repo.add_event(
            ticket.id, EventKind.internal_note, staff.actor, {"by": staff.name, "text": text}, u.now
        )
        await self._ack(u, ticket, staff, "staff.note_saved", message_id)

    async def _reply(
        self,
        u: Unit,
        ticket: Ticket,
        staff: Staff,
        text: str,
        photos: Sequence[Attachment],
        message_id: int,
    ) -> None:
        if not ticket.status.is_open:
            raise TicketClosed(str(ticket.number))
        await u.repo.add_media(ticket.id, photos, "staff", u.now)
        await u.repo.add_event(
            ticket.id, EventKind.staff_reply, staff.actor, {"by": staff.name, "text": text}, u.now
        )
        if ticket.first_response_at is None:
            ticket = await u.repo.update_ticket(ticket.id, first_response_at=u.now, updated_at=u.now)
        citizen = await u.repo.citizen(ticket.citizen_id)
        await self.tell_citizen(
            u,
            citizen,
            ticket,
            "citizen.answer",
            photos=photos,
            role="answer",
            agency=self.render.agency(citizen.locale, ticket.agency_id),
            text=text or "—",
        )
        ack = "agency.citizen_unreachable" if citizen.unreachable_at else "staff.reply_sent"
        await self._ack(u, ticket, staff, ack, message_id)

    async def _apply(
        self,
        u: Unit,
        ticket: Ticket,
        staff: Staff,
        action: Action,
        text: str,
        photos: Sequence[Attachment],
        message_id: int,
    ) -> None:
        check_action(ticket.status, action)
        citizen = await u.repo.citizen(ticket.citizen_id)
        agency = self.render.agency(citizen.locale, ticket.agency_id)
        await u.repo.add_media(ticket.id, photos, "staff", u.now)
        payload: dict[str, object] = {"by": staff.name, "text": text}
        first = ticket.first_response_at or u.now
        buttons: list[list[Button]] = []
        if action is Action.need_info:
            ticket = await u.repo.update_ticket(
                ticket.id,
                status=TicketStatus.need_info.value,
                first_response_at=first,
                waiting_since=u.now,
                updated_at=u.now,
            )
            kind, notice, role, ack = EventKind.info_requested, "citizen.question", "question", "staff.asked"
        elif action is Action.resolve:
            ticket = await u.repo.update_ticket(
                ticket.id,
                status=TicketStatus.resolved.value,
                resolved_at=u.now,
                first_response_at=first,
                updated_at=u.now,
            )
            kind, notice, role, ack = EventKind.resolved, "citizen.resolved", "resolved", "staff.resolved"
            buttons = [
                [
                    Button(self.t.get(citizen.locale, "button.solved_yes"), feedback("yes", ticket.id)),
                    Button(self.t.get(citizen.locale, "button.solved_no"), feedback("no", ticket.id)),
                ]
            ]
        else:
            ticket = await u.repo.update_ticket(
                ticket.id,
                status=TicketStatus.rejected.value,
                closed_at=u.now,
                first_response_at=first,
                updated_at=u.now,
            )
            kind, notice, role, ack = EventKind.rejected, "citizen.rejected", "rejected", "staff.rejected"
        await u.repo.add_event(ticket.id, kind, staff.actor, payload, u.now)
        await self.tell_citizen(
            u,
            citizen,
            ticket,
            notice,
            photos=photos,
            role=role,
            buttons=buttons,
            agency=agency,
            text=text or "—",
        )
        await self.refresh_cards(u, ticket)
        await self._ack(u, ticket, staff, ack, message_id)

    # -- helpers

    async def _ticket(self, u: Unit, ticket_id: int) -> Ticket:
        try:
            return await u.repo.ticket(ticket_id)
        except LookupError:
            raise TicketNotFound(str(ticket_id)) from None

    async def _ticket_for_staff(self, u: Unit, ticket_id: int, staff: Staff) -> Ticket:
        ticket = await self._ticket(u, ticket_id)
        self._authorize(ticket, staff.chat_id)
        return ticket

    def _authorize(self, ticket: Ticket, chat_id: int) -> None:
        """Authority comes from the chat: the ticket's agency chat or the coordinators' chat."""
        if chat_id != self.agency_chat(ticket.agency_id) and not self.chats.is_coordinators(chat_id):
            raise NotAllowedHere(f"chat {chat_id} has no authority over ticket {ticket.id}")

    def agency_chat(self, agency_id: str) -> int:
        return self.chats.agency_chat(agency_id)

    def chat_locale(self, chat_id: int) -> str:
        return self.chats.locale(chat_id)

    def agency_locale(self, agency_id: str) -> str:
        """The language of the agency's chat, which `tell_agency` writes in."""
        return self.chat_locale(self.agency_chat(agency_id))

    async def _post_card(self, u: Unit, ticket: Ticket, chat_id: int, photos: Sequence[Attachment]) -> None:
        locale = self.chat_locale(chat_id)
        await u.send(
            STAFF_PLATFORM,
            chat_id,
            Outgoing(
                self.render.card(locale, ticket, ticket.citizen_id, len(photos)),
                photos=list(photos),
                photo_caption=self.render.tag(ticket),
                buttons=self.render.card_buttons(locale, ticket),
                link_ticket_id=ticket.id,
                link_role="card",
            ),
            ticket_id=ticket.id,
        )

    async def refresh_cards(
        self, u: Unit, ticket: Ticket, skip: frozenset[int] | set[int] = frozenset()
    ) -> None:
        """Make every card of the ticket show its current status and the buttons that status allows."""
        # The chats with a card, and when it went: the agency's always (an edit queued before its card
        # went finds it once sent), the coordinators' if they were shown one.
        agency, coordinators = self.agency_chat(ticket.agency_id), self.chats.coordinators_chat
        chats = {agency: await u.repo.linked_at(ticket.id, STAFF_PLATFORM, agency, "card")}
        if (shown := await u.repo.linked_at(ticket.id, STAFF_PLATFORM, coordinators, "card")) is not None:
            chats[coordinators] = shown
        photos = await u.repo.media_added(ticket.id, source="citizen")
        for chat_id, posted in chats.items():
            if chat_id in skip:
                continue
            # The edit goes to the card's caption or its text by the photos the card went with; the card
            # counts all there are now.
            went_with = [photo for photo, added in photos if posted is None or added <= posted]
            locale = self.chat_locale(chat_id)
            await u.send(
                STAFF_PLATFORM,
                chat_id,
                Outgoing(
                    self.render.card(locale, ticket, ticket.citizen_id, len(photos)),
                    photos=went_with,
                    buttons=self.render.card_buttons(locale, ticket),
                    edit=Ref(ticket_id=ticket.id, role="card"),
                ),
                ticket_id=ticket.id,
            )

    async def tell_citizen(
        self,
        u: Unit,
        citizen: Citizen,
        ticket: Ticket,
        key: str,
        *,
        photos: Sequence[Attachment] = (),
        role: str = "notice",
        buttons: list[list[Button]] | None = None,
        **params: object,
    ) -> None:
        locale = citizen.locale
        await u.send(
            citizen.platform,
            citizen.external_id,
            Outgoing(
                self.t.render(locale, key, tag=self.render.tag(ticket), **params),
                photos=list(photos),
                photo_caption=self.render.tag(ticket),
                buttons=buttons or [],
                link_ticket_id=ticket.id,
                link_role=role,
            ),
            ticket_id=ticket.id,
        )

    async def close_feedback_buttons(self, u: Unit, citizen: Citizen, ticket: Ticket) -> None:
        """Take "Solved? Yes / No" off the citizen's message once the question is settled."""
        await u.send(
            citizen.platform,
            citizen.external_id,
            Outgoing("", edit=Ref(ticket_id=ticket.id, role="resolved"), buttons_only=True),
            ticket_id=ticket.id,
        )

    async def tell_agency(
        self, u: Unit, ticket: Ticket, key: str, dedupe_key: str | None = None, **params: object
    ) -> None:
        chat_id = self.agency_chat(ticket.agency_id)
        await u.send(
            STAFF_PLATFORM,
            chat_id,
            Outgoing(
                self.t.render(self.chat_locale(chat_id), key, tag=self.render.tag(ticket), **params),
                reply_to=Ref(ticket_id=ticket.id, role="card"),
                link_ticket_id=ticket.id,
                link_role="notice",
            ),
            ticket_id=ticket.id,
            dedupe_key=dedupe_key,
        )

    async def _ack(self, u: Unit, ticket: Ticket, staff: Staff, key: str, message_id: int) -> None:
        locale = self.chat_locale(staff.chat_id)
        await u.send(
            STAFF_PLATFORM,
            staff.chat_id,
            Outgoing(
                self.t.render(locale, key, tag=self.render.tag(ticket)),
                reply_to=Ref(message_id=message_id),
                link_ticket_id=ticket.id,
                link_role="ack",
            ),
            ticket_id=ticket.id,
        )

    def staff_text(self, chat_id: int, key: str, **params: object) -> Html:
        return self.t.render(self.chat_locale(chat_id), key, **params)
