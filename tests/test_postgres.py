"""Concurrency as PostgreSQL allows it: writers of two instances take turns, ticket numbers never collide,
a read sees one snapshot and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from bot.domain import Platform, Ticket
from storage.db import Database
from storage.repository import Repository
from storage.schema import tickets

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SERVER_ONLY = "two connections writing at once: SQLite lets only one writer begin"


@pytest.fixture
async def other(database_url: str) -> AsyncIterator[Database]:
    """A second instance on the same database, as another process would have."""
    database = Database(database_url)
    yield database
    await database.close()


async def file_ticket(repo: Repository, citizen_id: int, text: str) -> Ticket:
    return await repo.insert_ticket(
        citizen_id=citizen_id,
        category_id="potholes",
        agency_id="roads",
        status="new",
        text=text,
        created_at=NOW,
        updated_at=NOW,
        due_at=NOW,
    )


async def citizen_id(db: Database, external_id: int = 42) -> int:
    async with db.transaction() as conn:
        return (await Repository(conn).ensure_citizen(Platform.telegram, external_id, "A", "ru", NOW)).id


@pytest.mark.postgres_only(SERVER_ONLY)
async def test_open_transactions_file_tickets_at_once_with_distinct_numbers(
    db: Database, other: Database
) -> None:
    citizen = await citizen_id(db)
    first_filed = asyncio.Event()
    release = asyncio.Event()

    async def first() -> Ticket:
        # Plain transactions, without the write lock: numbers must not depend on writers taking turns.
        async with db.engine.begin() as conn:
            ticket = await file_ticket(Repository(conn), citizen, "first")
            first_filed.set()
            await release.wait()
            return ticket

    async def second() -> Ticket:
        await first_filed.wait()
        async with other.engine.begin() as conn:
            return await file_ticket(Repository(conn), citizen, "second")

    holder = asyncio.ensure_future(first())
    try:
        # The second transaction commits while the first is still open: nothing makes it wait.
        later = await asyncio.wait_for(second(), 10)
    finally:
        release.set()
    earlier = await holder
    assert earlier.number != later.number
    assert {earlier.number, later.number} == {earlier.id, later.id}

    many = await asyncio.gather(*(file_ticket_in(d, citizen, n) for n, d in enumerate([db, other] * 10)))
    numbers = [t.number for t in many] + [earlier.number, later.number]
    assert len(set(numbers)) == len(numbers) == 22


async def file_ticket_in(db: Database, citizen: int, n: int) -> Ticket:
    async with db.engine.begin() as conn:
        return await file_ticket(Repository(conn), citizen, f"report {n}")


async def test_two_instances_confirming_one_draft_file_one_ticket(db: Database, other: Database) -> None:
    """The pattern of filing a draft (read it, file it, clear it) relies on writers taking turns."""
    citizen = await citizen_id(db)
    async with db.transaction() as conn:
        await Repository(conn).save_conversation(Platform.telegram, 42, {"draft": "pothole"}, NOW)

    async def confirm(database: Database) -> bool:
        async with database.transaction() as conn:
            repo = Repository(conn)
            state = await repo.conversation(Platform.telegram, 42)
            if not state:
                return False
            # Give the other instance every chance to read the same draft meanwhile.
            await asyncio.sleep(0.2)
            await file_ticket(repo, citizen, state["draft"])
            await repo.save_conversation(Platform.telegram, 42, None, NOW)
            return True

    assert sorted(await asyncio.gather(confirm(db), confirm(other))) == [False, True]
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(tickets)) == 1


@pytest.mark.postgres_only("a read on SQLite holds the database's write lock, so nobody writes meanwhile")
async def test_a_read_sees_one_snapshot_and_writes_nothing(db: Database, other: Database) -> None:
    citizen = await citizen_id(db)
    count = sa.select(sa.func.count()).select_from(tickets)
    async with db.read() as conn:
        assert await conn.scalar(count) == 0
        async with other.transaction() as writer:
            await file_ticket(Repository(writer), citizen, "meanwhile")
        assert await conn.scalar(count) == 0
        with pytest.raises(sa.exc.DBAPIError, match="read-only"):
            await conn.execute(tickets.delete())
    async with db.read() as conn:
        assert await conn.scalar(count) == 1
