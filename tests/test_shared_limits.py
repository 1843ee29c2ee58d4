"""Rate limits shared through Redis by several instances: together they never get more than one limit's
worth in any window, a refusal counts nothing anywhere, and without Redis each instance keeps to its own.

Runs against the Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/0) and is skipped, saying why,
when none answers there. Every test keeps its keys under a prefix of its own and deletes them after.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.app import App
from bot.clock import SystemClock
from bot.config import Routing, Settings
from bot.delivery.base import Progress
from bot.delivery.limits import RateLimiter, Rates
from bot.delivery.outbox import Outbox
from bot.delivery.shared_limits import SharedLimits, SharedWindow
from bot.delivery.worker import DeliveryWorker
from bot.domain import Platform
from bot.messages import Outgoing
from storage.db import Database
from tests.conftest import make_settings
from tests.databases import Backend
from tests.test_delivery_worker import RecordingMessenger, queue

TG = Platform.telegram
VK = Platform.vk
CITIZEN, OTHER_CITIZEN = 7001, 7002
LOGGER = "bot.delivery.shared_limits"
# Sends are stamped by the test a moment after Redis counted them; two stamps may come this much closer
# together than the two counts were.
STAMP_SLACK = 0.05


def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url(), socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        await client.aclose()
        pytest.skip(f"no Redis at {redis_url()} ({error}); set TEST_REDIS_URL to run these tests")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    name = f"civicdesk-test:{uuid.uuid4().hex}:rl"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}:*")]
    if keys:
        await redis.delete(*keys)


Instance = Callable[..., RateLimiter]


@pytest.fixture
async def instance(prefix: str) -> AsyncIterator[Instance]:
    """Makes a limiter standing for one more instance of the bot: a Redis client of its own, the same
    prefix (so the same shared windows) as the test's other instances."""
    made: list[SharedLimits] = []

    def make(url: str | None = None, retry_seconds: float = 1.0, **rates: int) -> RateLimiter:
        shared = SharedLimits.from_url(url or redis_url(), prefix=prefix, retry_seconds=retry_seconds)
        made.append(shared)
        return RateLimiter(Rates(**rates), shared=shared)

    yield make
    for shared in made:
        await shared.close()


def shared_of(limits: RateLimiter) -> SharedLimits:
    assert limits.shared is not None
    return limits.shared


def crowded(stamps: list[float], limit: int, seconds: float) -> list[tuple[float, float]]:
    """Pairs of sends `limit` apart that are closer than `seconds`: each pair puts limit + 1 sends into
    one window. At most `limit` in any window means there is none."""
    stamps = sorted(stamps)
    return [
        (stamps[i], stamps[i + limit])
        for i in range(len(stamps) - limit)
        if stamps[i + limit] - stamps[i] < seconds
    ]


async def gathered(*runs: Awaitable[None], timeout: float = 20.0) -> None:
    await asyncio.wait_for(asyncio.gather(*runs), timeout)


# --- two instances, one budget ------------------------------------------------------------------------


async def test_two_instances_asking_at_once_never_get_more_than_the_limit_in_any_window(
    redis: Redis, prefix: str
) -> None:
    window = SharedWindow("tg:global", 8, 0.4)
    instances = [SharedLimits(Redis.from_url(redis_url()), prefix=prefix, owns_client=True) for _ in range(2)]
    granted: dict[int, list[float]] = {0: [], 1: []}

    async def sender(index: int, sends: int) -> None:
        shared = instances[index]
        for _ in range(sends):
            while True:
                answer = await shared.acquire([window], 1)
                assert answer is not None, "Redis answers"
                if answer.granted:
                    break
                await asyncio.sleep(answer.wait)
            granted[index].append(answer.at)  # the server's time of the count

    try:
        started = time.monotonic()
        await gathered(*(sender(index, 5) for index in (0, 1) for _ in range(4)))
        elapsed = time.monotonic() - started
    finally:
        for shared in instances:
            await shared.close()
    stamps = granted[0] + granted[1]
    assert len(stamps) == 40
    assert granted[0] and granted[1], "both instances were let through"
    # 40 sends, 8 in any 0.4 s: the last eight go at least four windows after the first eight.
    assert crowded(stamps, 8, 0.4 - 1e-6) == []
    assert max(stamps) - min(stamps) >= 4 * 0.4 - 1e-6
    assert elapsed >= 4 * 0.4 - STAMP_SLACK


async def test_vk_calls_through_slot_keep_to_one_budget_for_both_instances(instance: Instance) -> None:
    first, second = instance(vk=5), instance(vk=5)
    stamps: list[float] = []

    async def caller(limits: RateLimiter, calls: int) -> None:
        for _ in range(calls):
            async with limits.slot(VK):
                stamps.append(time.monotonic())

    await gathered(*(caller(limits, 3) for limits in (first, second) for _ in range(2)))
    # Alone, each instance's own limit would let ten through in the first second.
    assert len(stamps) == 12
    assert crowded(stamps, 5, 1.0 - STAMP_SLACK) == []


async def test_a_refusal_by_one_window_counts_the_send_in_none(
    instance: Instance, redis: Redis, prefix: str
) -> None:
    first = instance(telegram_global=3, telegram_private=1)
    second = instance(telegram_global=3, telegram_private=1)
    assert (await first.acquire_shared(TG, CITIZEN, 1)).granted
    held = await second.acquire_shared(TG, CITIZEN, 1)
    assert not held.granted, "the citizen's window is shared too"
    assert 0.9 < held.wait <= 1.0
    assert await redis.zcard(f"{prefix}:tg:global") == 1, "the chat's refusal spent no global budget"
    assert second.acquire(TG, CITIZEN, 1).granted, "nor did it stay counted in the instance's own windows"

    assert (await first.acquire_shared(TG, 1, 1)).granted
    assert (await second.acquire_shared(TG, 2, 1)).granted
    full = await first.acquire_shared(TG, 3, 1)
    assert not full.granted, "three in the global window, from both instances"
    assert await redis.exists(f"{prefix}:tg:chat:3") == 0, "the global refusal spent nothing in the chat"


async def test_every_instance_counts_a_send_from_when_it_was_answered(instance: Instance) -> None:
    first, second = instance(telegram_private=1), instance(telegram_private=1)
    permit = await first.acquire_shared(TG, CITIZEN, 1)
    assert permit.granted
    await asyncio.sleep(0.3)  # the request to the platform takes this long
    permit.finish()
    await shared_of(first).drain()
    held = await second.acquire_shared(TG, CITIZEN, 1)
    assert held.wait > 0.9, "a second after the answer, not after the request"


async def test_an_album_bigger_than_the_window_holds_every_instance_back_for_each_photo(
    instance: Instance,
) -> None:
    first, second = instance(telegram_private=1), instance(telegram_private=1)
    assert (await first.acquire_shared(TG, CITIZEN, 3)).granted
    held = await second.acquire_shared(TG, CITIZEN, 1)
    assert 2.9 < held.wait <= 3.0
    assert (await second.acquire_shared(TG, OTHER_CITIZEN, 1)).granted


# --- without Redis --------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == LOGGER and record.levelno == logging.WARNING
    ]


async def test_without_redis_an_instance_keeps_to_its_own_limits_and_warns_once(
    instance: Instance, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    # Every call tries Redis again, and each of them fails.
    limits = instance(f"redis://127.0.0.1:{closed_port()}/0", retry_seconds=0.0, telegram_global=2)
    started = time.monotonic()
    answers = [await limits.acquire_shared(TG, chat, 1) for chat in (1, 2, 3, 4)]
    assert time.monotonic() - started < 2.0, "no send waits long for the missing Redis"
    assert [answer.granted for answer in answers] == [True, True, False, False]
    assert answers[2].wait == pytest.approx(1.0, abs=0.1), "the instance's own window holds it"
    assert shared_of(limits).down
    warnings = outage_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "Redis is unreachable" in warnings[0]


class Relay:
    """A TCP relay to Redis that the test cuts and mends: the network between an instance and Redis."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = True
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if not self.up:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, upstream_writer}
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()

    def cut(self) -> None:
        self.up = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    def mend(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._pipes:
            await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def relay(redis: Redis) -> AsyncIterator[Relay]:
    kwargs = redis.connection_pool.connection_kwargs
    relay = Relay(str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379)))
    yield relay
    await relay.close()


async def test_each_outage_is_reported_once_and_its_end_too(
    instance: Instance,
    relay: Relay,
    redis: Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    limits = instance(await relay.start(), retry_seconds=0.0, telegram_global=100)
    shared_windows = f"{prefix}:tg:global"

    assert (await limits.acquire_shared(TG, 1, 1)).granted
    assert await redis.zcard(shared_windows) == 1

    relay.cut()
    for chat in (2, 3, 4):
        assert (await limits.acquire_shared(TG, chat, 1)).granted, "the instance keeps sending"
    assert await redis.zcard(shared_windows) == 1
    assert len(outage_warnings(caplog)) == 1

    relay.mend()
    assert (await limits.acquire_shared(TG, 5, 1)).granted
    assert await redis.zcard(shared_windows) == 2, "shared again once Redis answers"
    assert not shared_of(limits).down
    assert any("answers again" in record.getMessage() for record in caplog.records)

    relay.cut()
    assert (await limits.acquire_shared(TG, 6, 1)).granted
    assert (await limits.acquire_shared(TG, 7, 1)).granted
    assert len(outage_warnings(caplog)) == 2, "a new outage is reported anew"


async def test_while_redis_is_away_it_is_tried_again_only_now_and_then(relay: Relay) -> None:
    now = [1000.0]
    shared = SharedLimits(
        Redis.from_url(await relay.start(), socket_connect_timeout=0.5, socket_timeout=0.5),
        prefix=f"civicdesk-test:{uuid.uuid4().hex}:rl",
        retry_seconds=5.0,
        monotonic=lambda: now[0],
        owns_client=True,
    )
    limits = RateLimiter(Rates(telegram_global=100), shared=shared)
    try:
        relay.cut()
        assert (await limits.acquire_shared(TG, 1, 1)).granted
        assert shared.down
        tries = relay.connections
        for chat in range(2, 12):
            assert (await limits.acquire_shared(TG, chat, 1)).granted
        assert relay.connections == tries, "sends in the meantime do not wait for Redis"
        now[0] += 5.0
        assert (await limits.acquire_shared(TG, 12, 1)).granted
        assert relay.connections > tries, "after the pause one send tries Redis again"
    finally:
        await shared.close()


# --- two workers --------------------------------------------------------------------------------------


class TimedMessenger(RecordingMessenger):
    """Notes when each message went; every instance's messenger tells the same condition."""

    def __init__(self, changed: asyncio.Condition, stamps: list[float]) -> None:
        super().__init__()
        self.changed = changed
        self.stamps = stamps

    async def send(
        self, chat_id: int, message: Outgoing, reply_to: int | None, nonce: int, progress: Progress
    ) -> list[int]:
        ids = await super().send(chat_id, message, reply_to, nonce, progress)
        self.stamps.append(time.monotonic())
        async with self.changed:
            self.changed.notify_all()
        return ids


async def test_two_workers_sharing_redis_send_no_more_than_the_global_rate_together(
    db: Database, database_backend: Backend, tmp_path: Path, instance: Instance
) -> None:
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second_url = await asyncio.to_thread(database_backend.create, second_dir, migrated=True)
    second_db = Database(second_url)
    changed = asyncio.Condition()
    stamps: list[float] = []
    clock = SystemClock()
    workers: list[DeliveryWorker] = []
    messengers: list[TimedMessenger] = []
    for database in (db, second_db):
        messenger = TimedMessenger(changed, stamps)
        messengers.append(messenger)
        # A long poll: after the first round a worker moves only when the limiter's window opens.
        workers.append(
            DeliveryWorker(
                database, {TG: messenger}, clock, poll_seconds=30, limiter=instance(telegram_global=4)
            )
        )
        outbox = Outbox(database, clock)
        for chat in range(6):
            await queue(outbox, CITIZEN + chat, Outgoing(f"note {chat}"))
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        started = time.monotonic()
        async with changed:
            await asyncio.wait_for(changed.wait_for(lambda: len(stamps) == 12), timeout=15.0)
        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
        await second_db.close()
        await asyncio.to_thread(database_backend.drop, second_url)
    assert [len(messenger.sent) for messenger in messengers] == [6, 6]
    # Twelve messages at four a second: three windows. Each worker alone would send its six in two.
    assert crowded(stamps, 4, 1.0 - STAMP_SLACK) == []
    assert elapsed >= 2.0 - STAMP_SLACK


# --- settings and wiring ----------------------------------------------------------------------------------


def test_redis_url_is_optional_checked_and_never_shown() -> None:
    assert Settings(_env_file=None, redis_url="  ").redis_url is None  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="redis://"):
        Settings(_env_file=None, redis_url="http://127.0.0.1:6379")  # type: ignore[call-arg]
    settings = Settings(_env_file=None, redis_url="redis://:hunter2@cache:6379/0")  # type: ignore[call-arg]
    assert "hunter2" not in repr(settings)
    assert settings.redis_key_prefix == "civicdesk:rl"


async def test_the_app_shares_its_limiter_through_redis_when_configured(
    database_url: str, routing: Routing, redis: Redis, prefix: str
) -> None:
    settings = make_settings(
        database_url, "http://127.0.0.1:9", redis_url=redis_url(), redis_key_prefix=prefix
    )
    app = App(settings, routing)
    try:
        assert app.shared_limits is not None
        assert app.worker.limiter is app.limiter and app.limiter.shared is app.shared_limits
        assert (await app.limiter.acquire_shared(TG, CITIZEN, 1)).granted
        assert await redis.exists(f"{prefix}:tg:global") == 1
    finally:
        await app.stop()
    plain = App(make_settings(database_url, "http://127.0.0.1:9"), routing)
    try:
        assert plain.shared_limits is None and plain.limiter.shared is None
    finally:
        await plain.stop()
