"""The citizen's side of the conversation, the same on every platform.

Handlers turn a platform's update into a `CitizenInput` or a button press and call `CitizenDialog`;
it keeps the report being written (the draft) in the database and answers through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypeVar

from bot.config import Routing
from bot.delivery.outbox import Outbox, Unit
from bot.domain import (
    Attachment,
    Citizen,
    DomainError,
    Draft,
    Location,
    Platform,
    TicketClosed,
    TicketNotFound,
    TicketStatus,
    parse_id,
)
from bot.i18n import SUPPORTED, Html, Translator
from bot.messages import Button, Outgoing, Ref, draft_from_json, draft_to_json
from bot.tickets import TicketService

log = logging.getLogger(__name__)

# The kind of content a file over the download limit is (in `CitizenInput.skipped`).
FILE_TOO_BIG = "file_too_big"
NUMBER = re.compile(r"^\s*#?[A-Za-z]{0,8}(\d{1,12})\s*$")


@dataclass(frozen=True, slots=True)
class Person:
    platform: Platform
    chat_id: int
    user_id: int
    name: str = ""
    language: str | None = None


@dataclass(slots=True)
class CitizenInput:
    who: Person
    text: str = ""
    photos: list[Attachment] = field(default_factory=list)
    location: Location | None = None
    reply_to: int | None = None
    # The kinds of what came and cannot be taken ("sticker", "video", FILE_TOO_BIG, ...), each part of
    # an album, attachment or forwarded message judged on its own.
    skipped: list[str] = field(default_factory=list)

    @property
    def refused(self) -> str | None:
        """Why nothing of the message can be taken, or None when something can: then the rest is taken
        and the citizen told which kinds were not (`skipped`). One rule for every platform: a file over
        the limit is named first, being what the citizen meant to give and can send again smaller."""
        if self.text or self.photos or self.location is not None:
            return None
        if FILE_TOO_BIG in self.skipped:
            return FILE_TOO_BIG
        return self.skipped[0] if self.skipped else "empty"


@dataclass(frozen=True, slots=True)
class Limits:
    max_text: int = 3500
    max_photos: int = 10
    reports_per_hour: int = 0  # 0: no limit


class CitizenDialog:
    def __init__(
        self,
        outbox: Outbox,
        tickets: TicketService,
        routing: Routing,
        translator: Translator,
        limits: Limits | None = None,
    ) -> None:
        self.outbox = outbox
        self.tickets = tickets
        self.routing = routing
        self.t = translator
        self.render = tickets.render
        self.limits = limits or Limits()
        # One conversation step at a time per chat: two quick messages must not race on the draft.
        self._locks: defaultdict[tuple[Platform, int], asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- entry points

    async def command(self, who: Person, name: str, args: str = "") -> None:
        async with self._locks[(who.platform, who.chat_id)]:
            citizen = await self._citizen(who)
            handler = {
                "start": self._start,
                "help": self._help,
                "cancel": self._cancel,
                "my": self._my,
                "new": self._new,
                "lang": self._choose_language,
            }.get(name)
            if name == "status":
                await self._status(who, citizen, args)
            elif handler is not None:
                await handler(who, citizen)
            else:
                await self._say(who, citizen, "dialog.unknown_command")

    async def message(self, incoming: CitizenInput) -> None:
        who = incoming.who
        async with self._locks[(who.platform, who.chat_id)]:
            citizen = await self._citizen(who)
            await _again_if_moved(lambda: self._message(incoming, citizen))

    async def press(self, who: Person, data: str, pressed: Ref) -> str:
        """A button on the message `pressed` in the citizen's chat; returns the short text for the
        button's answer."""
        async with self._locks[(who.platform, who.chat_id)]:
            citizen = await self._citizen(who)
            try:
                return await _again_if_moved(lambda: self._press(who, citizen, data, pressed))
            except DomainError as error:
                return self.t.get(citizen.locale, error.key)

    async def notice(self, who: Person, key: str) -> None:
        """A one-line answer that changes nothing (an edited message, an unsupported update)."""
        citizen = await self._citizen(who)
        await self._say(who, citizen, key)

    # -- messages

    async def _message(self, incoming: CitizenInput, citizen: Citizen) -> None:
        who = incoming.who
        refused = incoming.refused
        if refused == FILE_TOO_BIG:
            await self._say(who, citizen, "dialog.file_too_big")
            return
        if refused:
            await self._say(who, citizen, "dialog.unsupported")
            return
        if len(incoming.text) > self.limits.max_text:
            await self._say(
                who, citizen, "dialog.too_long", limit=self.limits.max_text, length=len(incoming.text)
            )
            return
        if incoming.reply_to is not None and await self._to_ticket_by_reply(incoming, citizen):
            return
        async with self.outbox.read() as repo:
            state = await repo.conversation(who.platform, who.chat_id)
            waiting = await repo.citizen_ticket_waiting_for_info(citizen.id)
        draft = draft_from_json(state.get("draft")) if state else None
        if draft is None and waiting is not None:
            await self._to_ticket(incoming, citizen, waiting.id)
            return
        if draft is not None and draft.step == "confirm" and incoming.text and not incoming.photos:
            await self._say(who, citizen, "dialog.confirm_hint")
            return
        if draft is None and await self._refuse_over_limit(who, citizen):
            return
        await self._feed(who, citizen, draft or Draft(), incoming, state)

    async def _to_ticket_by_reply(self, incoming: CitizenInput, citizen: Citizen) -> bool:
        assert incoming.reply_to is not None
        async with self.outbox.read() as repo:
            link = await repo.linked_ticket(incoming.who.platform, incoming.who.chat_id, incoming.reply_to)
        if link is None:
            return False
        await self._to_ticket(incoming, citizen, link[0])
        return True

    async def _to_ticket(self, incoming: CitizenInput, citizen: Citizen, ticket_id: int) -> None:
        try:
            skipped = incoming.skipped

            async def tell_skipped(u: Unit) -> None:
                await self._say_skipped(u, incoming.who, citizen, skipped)

            await self.tickets.citizen_message(
                citizen,
                ticket_id,
                incoming.text,
                incoming.photos,
                location=incoming.location,
                also=tell_skipped if skipped else None,
            )
        except TicketClosed as closed:
            await self._say(
                incoming.who, citizen, "dialog.ticket_closed", tag=self.render.tag(int(str(closed)))
            )
        except TicketNotFound:
            await self._say(incoming.who, citizen, "error.ticket_not_found")

    async def _feed(
        self, who: Person, citizen: Citizen, draft: Draft, incoming: CitizenInput, seen: State
    ) -> None:
        notes: list[tuple[str, int]] = []
        only_text = bool(incoming.text) and not incoming.photos and incoming.location is None
        if draft.step == "location" and only_text:
            # Text typed at the location step is the address, not more description.
            draft.address = incoming.text.strip()[:500]
            draft.latitude = draft.longitude = None
            draft.location_done = True
        elif incoming.text:
            draft.text = f"{draft.text}\n{incoming.text}".strip() if draft.text else incoming.text.strip()
            if len(draft.text) > self.limits.max_text:
                draft.text = draft.text[: self.limits.max_text]
                notes.append(("dialog.text_trimmed", self.limits.max_text))
        room = self.limits.max_photos - len(draft.photos)
        if len(incoming.photos) > room:
            notes.append(("dialog.too_many_photos", self.limits.max_photos))
        draft.photos.extend(incoming.photos[: max(room, 0)])
        if incoming.location is not None:
            draft.latitude, draft.longitude = incoming.location.latitude, incoming.location.longitude
            draft.address = None
            draft.location_done = True
        async with self._unit_over(who, seen) as u:
            for note, limit in notes:
                await self._say_in(u, who, citizen, note, limit=limit)
            if incoming.skipped:
                await self._say_skipped(u, who, citizen, incoming.skipped)
            await self._advance(u, who, citizen, draft)

    async def _advance(
        self, u: Unit, who: Person, citizen: Citizen, draft: Draft, pressed: Ref | None = None
    ) -> None:
        """Save the draft and ask for the first thing it still lacks. `pressed`: the prompt whose button
        brought the dialog here, which becomes the next step (the citizen is looking at it, and the chat
        keeps one prompt instead of a trail of them), or is followed by it if it can no longer be edited."""
        locale = citizen.locale
        cancel = [Button(self.t.get(locale, "button.cancel"), "d:cancel")]
        if draft.category_id is None:
            draft.step = "category"
            message = Outgoing(
                self.t.render(locale, "dialog.choose_category"), buttons=self._categories(locale)
            )
        elif not draft.text:
            draft.step = "describe"
            key = "dialog.need_text" if draft.photos else "dialog.describe"
            message = Outgoing(
                self.t.render(locale, key, category=self.render.category(locale, draft.category_id)),
                buttons=[cancel],
            )
        elif not draft.location_done:
            draft.step = "location"
            message = Outgoing(
                self.t.render(locale, "dialog.location"),
                buttons=[[Button(self.t.get(locale, "button.skip"), "d:skip")], cancel],
            )
        else:
            draft.step = "confirm"
            message = Outgoing(
                self._summary(locale, draft),
                buttons=[[Button(self.t.get(locale, "button.confirm"), "d:confirm")], cancel],
            )
        await u.repo.save_conversation(who.platform, who.chat_id, {"draft": draft_to_json(draft)}, u.now)
        await u.send(who.platform, who.chat_id, _in_place_of(pressed, message))

    def _categories(self, locale: str) -> list[list[Button]]:
        buttons = [
            Button(self.render.category(locale, category.id), f"c:{category.id}")
            for category in self.routing.categories
        ]
        rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
        rows.append([Button(self.t.get(locale, "button.cancel"), "d:cancel")])
        return rows

    def _summary(self, locale: str, draft: Draft) -> Html:
        if draft.address:
            place = self.t.render(locale, "ticket.address", address=draft.address)
        elif draft.latitude is not None:
            place = self.t.render(
                locale,
                "dialog.summary_location",
                latitude=f"{draft.latitude:.5f}",
                longitude=f"{draft.longitude:.5f}",
            )
        else:
            place = self.t.render(locale, "ticket.no_place")
        assert draft.category_id is not None
        return self.t.render(
            locale,
            "dialog.summary",
            category=self.render.category(locale, draft.category_id),
            text=draft.text,
            place=place,
            photos=Html("\n" + self.t.plural(locale, "dialog.photos", len(draft.photos)))
            if draft.photos
            else "",
        )

    # -- buttons

    async def _press(self, who: Person, citizen: Citizen, data: str, pressed: Ref) -> str:
        kind, _, value = data.partition(":")
        locale = citizen.locale
        if kind == "m":
            menu = {"new": self._new, "my": self._my, "lang": self._choose_language, "help": self._help}
            if value not in menu:
                return self.t.get(locale, "toast.unknown_button")
            await menu[value](who, citizen)
            return ""
        if kind == "l" and value in SUPPORTED:
            await self._set_language(who, citizen, value)
            return self.t.get(value, "toast.language_set")
        if kind == "f":
            answer, _, number = value.partition(":")
            ticket_id = parse_id(number)
            if answer not in ("yes", "no") or ticket_id is None:
                return self.t.get(locale, "toast.unknown_button")
            key = await self.tickets.answer_feedback(citizen, ticket_id, answer == "yes")
            return self.t.get(locale, key)
        async with self.outbox.read() as repo:
            state = await repo.conversation(who.platform, who.chat_id)
        draft = draft_from_json(state.get("draft")) if state else None
        if kind == "c":
            try:
                self.routing.category(value)
            except KeyError:
                return self.t.get(locale, "toast.unknown_button")
            current = draft is None or draft.step == "category"
            draft = draft or Draft()
            draft.category_id = value
            async with self._unit_over(who, state) as u:
                if current:
                    await self._advance(u, who, citizen, draft, pressed=pressed)
                else:
                    # A category changed from an earlier prompt: the next step goes below the newest.
                    await self._close_keyboard(u, who, pressed)
                    await self._advance(u, who, citizen, draft)
            return self.render.category(locale, value)
        if kind == "d" and value == "cancel":
            await self._cancel(who, citizen, pressed)
            return ""
        if kind != "d" or value not in ("skip", "confirm"):
            return self.t.get(locale, "toast.unknown_button")
        if draft is None:
            return self.t.get(locale, "toast.nothing_to_confirm")
        if value == "skip":
            if draft.step != "location":
                # A skip button from an earlier prompt (pressed again while the bot was away, say):
                # the step is behind, and a second summary would only confuse.
                return self.t.get(locale, "toast.unknown_button")
            draft.location_done = True
            async with self._unit_over(who, state) as u:
                await self._advance(u, who, citizen, draft, pressed=pressed)
            return ""
        if await self._refuse_over_limit(who, citizen):
            return self.t.get(locale, "toast.limit")
        ticket = await self.tickets.open_ticket(
            citizen, who.chat_id, also=lambda u, filed: self._keep_summary(u, who, citizen, filed, pressed)
        )
        if ticket is None:
            return self.t.get(locale, "toast.nothing_to_confirm")
        return self.t.get(locale, "toast.registered")

    async def _keep_summary(self, u: Unit, who: Person, citizen: Citizen, draft: Draft, pressed: Ref) -> None:
        """The confirmed summary stays as the record of what was filed, without its buttons: its text is
        sent again with the edit, as VK takes a keyboard off only so. Made from the draft filed, which
        another instance may have added to since this one read it."""
        summary = Outgoing(self._summary(citizen.locale, draft), edit=pressed)
        await u.send(who.platform, who.chat_id, summary)

    async def _close_keyboard(self, u: Unit, who: Person, pressed: Ref) -> None:
        """Take the buttons off a step that is done, so an old keyboard cannot be pressed twice."""
        await u.send(who.platform, who.chat_id, Outgoing("", edit=pressed, buttons_only=True))

    # -- commands

    async def _start(self, who: Person, citizen: Citizen) -> None:
        async with self.outbox.unit() as u:
            await u.repo.save_conversation(who.platform, who.chat_id, None, u.now)
            await self._menu(u, who, citizen, "dialog.greeting")

    async def _menu(
        self, u: Unit, who: Person, citizen: Citizen, key: str, pressed: Ref | None = None
    ) -> None:
        locale = citizen.locale
        message = Outgoing(self.t.render(locale, key, name=who.name), buttons=self._menu_buttons(locale))
        await u.send(who.platform, who.chat_id, _in_place_of(pressed, message))

    def _menu_buttons(self, locale: str) -> list[list[Button]]:
        return [
            [Button(self.t.get(locale, "button.new_report"), "m:new")],
            [
                Button(self.t.get(locale, "button.my_reports"), "m:my"),
                Button(self.t.get(locale, "button.language"), "m:lang"),
            ],
            [Button(self.t.get(locale, "button.help"), "m:help")],
        ]

    async def _help(self, who: Person, citizen: Citizen) -> None:
        async with self.outbox.unit() as u:
            await self._menu(u, who, citizen, "dialog.help")

    async def _new(self, who: Person, citizen: Citizen) -> None:
        if await self._refuse_over_limit(who, citizen):
            return
        async with self.outbox.unit() as u:
            await self._advance(u, who, citizen, Draft())

    async def _cancel(self, who: Person, citizen: Citizen, pressed: Ref | None = None) -> None:
        async with self.outbox.unit() as u:
            had_draft = await u.repo.conversation(who.platform, who.chat_id) is not None
            await u.repo.save_conversation(who.platform, who.chat_id, None, u.now)
            await self._menu(
                u, who, citizen, "dialog.cancelled" if had_draft else "dialog.nothing_to_cancel", pressed
            )

    async def _my(self, who: Person, citizen: Citizen) -> None:
        tickets = await self.tickets.citizen_tickets(citizen)
        locale = citizen.locale
        if not tickets:
            await self._say(who, citizen, "dialog.no_tickets")
            return
        lines = [self.t.render(locale, "dialog.my_header")]
        lines += [self.render.citizen_summary(locale, ticket) for ticket in tickets]
        lines.append(self.t.render(locale, "dialog.my_footer"))
        async with self.outbox.unit() as u:
            await u.send(who.platform, who.chat_id, Outgoing(Html("\n".join(lines))))

    async def _status(self, who: Person, citizen: Citizen, args: str) -> None:
        match = NUMBER.match(args)
        if match is None:
            await self._say(who, citizen, "dialog.status_usage", prefix=self.routing.ticket_prefix)
            return
        try:
            ticket = await self.tickets.citizen_ticket(citizen, int(match.group(1)))
        except TicketNotFound:
            await self._say(who, citizen, "error.ticket_not_found")
            return
        locale = citizen.locale
        waiting = ticket.status is TicketStatus.need_info
        text = self.t.render(
            locale,
            "dialog.status",
            tag=self.render.tag(ticket),
            category=self.render.category(locale, ticket.category_id),
            agency=self.render.agency(locale, ticket.agency_id),
            status=self.render.status(locale, ticket.status),
            created=self.render.local_time(ticket.created_at),
            deadline=self.render.local_time(ticket.due_at),
            text=ticket.text if len(ticket.text) <= 500 else ticket.text[:499] + "…",
        )
        if waiting:
            text = Html(text + "\n\n" + self.t.render(locale, "dialog.status_waiting"))
        async with self.outbox.unit() as u:
            await u.send(
                who.platform, who.chat_id, Outgoing(text, link_ticket_id=ticket.id, link_role="status")
            )

    async def _choose_language(self, who: Person, citizen: Citizen) -> None:
        buttons = [[Button(self.t.get(code, "language.name"), f"l:{code}") for code in SUPPORTED]]
        async with self.outbox.unit() as u:
            await u.send(
                who.platform,
                who.chat_id,
                Outgoing(self.t.render(citizen.locale, "dialog.choose_language"), buttons=buttons),
            )

    async def _set_language(self, who: Person, citizen: Citizen, locale: str) -> None:
        async with self.outbox.unit() as u:
            await u.repo.set_citizen_locale(citizen.id, locale)
            updated = Citizen(
                citizen.id, citizen.platform, citizen.external_id, locale, citizen.unreachable_at
            )
            await self._menu(u, who, updated, "dialog.language_set")

    # -- helpers

    @asynccontextmanager
    async def _unit_over(self, who: Person, seen: State) -> AsyncIterator[Unit]:
        """A unit that writes a draft made from the conversation state `seen`. Another instance may have
        handled an update of the same chat since that read (the per-chat lock is this process's): then
        nothing is written and `Moved` is raised, for the step to be decided again on the new state."""
        async with self.outbox.unit() as u:
            if await u.repo.conversation(who.platform, who.chat_id) != seen:
                raise Moved
            yield u

    async def _refuse_over_limit(self, who: Person, citizen: Citizen) -> bool:
        """At most `reports_per_hour` new reports per citizen: a flood is answered, not filed."""
        limit = self.limits.reports_per_hour
        if not limit:
            return False
        async with self.outbox.read() as repo:
            recent = await repo.tickets_filed_since(citizen.id, self.outbox.clock.now() - timedelta(hours=1))
        if recent < limit:
            return False
        await self._say(who, citizen, "dialog.too_many_reports", limit=limit)
        return True

    async def _citizen(self, who: Person) -> Citizen:
        async with self.outbox.read() as repo:
            citizen = await repo.citizen_by_external(who.platform, who.user_id)
        if citizen is not None:
            if citizen.unreachable_at is not None:
                # They write to us again, so we may write to them again.
                await self.tickets.citizen_reachable(citizen.platform, citizen.external_id)
            return citizen
        async with self.outbox.unit() as u:
            return await u.repo.ensure_citizen(
                who.platform, who.user_id, who.name, self.t.normalise(who.language), u.now
            )

    async def _say(self, who: Person, citizen: Citizen, key: str, **params: object) -> None:
        async with self.outbox.unit() as u:
            await self._say_in(u, who, citizen, key, **params)

    async def _say_in(self, u: Unit, who: Person, citizen: Citizen, key: str, **params: object) -> None:
        await u.send(who.platform, who.chat_id, Outgoing(self.t.render(citizen.locale, key, **params)))

    def _part_name(self, locale: str, kind: str) -> str:
        if kind == FILE_TOO_BIG:
            return self.t.get(locale, "dialog.part_big_file")
        if kind == "video":
            return self.t.get(locale, "dialog.part_video")
        if kind == "audio":
            return self.t.get(locale, "dialog.part_audio")
        return self.t.get(locale, "dialog.part_other")

    async def _say_skipped(self, u: Unit, who: Person, citizen: Citizen, kinds: list[str]) -> None:
        """Tell the citizen which kinds of the parts they sent were not taken (the rest was)."""
        names = [self._part_name(citizen.locale, kind) for kind in kinds]
        await self._say_in(u, who, citizen, "dialog.skipped_parts", items=", ".join(dict.fromkeys(names)))


class Moved(Exception):
    """The conversation changed between the read a step was decided on and its write."""


# How often a step is decided again when the conversation keeps changing under it.
MOVED_RETRIES = 5

State = dict[str, Any] | None
T = TypeVar("T")


async def _again_if_moved(step: Callable[[], Awaitable[T]]) -> T:
    for _ in range(MOVED_RETRIES - 1):
        try:
            return await step()
        except Moved:
            log.info("a citizen's conversation changed while a step was decided; deciding it again")
    return await step()


def _in_place_of(pressed: Ref | None, message: Outgoing) -> Outgoing:
    """The message as the prompt the citizen pressed, edited (sent anew if it can no longer be)."""
    return message if pressed is None else replace(message, edit=pressed, or_send=True)
