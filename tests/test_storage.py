"""Storage on a real database (a SQLite file, or PostgreSQL): SQLite's pragmas, aware UTC times, migrations
equal to the schema, idempotency, ids beyond 32 bits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event

from bot.domain import Platform
from storage.db import Database
from storage.repository import Repository
from storage.schema import metadata

MSK = timezone(timedelta(hours=3))


@pytest.mark.sqlite_only("PRAGMAs are SQLite's own")
async def test_sqlite_runs_in_wal_mode_with_foreign_keys(db: Database) -> None:
    async with db.read() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1


async def test_migrations_create_exactly_the_schema(db: Database) -> None:
    async with db.read() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    assert diff == []


async def test_times_come_back_aware_in_utc(db: Database) -> None:
    local = datetime(2026, 3, 2, 12, 0, tzinfo=MSK)
    async with db.transaction() as conn:
        citizen = await Repository(conn).ensure_citizen(Platform.telegram, 42, "A", "ru", local)
    async with db.read() as conn:
        row = (await conn.execute(sa.text("SELECT created_at FROM citizens"))).scalar()
        again = await Repository(conn).citizen(citizen.id)
    assert str(row).startswith("2026-03-02 09:00:00")
    assert again.external_id == 42


async def test_naive_times_are_refused(db: Database) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        async with db.transaction() as conn:
            await Repository(conn).ensure_citizen(Platform.telegram, 1, "A", "ru", datetime(2026, 1, 1))  # noqa: DTZ001


async def test_an_update_is_marked_processed_once(db: Database) -> None:
    now = datetime.now(UTC)
    async with db.transaction() as conn:
        repo = Repository(conn)
        assert await repo.mark_processed(Platform.telegram, "7", now)
        assert not await repo.mark_processed(Platform.telegram, "7", now)
        assert await repo.mark_processed(Platform.vk, "7", now)


async def test_outbox_dedupe_key_queues_a_message_once(db: Database) -> None:
    now = datetime.now(UTC)
    async with db.transaction() as conn:
        repo = Repository(conn)
        for _ in range(3):
            await repo.enqueue(
                platform=Platform.telegram,
                chat_id=1,
                kind="send",
                payload={"text": "hi"},
                dedupe_key="tg:1:0",
                ticket_id=None,
                now=now,
            )
        assert len(await repo.chat_outbox(Platform.telegram, 1, 10)) == 1


async def test_due_chats_are_those_whose_first_pending_message_is_due_longest_waiting_first(
    db: Database,
) -> None:
    now = datetime.now(UTC)
    vk, tg = Platform.vk, Platform.telegram
    async with db.transaction() as conn:
        repo = Repository(conn)

        async def put(platform: Platform, chat_id: int) -> int:
            await repo.enqueue(
                platform=platform,
                chat_id=chat_id,
                kind="send",
                payload={},
                dedupe_key=None,
                ticket_id=None,
                now=now,
            )
            [row] = (await repo.chat_outbox(platform, chat_id, 100))[-1:]
            return int(row.id)

        first_of_chat_3 = await put(tg, 3)  # then put off: the chat waits for it
        await put(tg, 1)
        sent = await put(tg, 2)
        await put(tg, 3)
        await put(vk, 1)  # the same id on the other platform is another chat
        await put(tg, 2)
        await put(tg, 1)
        await repo.outbox_retry(first_of_chat_3, now + timedelta(seconds=5), "502")
        await repo.outbox_sent(sent, now)

    async with db.read() as conn:
        repo = Repository(conn)
        assert await repo.due_outbox_chats(10, [tg, vk], now) == [(tg, 1), (vk, 1), (tg, 2)]
        assert await repo.due_outbox_chats(2, [tg], now) == [(tg, 1), (tg, 2)]
        later = now + timedelta(seconds=5)
        assert await repo.due_outbox_chats(10, [tg], later) == [(tg, 3), (tg, 1), (tg, 2)]
        assert [len(await repo.chat_outbox(tg, chat, 100)) for chat in (1, 2, 3)] == [2, 1, 2]


@pytest.mark.sqlite_only("SQLite's planner, without statistics, takes any index that fits the query")
async def test_the_delivery_worker_reads_the_outbox_through_the_pending_rows_index(db: Database) -> None:
    now = datetime.now(UTC)
    statements: list[tuple[str, Any]] = []

    def seen(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        statements.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with db.read() as conn:
            await Repository(conn).due_outbox_chats(10, [Platform.telegram], now)
            await Repository(conn).chat_outbox(Platform.telegram, 1, 10)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 2
    async with db.read() as conn:
        for statement, parameters in statements:
            plan = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            detail = " ".join(str(row[-1]) for row in plan)
            # Not an index of every row: the history of messages sent is not read at every look.
            assert "USING INDEX ix_outbox_pending_chat" in detail, detail


async def test_telegram_ids_beyond_32_bits_round_trip(db: Database) -> None:
    # Supergroup ids are -100 followed by the group's id; user ids have passed 2^32 too.
    user, group, message = 8_123_456_789, -1_002_345_678_901, 3_000_000_000
    now = datetime.now(UTC)
    async with db.transaction() as conn:
        repo = Repository(conn)
        citizen = await repo.ensure_citizen(Platform.telegram, user, "A", "ru", now)
        ticket = await repo.insert_ticket(
            citizen_id=citizen.id,
            category_id="potholes",
            agency_id="roads",
            status="new",
            text="x",
            created_at=now,
            updated_at=now,
            due_at=now,
        )
        await repo.link_message(ticket.id, Platform.telegram, group, message, "out", "card", now)
        await repo.save_conversation(Platform.telegram, user, {"step": "x"}, now)
        await repo.enqueue(
            platform=Platform.telegram,
            chat_id=group,
            kind="send",
            payload={},
            dedupe_key=None,
            ticket_id=ticket.id,
            now=now,
        )
        await repo.outbox_move_chat(Platform.telegram, group, group - 1)
    async with db.read() as conn:
        repo = Repository(conn)
        found = await repo.citizen_by_external(Platform.telegram, user)
        assert found is not None and found.external_id == user
        assert await repo.linked_ticket(Platform.telegram, group, message) == (ticket.id, "card")
        assert await repo.latest_linked_message(ticket.id, Platform.telegram, group, "card") == message
        assert await repo.conversation(Platform.telegram, user) == {"step": "x"}
        assert await repo.due_outbox_chats(10, [Platform.telegram], now) == [(Platform.telegram, group - 1)]
        [row] = await repo.chat_outbox(Platform.telegram, group - 1, 10)
        assert row.ticket_id == ticket.id
