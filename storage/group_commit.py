"""Group commit: small writes from tasks running side by side share one transaction.

Each caller still returns only once its own write is committed, so it may act on it at once; what the
callers gain is that the writer's turn (one at a time, see `Database.transaction`) and the commit are
paid once for many of them instead of once each. (On a SQLite file the database groups transactions
side by side by itself; there this saves each small write its savepoint.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from storage.db import Database

Write = Callable[[AsyncConnection], Awaitable[None]]


class GroupCommit:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._queued: list[tuple[Write, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, apply: Write) -> None:
        """Run `apply` in a transaction shared with whatever else is waiting; returns once committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((apply, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # Shielded: a caller that is cancelled meanwhile does not cancel the others' commit.
        await asyncio.shield(done)

    async def _flush(self) -> None:
        # Writes queued while a transaction waits for its turn or commits go together in the next one.
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                await self._commit([apply for apply, _ in batch])
            except Exception:
                # One failing write must not fail the others: each is tried alone.
                for apply, done in batch:
                    try:
                        await self._commit([apply])
                    except Exception as error:
                        done.set_exception(error)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _commit(self, writes: list[Write]) -> None:
        async with self.db.transaction() as conn:
            for apply in writes:
                await apply(conn)
