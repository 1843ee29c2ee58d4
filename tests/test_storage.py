"""Storage on a real database (a SQLite file, or PostgreSQL): SQLite's pragmas, aware UTC times, migrations
equal to the schema, idempotency, ids beyond 32 bits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

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
        assert len(await repo.pending_outbox(10, [Platform.telegram])) == 1


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
        [row] = await repo.pending_outbox(10, [Platform.telegram])
        assert row.chat_id == group - 1
