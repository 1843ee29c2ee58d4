"""Crash recovery: a backlog of queued messages in the outbox (as a bot killed mid-delivery leaves it),
then the bot started; measured from the moment the process is spawned until the fake has received the
last of them. Rate limits off, so the figure is the bot's own pace.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import BenchTelegram, Section, bot_env, bot_process, migrate, query, sqlite_url
from bot.domain import Platform
from bot.messages import Outgoing
from storage.db import Database
from storage.repository import Repository

FIRST_CITIZEN = 7_000_000
PER_CITIZEN = 4


async def _queue(database: Path, messages: int) -> list[int]:
    """`messages` rows queued by Repository.enqueue in one transaction, PER_CITIZEN to each citizen."""
    db = Database(sqlite_url(database))
    now = datetime.now(UTC)
    people = [FIRST_CITIZEN + index for index in range((messages + PER_CITIZEN - 1) // PER_CITIZEN)]
    try:
        async with db.transaction() as conn:
            repo = Repository(conn)
            for index in range(messages):
                chat = people[index % len(people)]
                await repo.enqueue(
                    platform=Platform.telegram,
                    chat_id=chat,
                    kind="send",
                    payload=Outgoing(f"Message {index} of the backlog for <b>{chat}</b>").to_json(),
                    dedupe_key=f"bench-backlog:{index}",
                    ticket_id=None,
                    now=now,
                )
    finally:
        await db.close()
    return people


async def run(workdir: Path, messages: int) -> Section:
    section = Section("crash recovery")
    database = workdir / "recovery.db"
    await migrate(database)
    people = await _queue(database, messages)
    async with BenchTelegram() as tg:
        for user_id in people:
            tg.add_user(user_id, first_name=f"C{user_id}")
        env = bot_env(
            workdir,
            tg.base_url,
            database,
            TELEGRAM_GLOBAL_RATE=0,
            TELEGRAM_PRIVATE_RATE=0,
            TELEGRAM_GROUP_RATE=0,
            SCHEDULER_INTERVAL=3600,
            DIGEST_TIME="off",
        )
        bot = bot_process(workdir, env, "bot_recovery")
        try:
            spawned = time.perf_counter()
            startup = await bot.start(tg)
            last = await tg.sent_count(messages, within=300)
            bot.check_alive()
        finally:
            await bot.stop()
        first = tg.sent[0][0]
        received = {chat: len(tg.bot_messages(chat)) for chat in people}
    total = last - spawned
    not_sent = query(database, "SELECT count(*) FROM outbox WHERE status != 'sent'")[0][0]
    extra = sum(received.values()) - messages
    section.add(f"restart → last of {messages:,} queued messages sent", total, "s")
    section.add("of which start-up (spawn → first getUpdates)", startup, "s")
    section.add("first → last message", last - first, "s")
    section.add("backlog delivery rate", (messages - 1) / (last - first), "msg/s")
    section.add(
        "lost or duplicated", int(not_sent) + max(0, extra), "", aim="0", ok=not_sent == 0 and extra == 0
    )
    section.notes.append(
        f"{messages:,} rows queued with Repository.enqueue, {PER_CITIZEN} per citizen, before the bot "
        "starts; rate limits off."
    )
    section.details = {
        "messages": messages,
        "seconds_total": total,
        "seconds_startup": startup,
        "seconds_first_to_last": last - first,
        "rows_not_sent": not_sent,
        "extra_messages": extra,
    }
    return section
