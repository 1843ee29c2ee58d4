"""Value types of the ticket world and the rules of a ticket's life.

Nothing here knows about Telegram, VK or the database: it is what the service and the tests reason with.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime


class Platform(enum.StrEnum):
    telegram = "tg"
    vk = "vk"


class TicketStatus(enum.StrEnum):
    new = "new"
    in_progress = "in_progress"
    need_info = "need_info"
    resolved = "resolved"
    closed = "closed"
    rejected = "rejected"

    @property
    def is_open(self) -> bool:
        return self not in (TicketStatus.closed, TicketStatus.rejected)


class Action(enum.StrEnum):
    """What staff can do to a ticket; the values travel in button data, so they stay short."""

    take = "take"
    need_info = "ask"
    resolve = "res"
    reject = "rej"
    transfer = "tr"


# Which actions each status allows. Transfer is allowed from any open status except `resolved`,
# where the agency has already given its answer.
ALLOWED_ACTIONS: dict[TicketStatus, frozenset[Action]] = {
    TicketStatus.new: frozenset(
        {Action.take, Action.need_info, Action.resolve, Action.reject, Action.transfer}
    ),
    TicketStatus.in_progress: frozenset({Action.need_info, Action.resolve, Action.reject, Action.transfer}),
    TicketStatus.need_info: frozenset({Action.resolve, Action.reject, Action.transfer}),
    TicketStatus.resolved: frozenset(),
    TicketStatus.closed: frozenset(),
    TicketStatus.rejected: frozenset(),
}


class EventKind(enum.StrEnum):
    created = "created"
    taken = "taken"
    staff_reply = "staff_reply"
    internal_note = "note"
    info_requested = "info_requested"
    citizen_message = "citizen_message"
    resolved = "resolved"
    confirmed = "confirmed"
    reopened = "reopened"
    rejected = "rejected"
    transferred = "transferred"
    reminded = "reminded"
    overdue = "overdue"
    auto_closed = "auto_closed"
    closed_no_answer = "closed_no_answer"


class MediaKind(enum.StrEnum):
    photo = "photo"
    document = "document"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file as the platform it came from knows it; `file_id` is enough to send it again there."""

    kind: MediaKind
    platform: Platform
    file_id: str
    file_unique_id: str = ""
    # Where the file can be fetched from another platform (VK photo URL), when known.
    url: str = ""
    # A document's file name, which it keeps when it crosses to another platform.
    name: str = ""


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Citizen:
    id: int
    platform: Platform
    external_id: int
    locale: str
    unreachable_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Ticket:
    id: int
    number: int
    citizen_id: int
    category_id: str
    agency_id: str
    status: TicketStatus
    text: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime
    latitude: float | None = None
    longitude: float | None = None
    address: str | None = None
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    rating: int | None = None
    remind_at: datetime | None = None
    next_alert_at: datetime | None = None
    overdue_level: int = 0
    waiting_since: datetime | None = None
    next_update_at: datetime | None = None

    @property
    def location(self) -> Location | None:
        if self.latitude is None or self.longitude is None:
            return None
        return Location(self.latitude, self.longitude)


@dataclass(frozen=True, slots=True)
class TicketEvent:
    id: int
    ticket_id: int
    kind: EventKind
    actor: str
    payload: dict[str, object]
    created_at: datetime


@dataclass(slots=True)
class Draft:
    """A report being written by a citizen; kept in the database between messages."""

    step: str = ""
    category_id: str | None = None
    text: str = ""
    photos: list[Attachment] = field(default_factory=list)
    latitude: float | None = None
    longitude: float | None = None
    address: str | None = None
    location_done: bool = False


class DomainError(Exception):
    """A request that the rules refuse; `key` names its localised explanation in `locales/`."""

    key: str = "error.generic"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.key)


class TicketNotFound(DomainError):
    key = "error.ticket_not_found"


class NotAllowedHere(DomainError):
    """An action from a chat that has no authority over the ticket."""

    key = "error.not_allowed_here"


class InvalidTransition(DomainError):
    key = "error.invalid_transition"


class TicketClosed(DomainError):
    key = "error.ticket_closed"


class UnknownCommand(DomainError):
    """A staff reply that starts with a command the bot does not have (a typo, most often): refused
    rather than passed to the citizen word for word."""

    key = "staff.unknown_command"


def check_action(status: TicketStatus, action: Action) -> None:
    if action not in ALLOWED_ACTIONS[status]:
        raise InvalidTransition(f"{action} not allowed from {status}")


_ROW_ID = re.compile(r"[0-9]{1,18}")


def parse_id(text: str) -> int | None:
    """A row's id as it comes from outside (a button's data, a command's argument): plain digits that
    fit the database's 64-bit integers, or None."""
    return int(text) if _ROW_ID.fullmatch(text) else None
