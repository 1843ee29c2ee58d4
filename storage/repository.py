"""Queries, grouped by table, over one connection (usually one transaction)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.domain import (
    Attachment,
    Citizen,
    EventKind,
    MediaKind,
    Platform,
    Ticket,
    TicketEvent,
    TicketStatus,
)
from storage.schema import (
    citizens,
    conversations,
    cursors,
    inbox,
    message_links,
    outbox,
    processed_updates,
    ticket_events,
    ticket_media,
    tickets,
)
from storage.sqlite_driver import statements

# The worker records a permanent failure as "<reason>: <detail>"; these reasons mean the chat itself is
# out of reach (as opposed to one message being wrong).
UNREACHABLE_REASONS = ("blocked", "deactivated", "chat_not_found")
# A failure recorded with one of those reasons.
_FAILED_UNREACHABLE = sa.or_(
    *(outbox.c.last_error.startswith(f"{reason}:") for reason in UNREACHABLE_REASONS)
)
# What the worker records for an edit whose message was never sent (so there is nothing to edit).
EDIT_TARGET_NEVER_SENT = "the message to edit was never sent"


# The statements every update runs, built once and run with their values as parameters: building a
# statement (and its cache key) costs SQLAlchemy several times what SQLite takes to run it.
_OUTBOX_SENT = (
    outbox.update()
    .where(outbox.c.id == sa.bindparam("row_id"))
    .values(status="sent", sent_at=sa.bindparam("at"), attempts=outbox.c.attempts + 1, last_error=None)
)
_DROP_INBOX = inbox.delete().where(inbox.c.id == sa.bindparam("row_id"))
_CITIZEN_BY_EXTERNAL = sa.select(citizens).where(
    citizens.c.platform == sa.bindparam("in_platform"), citizens.c.external_id == sa.bindparam("external")
)
_CONVERSATION = sa.select(conversations.c.state).where(
    conversations.c.platform == sa.bindparam("in_platform"), conversations.c.chat_id == sa.bindparam("chat")
)
_TICKET = sa.select(tickets).where(tickets.c.id == sa.bindparam("ticket"))
_NUMBER_TICKET = (
    tickets.update().where(tickets.c.id == sa.bindparam("ticket")).values(number=sa.bindparam("number"))
)
_WAITING_FOR_INFO = (
    sa.select(tickets)
    .where(tickets.c.citizen_id == sa.bindparam("citizen"), tickets.c.status == TicketStatus.need_info.value)
    .order_by(tickets.c.updated_at.desc())
    .limit(1)
)
# A batch of updates, looked up by key (the list of keys is put into the SQL when it runs).
_INBOX_IDS = sa.select(inbox.c.id, inbox.c.key).where(
    inbox.c.platform == sa.bindparam("in_platform"), inbox.c.key.in_(sa.bindparam("keys", expanding=True))
)
_PROCESSED_AMONG = sa.select(processed_updates.c.key).where(
    processed_updates.c.platform == sa.bindparam("in_platform"),
    processed_updates.c.key.in_(sa.bindparam("keys", expanding=True)),
)
# Those whose SQL depends on the database (INSERT ... ON CONFLICT): (dialect, name) → statement.
_PER_DIALECT: dict[tuple[str, str], Any] = {}


class Repository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = statements(conn)

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT with this database's ON CONFLICT clauses."""
        return (postgresql.insert if self.conn.dialect.name == "postgresql" else sqlite.insert)(table)

    def _per_dialect(self, name: str, build: Callable[[], Any]) -> Any:
        """The statement called `name` for this database, built the first time it is asked for."""
        key = (self.conn.dialect.name, name)
        if (statement := _PER_DIALECT.get(key)) is None:
            statement = _PER_DIALECT[key] = build()
        return statement

    def _ignoring_conflict(self, table: sa.Table, index_elements: Sequence[str]) -> Any:
        """INSERT INTO table ... ON CONFLICT (index_elements) DO NOTHING."""
        return self._per_dialect(
            f"{table.name}: ignore conflict on {','.join(index_elements)}",
            lambda: self._insert(table).on_conflict_do_nothing(index_elements=list(index_elements)),
        )

    async def _insert_ignoring_conflict(
        self, table: sa.Table, values: dict[str, Any], index_elements: Sequence[str]
    ) -> bool:
        """Insert unless a row with the same unique key exists; True when a row was written."""
        result = await self.conn.execute(self._ignoring_conflict(table, index_elements), values)
        return bool(result.rowcount)

    # citizens

    async def citizen_by_external(self, platform: Platform, external_id: int) -> Citizen | None:
        row = (
            await self.conn.execute(
                _CITIZEN_BY_EXTERNAL, {"in_platform": platform.value, "external": external_id}
            )
        ).first()
        return _citizen(row) if row else None

    async def citizen(self, citizen_id: int) -> Citizen:
        row = (await self.conn.execute(sa.select(citizens).where(citizens.c.id == citizen_id))).one()
        return _citizen(row)

    async def ensure_citizen(
        self, platform: Platform, external_id: int, display_name: str, locale: str, now: datetime
    ) -> Citizen:
        await self._insert_ignoring_conflict(
            citizens,
            {
                "platform": platform.value,
                "external_id": external_id,
                "display_name": display_name[:256],
                "locale": locale,
                "created_at": now,
            },
            ["platform", "external_id"],
        )
        citizen = await self.citizen_by_external(platform, external_id)
        assert citizen is not None
        return citizen

    async def set_citizen_locale(self, citizen_id: int, locale: str) -> None:
        await self.conn.execute(citizens.update().where(citizens.c.id == citizen_id).values(locale=locale))

    async def set_citizen_unreachable(self, citizen_id: int, when: datetime | None) -> None:
        await self.conn.execute(
            citizens.update().where(citizens.c.id == citizen_id).values(unreachable_at=when)
        )

    # tickets

    async def insert_ticket(self, **values: Any) -> Ticket:
        if self.conn.dialect.name == "postgresql":
            # The id is drawn from the table's sequence first, so the row is written with its final
            # number: no placeholder number that concurrent transactions would contend for.
            sequence = sa.func.pg_get_serial_sequence(tickets.name, tickets.c.id.name)
            ticket_id = int((await self.conn.execute(sa.select(sa.func.nextval(sequence)))).scalar_one())
            await self.conn.execute(tickets.insert().values(id=ticket_id, number=ticket_id, **values))
            return await self.ticket(ticket_id)
        result = await self.conn.execute(tickets.insert(), {"number": 0, **values})
        primary_key = result.inserted_primary_key
        assert primary_key is not None
        ticket_id = primary_key[0]
        # The public number is the row id for now; a separate column leaves room for per-region series.
        await self.conn.execute(_NUMBER_TICKET, {"ticket": ticket_id, "number": ticket_id})
        return await self.ticket(ticket_id)

    async def ticket(self, ticket_id: int) -> Ticket:
        row = (await self.conn.execute(_TICKET, {"ticket": ticket_id})).first()
        if row is None:
            raise LookupError(ticket_id)
        return _ticket(row)

    async def ticket_by_number(self, number: int) -> Ticket | None:
        row = (await self.conn.execute(sa.select(tickets).where(tickets.c.number == number))).first()
        return _ticket(row) if row else None

    async def update_ticket(self, ticket_id: int, **values: Any) -> Ticket:
        await self.conn.execute(tickets.update().where(tickets.c.id == ticket_id).values(**values))
        return await self.ticket(ticket_id)

    async def citizen_tickets(self, citizen_id: int, limit: int = 20) -> list[Ticket]:
        rows = await self.conn.execute(
            sa.select(tickets)
            .where(tickets.c.citizen_id == citizen_id)
            .order_by(tickets.c.id.desc())
            .limit(limit)
        )
        return [_ticket(r) for r in rows]

    async def tickets_filed_since(self, citizen_id: int, since: datetime) -> int:
        value = await self.conn.scalar(
            sa.select(sa.func.count())
            .select_from(tickets)
            .where(tickets.c.citizen_id == citizen_id, tickets.c.created_at >= since)
        )
        return int(value or 0)

    async def citizen_ticket_waiting_for_info(self, citizen_id: int) -> Ticket | None:
        row = (await self.conn.execute(_WAITING_FOR_INFO, {"citizen": citizen_id})).first()
        return _ticket(row) if row else None

    async def due(
        self, column: str, statuses: Sequence[TicketStatus], until: datetime, limit: int
    ) -> list[Ticket]:
        """Tickets in `statuses` whose `column` time has come, oldest first. One query per status: each is
        a range of the `(status, column)` index already in order, so no due row is sorted, however many
        there are; only the few per status are merged here."""
        moment = tickets.c[column]
        found: list[sa.Row[Any]] = []
        for status in statuses:
            rows = await self.conn.execute(
                sa.select(tickets)
                .where(tickets.c.status == status.value, moment <= until)
                .order_by(moment, tickets.c.id)
                .limit(limit)
            )
            found += rows
        if len(statuses) > 1:
            found.sort(key=lambda row: (row._mapping[column], row.id))
        return [_ticket(r) for r in found[:limit]]

    async def overdue_alerts_after(
        self, event_id: int, limit: int
    ) -> tuple[int, int, list[tuple[Ticket, int]]]:
        """The overdue alerts recorded after the event `event_id`, in the order they were raised: how
        many, the id of the last, and the first `limit` as (the ticket as it is now, the alert's level).
        Read through the index of overdue events alone."""
        newer = sa.and_(_OVERDUE, ticket_events.c.id > event_id)
        count, last = (
            await self.conn.execute(sa.select(sa.func.count(), sa.func.max(ticket_events.c.id)).where(newer))
        ).one()
        if not count:
            return 0, event_id, []
        rows = await self.conn.execute(
            sa.select(tickets, ticket_events.c.payload.label("alert"))
            .join_from(ticket_events, tickets, ticket_events.c.ticket_id == tickets.c.id)
            .where(newer)
            .order_by(ticket_events.c.id)
            .limit(limit)
        )
        return int(count), int(last), [(_ticket(r), int(r.alert["level"])) for r in rows]

    async def digest_counts(self, since: datetime, until: datetime, now: datetime) -> list[sa.Row[Any]]:
        """Per agency: filed and resolved from `since` up to (not including) `until`, open now, overdue
        now."""
        open_statuses = [s.value for s in TicketStatus if s.is_open and s is not TicketStatus.resolved]
        working = [TicketStatus.new.value, TicketStatus.in_progress.value]
        filed = sa.and_(tickets.c.created_at >= since, tickets.c.created_at < until)
        resolved = sa.and_(tickets.c.resolved_at >= since, tickets.c.resolved_at < until)
        query = (
            sa.select(
                tickets.c.agency_id,
                sa.func.sum(sa.case((filed, 1), else_=0)).label("new"),
                sa.func.sum(sa.case((resolved, 1), else_=0)).label("resolved"),
                sa.func.sum(sa.case((tickets.c.status.in_(open_statuses), 1), else_=0)).label("open"),
                sa.func.sum(
                    sa.case((sa.and_(tickets.c.status.in_(working), tickets.c.due_at <= now), 1), else_=0)
                ).label("overdue"),
            )
            .where(
                sa.or_(
                    tickets.c.created_at >= since,
                    tickets.c.resolved_at >= since,
                    tickets.c.status.in_(open_statuses),
                )
            )
            .group_by(tickets.c.agency_id)
        )
        return list(await self.conn.execute(query))

    async def longest_overdue(self, now: datetime, limit: int) -> list[Ticket]:
        return await self.due("due_at", (TicketStatus.new, TicketStatus.in_progress), now, limit)

    # media

    async def add_media(
        self, ticket_id: int, attachments: Sequence[Attachment], source: str, now: datetime
    ) -> None:
        if not attachments:
            return
        await self.conn.execute(
            ticket_media.insert(),
            [
                {
                    "ticket_id": ticket_id,
                    "kind": a.kind.value,
                    "platform": a.platform.value,
                    "file_id": a.file_id,
                    "file_unique_id": a.file_unique_id,
                    "url": a.url,
                    "source": source,
                    "created_at": now,
                }
                for a in attachments
            ],
        )

    async def media(self, ticket_id: int, source: str | None = None) -> list[Attachment]:
        """The ticket's files in the order they came."""
        return [attachment for attachment, _ in await self.media_added(ticket_id, source)]

    async def media_added(
        self, ticket_id: int, source: str | None = None
    ) -> list[tuple[Attachment, datetime]]:
        """The ticket's files in the order they came, each with when it came."""
        query = sa.select(ticket_media).where(ticket_media.c.ticket_id == ticket_id)
        if source is not None:
            query = query.where(ticket_media.c.source == source)
        rows = await self.conn.execute(query.order_by(ticket_media.c.id))
        return [
            (
                Attachment(
                    kind=MediaKind(r.kind),
                    platform=Platform(r.platform),
                    file_id=r.file_id,
                    file_unique_id=r.file_unique_id,
                    url=r.url,
                ),
                r.created_at,
            )
            for r in rows
        ]

    # events

    async def add_event(
        self, ticket_id: int, kind: EventKind, actor: str, payload: dict[str, Any], now: datetime
    ) -> None:
        await self.conn.execute(
            ticket_events.insert(),
            {
                "ticket_id": ticket_id,
                "kind": kind.value,
                "actor": actor,
                "payload": payload,
                "created_at": now,
            },
        )

    async def events(self, ticket_id: int) -> list[TicketEvent]:
        rows = await self.conn.execute(
            sa.select(ticket_events)
            .where(ticket_events.c.ticket_id == ticket_id)
            .order_by(ticket_events.c.id)
        )
        return [
            TicketEvent(
                id=r.id,
                ticket_id=r.ticket_id,
                kind=EventKind(r.kind),
                actor=r.actor,
                payload=r.payload,
                created_at=r.created_at,
            )
            for r in rows
        ]

    # message links

    async def link_message(
        self,
        ticket_id: int,
        platform: Platform,
        chat_id: int,
        message_id: int,
        direction: str,
        role: str,
        now: datetime,
    ) -> None:
        await self._insert_ignoring_conflict(
            message_links,
            {
                "ticket_id": ticket_id,
                "platform": platform.value,
                "chat_id": chat_id,
                "message_id": message_id,
                "direction": direction,
                "role": role,
                "created_at": now,
            },
            ["platform", "chat_id", "message_id"],
        )

    async def linked_ticket(
        self, platform: Platform, chat_id: int, message_id: int
    ) -> tuple[int, str] | None:
        row = (
            await self.conn.execute(
                sa.select(message_links.c.ticket_id, message_links.c.role).where(
                    message_links.c.platform == platform.value,
                    message_links.c.chat_id == chat_id,
                    message_links.c.message_id == message_id,
                )
            )
        ).first()
        return (row.ticket_id, row.role) if row else None

    async def linked_at(self, ticket_id: int, platform: Platform, chat_id: int, role: str) -> datetime | None:
        """When the latest message of `role` about the ticket in the chat went (its link was recorded)."""
        value: datetime | None = await self.conn.scalar(
            _latest_link(message_links.c.created_at, ticket_id, platform, chat_id, role)
        )
        return value

    async def latest_linked_message(
        self, ticket_id: int, platform: Platform, chat_id: int, role: str
    ) -> int | None:
        value = await self.conn.scalar(
            _latest_link(message_links.c.message_id, ticket_id, platform, chat_id, role)
        )
        return int(value) if value is not None else None

    # outbox

    async def enqueue(
        self,
        *,
        platform: Platform,
        chat_id: int,
        kind: str,
        payload: dict[str, Any],
        dedupe_key: str | None,
        ticket_id: int | None,
        now: datetime,
    ) -> bool:
        values = {
            "platform": platform.value,
            "chat_id": chat_id,
            "kind": kind,
            "payload": payload,
            "dedupe_key": dedupe_key,
            "ticket_id": ticket_id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        if dedupe_key is None:
            await self.conn.execute(outbox.insert().values(**values))
            return True
        return await self._insert_ignoring_conflict(outbox, values, ["dedupe_key"])

    async def due_outbox_chats(
        self,
        limit: int,
        platforms: Sequence[Platform],
        now: datetime,
        *,
        instance: str | None = None,
    ) -> list[tuple[Platform, int]]:
        """The chats whose first pending row is due, the one waiting longest first; with `instance`,
        leaving out rows another instance has claimed."""
        pending = [_PENDING, outbox.c.platform.in_([p.value for p in platforms])]
        if instance is not None:
            pending.append(_claimable(instance, now))
        first = (
            sa.select(outbox.c.platform, outbox.c.chat_id, sa.func.min(outbox.c.id).label("first_id"))
            .where(*pending)
            .group_by(outbox.c.platform, outbox.c.chat_id)
            .subquery()
        )
        rows = await self.conn.execute(
            sa.select(first.c.platform, first.c.chat_id)
            .join(outbox, outbox.c.id == first.c.first_id)
            .where(outbox.c.next_attempt_at <= now)
            .order_by(first.c.first_id)
            .limit(limit)
        )
        return [(Platform(platform), int(chat_id)) for platform, chat_id in rows]

    async def chat_outbox(self, platform: Platform, chat_id: int, limit: int) -> list[sa.Row[Any]]:
        """A chat's pending rows, oldest first."""
        rows = await self.conn.execute(
            _CHAT_OUTBOX, {"in_platform": platform.value, "chat": chat_id, "row_limit": limit}
        )
        return list(rows)

    async def claim_outbox_chat(
        self, platform: Platform, chat_id: int, instance: str, now: datetime, until: datetime, limit: int
    ) -> list[sa.Row[Any]] | None:
        """Claim a chat's pending rows for `instance` until `until`, and return them oldest first; None
        when another instance holds the chat. Run inside a write transaction, which writers take in
        turn, so two instances never both win one chat."""
        chat = _pending_in(platform.value, chat_id)
        held = await self.conn.scalar(
            sa.select(sa.literal(1)).where(*chat, sa.not_(_claimable(instance, now))).limit(1)
        )
        if held is not None:
            return None
        await self.conn.execute(outbox.update().where(*chat).values(claimed_by=instance, claimed_until=until))
        return await self.chat_outbox(platform, chat_id, limit)

    async def outbox_claimants(self) -> list[str]:
        """The instances holding claims on pending rows (live or lapsed)."""
        rows = await self.conn.scalars(
            sa.select(outbox.c.claimed_by)
            .where(outbox.c.status == "pending", outbox.c.claimed_by.is_not(None))
            .distinct()
        )
        return [str(name) for name in rows]

    async def release_outbox_claims(self, instance: str) -> None:
        await self.conn.execute(
            outbox.update()
            .where(outbox.c.claimed_by == instance, outbox.c.status == "pending")
            .values(claimed_by=None, claimed_until=None)
        )

    async def outbox_sent(self, row_id: int, now: datetime) -> None:
        await self.conn.execute(_OUTBOX_SENT, {"row_id": row_id, "at": now})

    async def outbox_retry(self, row_id: int, at: datetime, error: str, *, count: bool = True) -> None:
        """Put a message off until `at`; a wait the platform asked for is not counted as a failed try."""
        attempts = outbox.c.attempts + 1 if count else outbox.c.attempts
        await self.conn.execute(
            outbox.update()
            .where(outbox.c.id == row_id)
            .values(next_attempt_at=at, attempts=attempts, last_error=error[:1000])
        )

    async def outbox_progress(self, row_id: int, progress: dict[str, list[int]]) -> None:
        await self.conn.execute(outbox.update().where(outbox.c.id == row_id).values(progress=progress))

    async def outbox_failed(self, row_id: int, error: str) -> None:
        await self.conn.execute(
            outbox.update()
            .where(outbox.c.id == row_id)
            .values(status="failed", attempts=outbox.c.attempts + 1, last_error=error[:1000])
        )

    async def outbox_requeue_unreachable(self, platform: Platform, chat_id: int, now: datetime) -> int:
        """Give another go to what failed because the chat could not be reached; returns how many."""
        result = await self.conn.execute(
            outbox.update()
            .where(
                outbox.c.platform == platform.value,
                outbox.c.chat_id == chat_id,
                outbox.c.status == "failed",
                _FAILED_UNREACHABLE,
            )
            .values(status="pending", attempts=0, next_attempt_at=now, last_error=None)
        )
        return int(result.rowcount)

    async def outbox_requeue_owed(self, platform: Platform, chat_id: int, now: datetime) -> int:
        """Give another go to the messages about tickets that failed because the person could not be
        reached, and to the edits after the first of them that failed only because the message they
        edit had not gone (taking "Solved?" buttons off an answer that is only now going); returns how
        many rows. Rows go back in place, keeping their ids (so their order) and dedupe keys: what
        is queued again is still one row, sent once; those that failed otherwise stay failed."""
        failed_here = (
            outbox.c.platform == platform.value,
            outbox.c.chat_id == chat_id,
            outbox.c.status == "failed",
            outbox.c.ticket_id.is_not(None),
        )
        first = await self.conn.scalar(
            sa.select(sa.func.min(outbox.c.id)).where(*failed_here, _FAILED_UNREACHABLE)
        )
        if first is None:
            return 0
        result = await self.conn.execute(
            outbox.update()
            .where(
                *failed_here,
                outbox.c.id >= first,
                sa.or_(
                    _FAILED_UNREACHABLE,
                    sa.and_(outbox.c.kind == "edit", outbox.c.last_error == EDIT_TARGET_NEVER_SENT),
                ),
            )
            .values(
                status="pending",
                attempts=0,
                next_attempt_at=now,
                last_error=None,
                claimed_by=None,
                claimed_until=None,
            )
        )
        return int(result.rowcount)

    async def outbox_move_chat(self, platform: Platform, old_chat_id: int, new_chat_id: int) -> None:
        await self.conn.execute(
            outbox.update().where(*_pending_in(platform.value, old_chat_id)).values(chat_id=new_chat_id)
        )

    # updates and conversation state

    async def mark_processed(self, platform: Platform, key: str, now: datetime) -> bool:
        """Remember an update; False when it was seen before and must change nothing again."""
        return await self._insert_ignoring_conflict(
            processed_updates,
            {"platform": platform.value, "key": key, "created_at": now},
            ["platform", "key"],
        )

    async def processed_among(self, platform: Platform, keys: Sequence[str]) -> set[str]:
        """Which of these updates were handled already."""
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            rows = await self.conn.execute(
                _PROCESSED_AMONG, {"in_platform": platform.value, "keys": keys[start : start + 500]}
            )
            found.update(str(key) for key in rows.scalars())
        return found

    async def store_inbox(
        self, platform: Platform, updates: Sequence[tuple[str, dict[str, Any]]], now: datetime
    ) -> None:
        """Store updates by key; one stored already stays as it is."""
        if not updates:
            return
        await self.conn.execute(
            self._ignoring_conflict(inbox, ["platform", "key"]),
            [
                {"platform": platform.value, "key": key, "payload": payload, "received_at": now}
                for key, payload in updates
            ],
        )

    async def inbox_items(
        self, platform: Platform, limit: int = 100, received_before: datetime | None = None
    ) -> list[tuple[int, str]]:
        """(row id, update key) of stored updates, oldest first."""
        rows = await self.conn.execute(
            sa.select(inbox.c.id, inbox.c.key)
            .where(
                inbox.c.platform == platform.value,
                sa.true() if received_before is None else inbox.c.received_at < received_before,
            )
            .order_by(inbox.c.id)
            .limit(limit)
        )
        return [(r.id, r.key) for r in rows]

    async def inbox_ids(self, platform: Platform, keys: Sequence[str]) -> dict[str, int]:
        rows = await self.conn.execute(_INBOX_IDS, {"in_platform": platform.value, "keys": list(keys)})
        return {r.key: r.id for r in rows}

    async def inbox_payloads(self, item_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The stored updates of these inbox rows (those still there), by row id."""
        rows = await self.conn.execute(sa.select(inbox.c.id, inbox.c.payload).where(inbox.c.id.in_(item_ids)))
        return {int(row.id): dict(row.payload) for row in rows}

    async def drop_inbox(self, item_id: int) -> None:
        await self.conn.execute(_DROP_INBOX, {"row_id": item_id})

    async def cursor(self, name: str) -> str | None:
        value = await self.conn.scalar(sa.select(cursors.c.value).where(cursors.c.name == name))
        return str(value) if value is not None else None

    async def cursors_with_prefix(self, prefix: str) -> list[tuple[str, str]]:
        rows = await self.conn.execute(
            sa.select(cursors.c.name, cursors.c.value).where(
                cursors.c.name.startswith(prefix, autoescape=True)
            )
        )
        return [(r.name, r.value) for r in rows]

    async def drop_cursor(self, name: str) -> None:
        await self.conn.execute(cursors.delete().where(cursors.c.name == name))

    async def save_cursor(self, name: str, value: str, now: datetime) -> None:
        await self.conn.execute(cursors.delete().where(cursors.c.name == name))
        await self.conn.execute(cursors.insert().values(name=name, value=value, updated_at=now))

    async def conversation(self, platform: Platform, chat_id: int) -> dict[str, Any] | None:
        value = await self.conn.scalar(_CONVERSATION, {"in_platform": platform.value, "chat": chat_id})
        return dict(value) if value is not None else None

    async def save_conversation(
        self, platform: Platform, chat_id: int, state: dict[str, Any] | None, now: datetime
    ) -> None:
        if state is None:
            await self.conn.execute(
                conversations.delete().where(
                    conversations.c.platform == platform.value, conversations.c.chat_id == chat_id
                )
            )
            return

        def build() -> Any:
            insert = self._insert(conversations)
            return insert.on_conflict_do_update(
                index_elements=["platform", "chat_id"],
                set_={"state": insert.excluded.state, "updated_at": insert.excluded.updated_at},
            )

        await self.conn.execute(
            self._per_dialect("conversations: upsert", build),
            {"platform": platform.value, "chat_id": chat_id, "state": state, "updated_at": now},
        )

    # health and metrics

    async def ticket_counts(self) -> dict[str, int]:
        """How many tickets are in each status (statuses without tickets are left out)."""
        rows = await self.conn.execute(
            sa.select(tickets.c.status, sa.func.count()).group_by(tickets.c.status)
        )
        return {str(status): int(count) for status, count in rows}

    async def outbox_backlog(self) -> dict[str, tuple[int, datetime]]:
        """Per platform with undelivered messages: how many, and when the oldest was queued."""
        rows = await self.conn.execute(
            sa.select(outbox.c.platform, sa.func.count(), sa.func.min(outbox.c.created_at))
            .where(outbox.c.status == "pending")
            .group_by(outbox.c.platform)
        )
        return {str(platform): (int(count), oldest) for platform, count, oldest in rows}


def _latest_link(
    column: sa.ColumnElement[Any], ticket_id: int, platform: Platform, chat_id: int, role: str
) -> sa.Select[Any]:
    """`column` of the newest link of `role` about the ticket in the chat."""
    return (
        sa.select(column)
        .where(
            message_links.c.ticket_id == ticket_id,
            message_links.c.platform == platform.value,
            message_links.c.chat_id == chat_id,
            message_links.c.role == role,
        )
        .order_by(message_links.c.id.desc())
        .limit(1)
    )


# Written out rather than bound, so the database knows the partial index of those rows serves the query:
# the pending messages, the overdue alerts.
_PENDING = outbox.c.status == sa.literal_column("'pending'")
_OVERDUE = ticket_events.c.kind == sa.literal_column("'overdue'")


def _pending_in(platform: Any, chat_id: Any) -> tuple[sa.ColumnElement[bool], ...]:
    """A chat's pending rows; the platform's value and the chat's id, or parameters standing for them."""
    return outbox.c.platform == platform, outbox.c.chat_id == chat_id, _PENDING


_CHAT_OUTBOX = (
    sa.select(outbox)
    .where(*_pending_in(sa.bindparam("in_platform"), sa.bindparam("chat")))
    .order_by(outbox.c.id)
    .limit(sa.bindparam("row_limit", type_=sa.Integer))
)


def _claimable(instance: str, now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        outbox.c.claimed_by.is_(None), outbox.c.claimed_by == instance, outbox.c.claimed_until <= now
    )


def _citizen(row: sa.Row[Any]) -> Citizen:
    return Citizen(
        id=row.id,
        platform=Platform(row.platform),
        external_id=row.external_id,
        locale=row.locale,
        unreachable_at=row.unreachable_at,
    )


def _ticket(row: sa.Row[Any]) -> Ticket:
    return Ticket(
        id=row.id,
        number=row.number,
        citizen_id=row.citizen_id,
        category_id=row.category_id,
        agency_id=row.agency_id,
        status=TicketStatus(row.status),
        text=row.text,
        created_at=row.created_at,
        updated_at=row.updated_at,
        due_at=row.due_at,
        latitude=row.latitude,
        longitude=row.longitude,
        address=row.address,
        first_response_at=row.first_response_at,
        resolved_at=row.resolved_at,
        closed_at=row.closed_at,
        rating=row.rating,
        remind_at=row.remind_at,
        next_alert_at=row.next_alert_at,
        overdue_level=row.overdue_level,
        waiting_since=row.waiting_since,
        next_update_at=row.next_update_at,
    )
