"""What the outbox and the conversations table store: every field of a message and a draft comes back."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from bot.domain import Attachment, Draft, MediaKind, Platform
from bot.messages import Button, Outgoing, Ref, draft_from_json, draft_to_json

PLAN = Attachment(MediaKind.document, Platform.vk, "doc1_2", "u-2", "https://vk.example/doc", "plan.pdf")
PHOTO = Attachment(MediaKind.photo, Platform.telegram, "AgAD", "u-1")


def stored(data: dict[str, Any]) -> dict[str, Any]:
    """As it comes back from a JSON column."""
    return dict(json.loads(json.dumps(data)))


def test_a_message_with_every_field_set_comes_back_from_its_outbox_row() -> None:
    message = Outgoing(
        text="<b>#T7</b> &lt;ok&gt;",
        photos=[PHOTO, PLAN],
        buttons=[[Button("Да", "f:yes:7"), Button("Нет", "f:no:7")], [Button("Меню", "m:new")]],
        reply_to=Ref(ticket_id=7, role="card"),
        link_ticket_id=7,
        link_role="card",
        photo_caption="2 фото",
        force_reply=True,
        edit=Ref(message_id=55, in_conversation=True),
        buttons_only=True,
        or_send=True,
    )
    blank = Outgoing(text="")
    assert [f.name for f in fields(Outgoing) if getattr(message, f.name) == getattr(blank, f.name)] == []
    assert Outgoing.from_json(stored(message.to_json())) == message


def test_a_bare_message_comes_back_bare() -> None:
    message = Outgoing(text="Готово")
    assert Outgoing.from_json(stored(message.to_json())) == message


def test_a_draft_with_every_field_set_comes_back_from_its_conversation_row() -> None:
    draft = Draft(
        step="confirm",
        category_id="potholes",
        text="Яма у дома 5",
        photos=[PHOTO],
        latitude=55.75,
        longitude=37.61,
        address="Ленина, 5",
        location_done=True,
    )
    blank = Draft()
    assert [f.name for f in fields(Draft) if getattr(draft, f.name) == getattr(blank, f.name)] == []
    assert draft_from_json(stored(draft_to_json(draft))) == draft
