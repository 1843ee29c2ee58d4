"""The citizen's dialog without a platform: limits on what one person may file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from bot.clock import ManualClock
from bot.config import Routing
from bot.delivery.outbox import Outbox, Unit
from bot.dialog import CitizenDialog, CitizenInput, Limits, Person
from bot.domain import Attachment, EventKind, Location, MediaKind, Platform, TicketStatus
from bot.i18n import Translator
from bot.messages import Ref
from bot.tickets import TicketService
from storage.db import Database
from storage.schema import conversations, outbox, tickets

WHO = Person(Platform.vk, 77, 77, "Ира", "ru")


async def file(dialog: CitizenDialog, text: str) -> None:
    await dialog.message(CitizenInput(who=WHO, text=text))
    await dialog.press(WHO, "c:potholes", Ref(message_id=1))
    await dialog.press(WHO, "d:skip", Ref(message_id=2))
    await dialog.press(WHO, "d:confirm", Ref(message_id=3))


async def test_a_citizen_may_file_only_so_many_reports_an_hour(
    db: Database, routing: Routing, clock: ManualClock
) -> None:
    translator = Translator()
    box = Outbox(db, clock)
    dialog = CitizenDialog(
        box, TicketService(box, routing, translator), routing, translator, Limits(reports_per_hour=2)
    )
    await file(dialog, "первая")
    await file(dialog, "вторая")
    await file(dialog, "третья")
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(tickets)) == 2
        last = await conn.scalar(sa.select(outbox.c.payload).order_by(outbox.c.id.desc()).limit(1))
    assert last["text"] == translator.render("ru", "dialog.too_many_reports", limit=2)
    clock.advance(timedelta(hours=1, minutes=1))
    await file(dialog, "четвёртая")
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(tickets)) == 3


async def test_a_skip_pressed_again_after_the_summary_changes_nothing(
    db: Database, routing: Routing, clock: ManualClock
) -> None:
    translator = Translator()
    box = Outbox(db, clock)
    dialog = CitizenDialog(box, TicketService(box, routing, translator), routing, translator, Limits())
    await dialog.message(CitizenInput(who=WHO, text="яма"))
    await dialog.press(WHO, "c:potholes", Ref(message_id=1))
    assert await dialog.press(WHO, "d:skip", Ref(message_id=2)) == ""
    async with db.read() as conn:
        queued = await conn.scalar(sa.select(sa.func.count()).select_from(outbox))
    # The same skip button again (say, pressed while the bot was restarting): no second summary.
    unknown = translator.get("ru", "toast.unknown_button")
    assert await dialog.press(WHO, "d:skip", Ref(message_id=2)) == unknown
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(outbox)) == queued
    assert await dialog.press(WHO, "d:confirm", Ref(message_id=3)) == translator.get("ru", "toast.registered")


async def test_a_location_answering_a_question_reaches_the_agency_on_any_platform(
    db: Database, routing: Routing, clock: ManualClock
) -> None:
    """A VK citizen's answer that is only a location: shown to the agency as a map link, kept in the
    event, and the place of a report filed without one."""
    translator = Translator()
    box = Outbox(db, clock)
    service = TicketService(box, routing, translator)
    dialog = CitizenDialog(box, service, routing, translator, Limits())
    await file(dialog, "яма")
    async with box.unit() as u:
        await u.repo.update_ticket(1, status=TicketStatus.need_info.value, waiting_since=u.now)
    await dialog.message(CitizenInput(who=WHO, location=Location(55.751244, 37.618423)))
    async with db.read() as conn:
        texts = [
            p.get("text", "") for p in await conn.scalars(sa.select(outbox.c.payload).order_by(outbox.c.id))
        ]
    link = '<a href="https://maps.google.com/?q=55.751244,37.618423">55.75124, 37.61842</a>'
    assert any(link in text and "✉️" in text and "—" not in text for text in texts)
    async with box.read() as repo:
        ticket = await repo.ticket(1)
        events = await repo.events(1)
    assert ticket.status is TicketStatus.in_progress
    assert (ticket.latitude, ticket.longitude) == (55.751244, 37.618423)
    assert events[-1].kind is EventKind.citizen_message
    assert events[-1].payload["latitude"] == 55.751244 and events[-1].payload["longitude"] == 37.618423


async def test_two_instances_feeding_one_draft_at_once_lose_nothing(
    db: Database, routing: Routing, clock: ManualClock
) -> None:
    """Two updates of one chat handled by two instances at once (webhooks behind a proxy): the one that
    read the draft first writes last, and must not write back the draft it read."""
    translator = Translator()

    def instance() -> CitizenDialog:
        box = Outbox(db, clock)
        return CitizenDialog(box, TicketService(box, routing, translator), routing, translator, Limits())

    first, second = instance(), instance()
    await first.press(WHO, "c:potholes", Ref(message_id=1))  # the draft waits for a description
    read, go_on = asyncio.Event(), asyncio.Event()
    writes = first.outbox.unit

    @asynccontextmanager
    async def held_once() -> AsyncIterator[Unit]:
        """The first instance's first write waits until the second instance has written."""
        if not read.is_set():
            read.set()
            await go_on.wait()
        async with writes() as u:
            yield u

    first.outbox.unit = held_once  # type: ignore[method-assign]
    text = asyncio.create_task(first.message(CitizenInput(who=WHO, text="Яма у подъезда")))
    await asyncio.wait_for(read.wait(), 5)
    photo = Attachment(kind=MediaKind.photo, platform=Platform.vk, file_id="photo1_2", file_unique_id="1_2")
    await second.message(CitizenInput(who=WHO, photos=[photo]))
    go_on.set()
    await asyncio.wait_for(text, 5)

    async with db.read() as conn:
        state = await conn.scalar(sa.select(conversations.c.state))
    draft = state["draft"]
    assert draft["text"] == "Яма у подъезда" and [p["file_id"] for p in draft["photos"]] == ["photo1_2"]


async def test_the_summary_kept_after_confirm_shows_what_was_filed(
    db: Database, routing: Routing, clock: ManualClock
) -> None:
    """One instance takes the confirm, another a photo sent just before it: the ticket has the photo, and
    so has the summary kept in the chat as its record."""
    translator = Translator()

    def instance() -> CitizenDialog:
        box = Outbox(db, clock)
        return CitizenDialog(box, TicketService(box, routing, translator), routing, translator, Limits())

    first, second = instance(), instance()
    await first.message(CitizenInput(who=WHO, text="Яма у подъезда"))
    await first.press(WHO, "c:potholes", Ref(message_id=1))
    await first.press(WHO, "d:skip", Ref(message_id=2))  # the summary, with its confirm button
    read, go_on = asyncio.Event(), asyncio.Event()
    files = first.tickets.open_ticket

    async def held(*args: Any, **kwargs: Any) -> Any:
        """The first instance has read the draft and decided to file it; it files once the second
        instance has taken the photo."""
        read.set()
        await go_on.wait()
        return await files(*args, **kwargs)

    first.tickets.open_ticket = held  # type: ignore[method-assign]
    confirm = asyncio.create_task(first.press(WHO, "d:confirm", Ref(message_id=3)))
    await asyncio.wait_for(read.wait(), 5)
    photo = Attachment(kind=MediaKind.photo, platform=Platform.vk, file_id="photo1_2", file_unique_id="1_2")
    await second.message(CitizenInput(who=WHO, photos=[photo]))
    go_on.set()
    assert await asyncio.wait_for(confirm, 5) == translator.get("ru", "toast.registered")

    async with db.read() as conn:
        payloads = list(await conn.scalars(sa.select(outbox.c.payload).order_by(outbox.c.id)))
    (kept,) = [p for p in payloads if (p.get("edit") or {}).get("message_id") == 3]
    assert translator.plural("ru", "dialog.photos", 1) in kept["text"]
    async with first.outbox.read() as repo:
        assert len(await repo.media(1, source="citizen")) == 1
