"""What the bot says, platform-neutral: a message, its buttons, and where it goes in a thread.

Outbox rows carry these as JSON; each platform's messenger turns them into API calls.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bot.domain import Action, Attachment, Draft, MediaKind, Platform, TicketStatus


@dataclass(frozen=True, slots=True)
class Button:
    text: str
    data: str


@dataclass(frozen=True, slots=True)
class Ref:
    """A message in a chat, named by the ticket and role it was linked with, or by its id."""

    ticket_id: int | None = None
    role: str | None = None
    message_id: int | None = None
    # `message_id` is the conversation's own number for the message (VK's conversation_message_id,
    # which is how VK's button events name it), not the id sending it returned.
    in_conversation: bool = False


@dataclass(slots=True)
class Outgoing:
    text: str
    photos: list[Attachment] = field(default_factory=list)
    buttons: list[list[Button]] = field(default_factory=list)
    reply_to: Ref | None = None
    # Recorded in message_links after sending, so a reply to this message finds the ticket.
    link_ticket_id: int | None = None
    link_role: str = "message"
    # Sent with the photos when they go as a separate album before the text.
    photo_caption: str = ""
    # Ask the client to open a reply to this message (staff prompts).
    force_reply: bool = False
    # Edit this message in place instead of sending a new one; `buttons_only` keeps its text. An edit's
    # `photos`, with its buttons, say how the message went: whether its text is the photos' caption.
    edit: Ref | None = None
    buttons_only: bool = False
    # An edit the platform refuses (the message is gone, or too old to edit) goes as a new message.
    or_send: bool = False

    def to_json(self) -> dict[str, Any]:
        # Field by field rather than `dataclasses.asdict`, which deep-copies every value on the way: an
        # outbox row is written for each message the bot sends.
        data = {name: getattr(self, name) for name in _OUTGOING_FIELDS}
        data["photos"] = [attachment_to_json(p) for p in self.photos]
        data["buttons"] = [[{"text": b.text, "data": b.data} for b in row] for row in self.buttons]
        data["reply_to"] = _ref_to_json(self.reply_to)
        data["edit"] = _ref_to_json(self.edit)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outgoing:
        return cls(
            text=data["text"],
            photos=[attachment_from_json(p) for p in data.get("photos", [])],
            buttons=[[Button(**b) for b in row] for row in data.get("buttons", [])],
            reply_to=Ref(**data["reply_to"]) if data.get("reply_to") else None,
            link_ticket_id=data.get("link_ticket_id"),
            link_role=data.get("link_role", "message"),
            photo_caption=data.get("photo_caption", ""),
            force_reply=data.get("force_reply", False),
            edit=Ref(**data["edit"]) if data.get("edit") else None,
            buttons_only=data.get("buttons_only", False),
            or_send=data.get("or_send", False),
        )

    def as_new(self) -> Outgoing:
        """This edit as a message of its own."""
        return replace(self, edit=None, buttons_only=False, or_send=False)


_OUTGOING_FIELDS = tuple(f.name for f in fields(Outgoing))
_REF_FIELDS = tuple(f.name for f in fields(Ref))


def _ref_to_json(ref: Ref | None) -> dict[str, Any] | None:
    return None if ref is None else {name: getattr(ref, name) for name in _REF_FIELDS}


def attachment_to_json(a: Attachment) -> dict[str, str]:
    data = {
        "kind": a.kind.value,
        "platform": a.platform.value,
        "file_id": a.file_id,
        "file_unique_id": a.file_unique_id,
        "url": a.url,
    }
    if a.name:
        data["name"] = a.name
    return data


def attachment_from_json(d: dict[str, str]) -> Attachment:
    return Attachment(
        kind=MediaKind(d["kind"]),
        platform=Platform(d["platform"]),
        file_id=d["file_id"],
        file_unique_id=d.get("file_unique_id", ""),
        url=d.get("url", ""),
        name=d.get("name", ""),
    )


def draft_to_json(draft: Draft) -> dict[str, Any]:
    data = {name: getattr(draft, name) for name in _DRAFT_FIELDS}
    data["photos"] = [attachment_to_json(p) for p in draft.photos]
    return data


_DRAFT_FIELDS = tuple(f.name for f in fields(Draft))


def draft_from_json(data: object) -> Draft | None:
    if not isinstance(data, dict):
        return None
    values = dict(data)
    values["photos"] = [attachment_from_json(p) for p in values.get("photos", [])]
    known = Draft.__dataclass_fields__.keys()
    return Draft(**{k: v for k, v in values.items() if k in known})


# Button data: short colon-separated strings, well under Telegram's 64 bytes. The first field says
# what the button is; everything after it is re-checked against the database, never trusted.
#   t:<action>:<ticket_id>:<status>  staff action on a card showing <status>
#   x:<agency_id>:<ticket_id>:<mark> staff chose the agency to transfer to, from the list shown while
#                                    the ticket was with the agency of <mark> (see agency_mark)
#   b:<ticket_id>                    staff went back from the transfer list to the card's buttons
#   c:<category_id>                  citizen chose a category
#   f:<yes|no>:<ticket_id>           citizen answers "Solved?"
#   m:<new|my|lang|help>             citizen menu
#   d:<confirm|cancel|skip|edit>     citizen draft step
#   l:<ru|en>                        citizen picks a language


def ticket_action(action: Action, ticket_id: int, status: TicketStatus) -> str:
    return f"t:{action.value}:{ticket_id}:{status.value}"


def transfer_target(agency_id: str, ticket_id: int, shown_for: str) -> str:
    return f"x:{agency_id}:{ticket_id}:{agency_mark(shown_for)}"


def agency_mark(agency_id: str) -> str:
    """Six hex digits that tell a region's agencies apart in a button, where two agency ids would not fit
    Telegram's 64 bytes: a transfer chosen from a list shown for another agency is a stale one."""
    return hashlib.blake2b(agency_id.encode(), digest_size=3).hexdigest()


def feedback(answer: str, ticket_id: int) -> str:
    return f"f:{answer}:{ticket_id}"


def back_to_card(ticket_id: int) -> str:
    return f"b:{ticket_id}"
