"""Texts and buttons about tickets, in the reader's language: cards, notices, lists, timelines."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

from bot.config import Locale, Routing
from bot.domain import (
    ALLOWED_ACTIONS,
    Action,
    EventKind,
    Location,
    Ticket,
    TicketEvent,
    TicketStatus,
)
from bot.i18n import Html, Translator
from bot.messages import Button, back_to_card, ticket_action, transfer_target

ACTION_ORDER = (Action.take, Action.need_info, Action.resolve, Action.reject, Action.transfer)


class Renderer:
    def __init__(self, translator: Translator, routing: Routing) -> None:
        self.t = translator
        self.routing = routing

    def tag(self, ticket: Ticket | int) -> Html:
        """The one searchable token for a ticket, the same in every language: a tappable hashtag."""
        number = ticket if isinstance(ticket, int) else ticket.number
        return Html(f"#{self.routing.ticket_prefix}{number}")

    def local_time(self, when: datetime) -> str:
        return when.astimezone(self.routing.timezone).strftime("%d.%m.%Y %H:%M")

    def duration(self, locale: str, delta: timedelta) -> Html:
        """A length of time in its two largest units, e.g. "2 д 5 ч", rounded down to minutes: catalogue
        text, already HTML, so not escaped again where it goes."""
        minutes = max(int(delta.total_seconds() // 60), 0)
        days, rest = divmod(minutes, 24 * 60)
        hours, minutes = divmod(rest, 60)
        units = (("duration.days", days), ("duration.hours", hours), ("duration.minutes", minutes))
        parts = [self.t.plural(locale, key, amount) for key, amount in units if amount][:2]
        return Html(" ".join(parts) or self.t.plural(locale, "duration.minutes", 0))

    def status(self, locale: str, status: TicketStatus) -> str:
        return self.t.get(locale, f"status.{status.value}")

    def category(self, locale: str, category_id: str) -> str:
        try:
            category = self.routing.category(category_id)
        except KeyError:
            return category_id
        title = category.title_in(cast(Locale, self.t.normalise(locale)))
        return f"{category.emoji} {title}".strip()

    def agency(self, locale: str, agency_id: str) -> str:
        try:
            return self.routing.agency(agency_id).title_in(cast(Locale, self.t.normalise(locale)))
        except KeyError:
            return agency_id

    def place(self, locale: str, ticket: Ticket) -> Html:
        if ticket.address:
            return self.t.render(locale, "ticket.address", address=ticket.address)
        if ticket.latitude is not None and ticket.longitude is not None:
            return self.location(locale, Location(ticket.latitude, ticket.longitude))
        return self.t.render(locale, "ticket.no_place")

    def location(self, locale: str, location: Location) -> Html:
        """A point as the card shows a ticket's place: the coordinates, as a map link."""
        latitude, longitude = location.latitude, location.longitude
        url = f"https://maps.google.com/?q={latitude:.6f},{longitude:.6f}"
        return self.t.render(
            locale, "ticket.location", link=Html(f'<a href="{url}">{latitude:.5f}, {longitude:.5f}</a>')
        )

    def citizen_words(self, locale: str, text: str, location: Location | None = None) -> Html:
        """What a citizen added to a ticket, for the agency: their text (escaped) and the location they
        sent with it, a line each; "—" if neither (photos alone)."""
        lines = [html.escape(text, quote=False)] if text else []
        if location is not None:
            lines.append(self.location(locale, location))
        return Html("\n".join(lines) or "—")

    def card(
        self, locale: str, ticket: Ticket, citizen_id: int, photos: int, transferred_to: str | None = None
    ) -> Html:
        lines: list[str] = [
            self.t.render(
                locale,
                "card.header",
                tag=self.tag(ticket),
                category=self.category(locale, ticket.category_id),
            ),
            self.t.render(locale, "card.status", status=self.status(locale, ticket.status)),
            self.t.render(locale, "card.deadline", deadline=self.local_time(ticket.due_at)),
            self.t.render(locale, "card.citizen", citizen=citizen_id),
            self.place(locale, ticket),
        ]
        if photos:
            lines.append(self.t.plural(locale, "card.photos", photos))
        lines += ["", self.t.render(locale, "card.text", text=ticket.text)]
        if transferred_to is not None:
            lines += ["", self.t.render(locale, "card.transferred", agency=transferred_to)]
        return Html("\n".join(lines))

    def card_buttons(self, locale: str, ticket: Ticket) -> list[list[Button]]:
        allowed = ALLOWED_ACTIONS[ticket.status]
        buttons = [
            Button(
                self.t.get(locale, f"button.{action.name}"), ticket_action(action, ticket.id, ticket.status)
            )
            for action in ACTION_ORDER
            if action in allowed
        ]
        return [buttons[i : i + 2] for i in range(0, len(buttons), 2)]

    def transfer_buttons(self, locale: str, ticket: Ticket) -> list[list[Button]]:
        rows = [
            [
                Button(
                    agency.title_in(cast(Locale, self.t.normalise(locale))),
                    transfer_target(agency.id, ticket.id, ticket.agency_id),
                )
            ]
            for agency in self.routing.agencies
            if agency.id != ticket.agency_id
        ]
        rows.append([Button(self.t.get(locale, "button.back"), back_to_card(ticket.id))])
        return rows

    def citizen_summary(self, locale: str, ticket: Ticket) -> Html:
        return self.t.render(
            locale,
            "citizen.ticket_line",
            tag=self.tag(ticket),
            category=self.category(locale, ticket.category_id),
            status=self.status(locale, ticket.status),
            deadline=self.local_time(ticket.due_at),
        )

    def timeline(self, locale: str, ticket: Ticket, events: Sequence[TicketEvent]) -> Html:
        lines = [self.t.render(locale, "history.header", tag=self.tag(ticket))]
        for event in events:
            detail = str(event.payload.get("text") or event.payload.get("reason") or "")
            if event.kind is EventKind.transferred:
                detail = self.agency(locale, str(event.payload.get("to", "")))
            if len(detail) > 200:
                detail = detail[:199] + "…"
            latitude, longitude = event.payload.get("latitude"), event.payload.get("longitude")
            if isinstance(latitude, float | int) and isinstance(longitude, float | int):
                # A location the citizen sent with a message: its coordinates, after the words.
                detail = f"{detail} 📍 {latitude:.5f}, {longitude:.5f}".strip()
            lines.append(
                self.t.render(
                    locale,
                    "history.line_detail" if detail else "history.line",
                    time=self.local_time(event.created_at),
                    event=self.t.get(locale, f"event.{event.kind.value}"),
                    actor=self.actor(locale, event),
                    detail=detail,
                )
            )
        return Html("\n".join(lines))

    def actor(self, locale: str, event: TicketEvent) -> str:
        kind, _, _ = event.actor.partition(":")
        if kind == "staff":
            return str(event.payload.get("by") or self.t.get(locale, "actor.staff"))
        return self.t.get(locale, f"actor.{kind}" if kind in ("citizen", "system") else "actor.staff")
