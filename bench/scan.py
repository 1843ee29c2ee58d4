"""The scheduler's scan over 10k, 100k and 1M stored tickets, 1% of them overdue.

Each repetition runs the real scan (`scheduler.jobs.Jobs.scan` → `bot.deadlines.Deadlines.scan`) on a
database whose write transactions are rolled back at their end: the scan finds the due tickets, updates
them, writes their events and queues the alerts exactly as in production, and the next repetition finds
the same tickets due again. A scan works through what is due in passes of `BATCH` tickets per kind of
promise, each its own transaction; as nothing commits here, one pass per kind is what a repetition
runs, and the figures are per pass: what a scan costs each `BATCH` tickets, and how long the write turn
is held at a time. Two figures per size:

- due queries: the time spent in the scan's `Repository.due` calls (SQL and turning rows into tickets),
  timed inside the real scan; this is what grows with the number of stored tickets if an index is
  missing;
- whole pass: everything, including acting on up to `BATCH` tickets per kind of promise (writes
  rolled back instead of committed).

The daily digest runs once a day, not every scan, so it is timed on its own. Last, one real scan on a
copy of the largest database, committing, clears everything due there: how long a backlog takes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from bench import population
from bench.harness import BenchError, Section, median, migrate, routing, sqlite_url
from bot.clock import ManualClock
from bot.deadlines import BATCH, Deadlines
from bot.delivery.outbox import Outbox
from bot.i18n import Translator
from bot.policy import Policy
from bot.tickets import TicketService
from scheduler.jobs import Jobs
from storage.db import Database
from storage.repository import Repository

SCAN_AIM_MS = 50.0
GROWTH_AIM = 2.0
# The scan that runs every SCHEDULER_INTERVAL: production's default policy without the digest.
SCAN_POLICY = replace(Policy(), digest_at=None)


class RolledBackDatabase(Database):
    """Every write transaction ends in a rollback, so a scan can be repeated on the same due tickets.
    BEGIN IMMEDIATE and every statement run as in production; only the COMMIT is replaced."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            transaction = await conn.begin()
            try:
                yield conn
            finally:
                await transaction.rollback()


@contextlib.contextmanager
def timed_due_queries(spent: list[float]) -> Iterator[None]:
    """Time every `Repository.due` call (the scan's reads of what is due) while inside the block."""
    original = Repository.due

    async def due(self: Repository, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    Repository.due = due  # type: ignore[method-assign]
    try:
        yield
    finally:
        Repository.due = original  # type: ignore[method-assign]


@dataclass
class SizeResult:
    tickets: int
    populate_seconds: float
    scans_ms: list[float] = field(default_factory=list)
    due_queries_ms: list[float] = field(default_factory=list)
    acted: dict[str, int] = field(default_factory=dict)
    digest_ms: list[float] = field(default_factory=list)
    plans: dict[str, list[str]] = field(default_factory=dict)
    sqlite_ms: float = 0.0


def _service(db: Database, clock: ManualClock, policy: Policy) -> TicketService:
    rules = routing()
    return TicketService(
        Outbox(db, clock),
        rules,
        Translator(default=rules.default_locale),
        citizen_update_every=policy.citizen_update_every,
    )


async def measure(path: Path, now: datetime, repetitions: int) -> SizeResult:
    result = SizeResult(tickets=population.ticket_count(path), populate_seconds=0.0)
    db = RolledBackDatabase(sqlite_url(path))
    clock = ManualClock(now)
    deadlines = Deadlines(_service(db, clock, SCAN_POLICY), SCAN_POLICY, passes=1)
    jobs = Jobs(deadlines, clock)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM tickets" in statement:
            statements.append((statement, parameters))

    try:
        event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
        for repetition in range(repetitions + 1):
            spent: list[float] = []
            with timed_due_queries(spent):
                started = time.perf_counter()
                done = await jobs.scan()
                elapsed = time.perf_counter() - started
            if not done:
                raise BenchError("the scan failed; see the log above")
            if repetition == 0:
                # The first scan after opening the database warms SQLite's page cache: not counted.
                event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
                result.acted = done
                continue
            result.scans_ms.append(elapsed * 1000)
            result.due_queries_ms.append(sum(spent) * 1000)
        # Midnight: the digest is due whatever the local time (and nothing records that it went).
        daily = Deadlines(_service(db, clock, Policy()), Policy(digest_at=time_of_day(0, 0)))
        for repetition in range(max(1, repetitions // 2)):
            if repetition == 0:
                event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
            started = time.perf_counter()
            posted = await daily.digest(now)
            if repetition == 0:
                event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
            result.digest_ms.append((time.perf_counter() - started) * 1000)
            if posted != 1:
                raise BenchError("the digest did not run")
    finally:
        await db.close()
    result.plans = query_plans(path, statements)
    result.sqlite_ms = sqlite_time(path, [(sql, args) for sql, args in statements if _is_due_query(sql)])
    return result


async def drain(path: Path, now: datetime) -> tuple[float, dict[str, int]]:
    """One real scan, committing, on a copy of the database at `path`: the time it takes to clear
    everything due, pass after pass, and what it acted on."""
    copy = path.with_name(f"{path.stem}-drain.db")
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    db = Database(sqlite_url(copy))
    jobs = Jobs(Deadlines(_service(db, ManualClock(now), SCAN_POLICY), SCAN_POLICY), ManualClock(now))
    try:
        started = time.perf_counter()
        done = await jobs.scan()
        elapsed = time.perf_counter() - started
        if not done or await jobs.scan() != dict.fromkeys(done, 0):
            raise BenchError("the scan did not clear what was due")
    finally:
        await db.close()
        for leftover in copy.parent.glob(f"{copy.name}*"):
            leftover.unlink()
    return elapsed, done


def _is_due_query(statement: str) -> bool:
    return "ORDER BY" in statement and "LIMIT" in statement


def sqlite_time(path: Path, statements: list[tuple[str, Any]], repetitions: int = 5) -> float:
    """Median time SQLite alone takes for the scan's due queries (run through the stdlib driver and
    fetched, no SQLAlchemy, no row objects): the part an index decides."""
    distinct = list({(sql, tuple(args)): None for sql, args in statements})
    connection = sqlite3.connect(path)
    try:
        totals = []
        for _ in range(repetitions + 1):
            started = time.perf_counter()
            for sql, args in distinct:
                connection.execute(sql, args).fetchall()
            totals.append((time.perf_counter() - started) * 1000)
        return median(totals[1:])
    finally:
        connection.close()


def query_plans(path: Path, statements: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """SQLite's plan for each distinct ticket query the scan ran."""
    plans: dict[str, list[str]] = {}
    connection = sqlite3.connect(path)
    try:
        for statement, parameters in statements:
            key = " ".join(statement.split())
            if key in plans:
                continue
            rows = connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans[key] = [str(row[-1]) for row in rows]
    finally:
        connection.close()
    return plans


async def prepare(path: Path, tickets: int) -> None:
    """A migrated database holding `tickets` populated tickets."""
    await migrate(path)
    population.grow(path, tickets, datetime.now(UTC))


async def run(workdir: Path, sizes: list[int], repetitions: int) -> tuple[Section, Path]:
    """Returns the section and the database at the largest size, for the memory benchmark."""
    section = Section("scheduler scan")
    path = workdir / "scan.db"
    await migrate(path)
    now = datetime.now(UTC)
    results: list[SizeResult] = []
    for size in sizes:
        started = time.perf_counter()
        population.grow(path, size, now)
        populated = time.perf_counter() - started
        result = await measure(path, now, repetitions)
        result.populate_seconds = populated
        results.append(result)
        due = sum(1 for _ in range(population.DUE_EVERY, size + 1, population.DUE_EVERY))
        label = _size(size)
        query_ms = median(result.due_queries_ms)
        aim = f"< {SCAN_AIM_MS:.0f} ms" if size >= 1_000_000 else ""
        ok = query_ms < SCAN_AIM_MS if aim else None
        section.add(f"{label}: due queries per pass", query_ms, "ms", aim=aim, ok=ok, note=f"{due} due")
        section.add(f"{label}: due queries, SQLite alone", result.sqlite_ms, "ms")
        section.add(
            f"{label}: whole pass, acting on {result.acted.get('overdue', 0)}", median(result.scans_ms), "ms"
        )
    first, last = results[0], results[-1]
    cleared_in, cleared = await drain(path, now)
    acted = sum(cleared.values())
    section.add(f"{_size(last.tickets)}: one scan clearing all {acted:,} due, committed", cleared_in, "s")
    section.add(f"{_size(last.tickets)}: tickets acted on per second in that scan", acted / cleared_in, "1/s")
    growth = median(last.due_queries_ms) / median(first.due_queries_ms)
    span = f"{_size(first.tickets)} → {_size(last.tickets)}"
    section.add(f"due queries growth {span}", growth, "×", aim=f"< {GROWTH_AIM:.0f}×", ok=growth < GROWTH_AIM)
    section.add(f"due queries growth {span}, SQLite alone", last.sqlite_ms / first.sqlite_ms, "×")
    section.add(f"{_size(last.tickets)}: daily digest (once a day)", median(last.digest_ms), "ms")
    full_scans = [
        line
        for plans in last.plans.values()
        for line in plans
        if line.startswith("SCAN") and "tickets" in line
    ]
    section.notes.append(
        "Each scan runs on a database whose write transactions roll back, so every repetition finds the "
        f"same due tickets; median of {repetitions} after one warm-up scan. A scan works in passes of "
        f"{BATCH} tickets per kind of promise, each committed, until nothing is due; with nothing "
        "committed here, a repetition is one pass per kind. 'Due queries' is the time inside the pass's "
        "Repository.due calls; 'whole pass' also acts on the tickets found (updates, events, alerts "
        "queued). The digest is off in these scans and timed apart. 'One scan clearing all' is a real scan, "
        "committing, on a copy of the largest database."
    )
    if full_scans:
        section.notes.append(
            f"full table scans in the scan's or the digest's queries: {sorted(set(full_scans))}"
        )
    section.details = {
        "sizes": [
            {
                "tickets": r.tickets,
                "populate_seconds": round(r.populate_seconds, 1),
                "due_queries_ms": [round(v, 2) for v in r.due_queries_ms],
                "scans_ms": [round(v, 1) for v in r.scans_ms],
                "digest_ms": [round(v, 1) for v in r.digest_ms],
                "due_queries_sqlite_ms": round(r.sqlite_ms, 2),
                "acted": r.acted,
                "query_plans": r.plans,
            }
            for r in results
        ],
        "drain": {"tickets": last.tickets, "seconds": round(cleared_in, 2), "acted": cleared},
    }
    return section, path


def _size(tickets: int) -> str:
    if tickets >= 1_000_000:
        return f"{tickets // 1_000_000}M"
    return f"{tickets // 1000}k"
