"""The rate limits' windows kept in Redis, so that several instances sending for one bot stay within
the platform's limits together rather than each on its own.

Each window is a sorted set of sends scored by the Redis server's clock (so the instances' clocks do
not matter); one Lua script checks and counts every window a send falls into at once, all or nothing.
The instances' own RateLimiters keep counting too: they hold an instance back without a round trip,
and they are what paces it while Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "civicdesk:rl"
# A Redis that does not answer within this long counts as unreachable: a send waits no longer for it.
DEFAULT_TIMEOUT: Final = 0.5
# While Redis is unreachable, one call in this many seconds tries it again; the others skip it.
DEFAULT_RETRY_SECONDS: Final = 1.0

MICROS: Final = 1_000_000

# KEYS: the windows the send falls into. ARGV: cost, a token naming this send's entries, then the limit
# and the length in microseconds of each window in KEYS' order.
# Returns {0, now} when the sends were counted, or {wait, now}: microseconds until they would fit, with
# nothing counted anywhere. `now` is the server's time in microseconds.
# Like RateLimiter's windows: a cost above a window's whole limit goes when that window is empty, and
# the sends beyond one window's worth are dated into the following windows.
ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local token = ARGV[2]
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local length = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - length)
  local count = redis.call('ZCARD', key)
  local excess = count + cost - limit
  if cost > limit then
    excess = count
  end
  if excess > 0 then
    local entry = redis.call('ZRANGE', key, excess - 1, excess - 1, 'WITHSCORES')
    local until_free = tonumber(entry[2]) + length - now
    if until_free > wait then
      wait = until_free
    end
  end
end
if wait > 0 then
  return {wait, now}
end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local length = tonumber(ARGV[2 + 2 * i])
  for n = 0, cost - 1 do
    redis.call('ZADD', key, now + math.floor(n / limit) * length, token .. ':' .. n)
  end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) + length - now) / 1000) + 1)
end
return {0, now}
"""

# KEYS: the windows a granted send was counted in. ARGV: its cost, its token, and the server time it was
# counted at (microseconds). Moves its entries to the server's time now, the moment of the platform's
# answer, as RateLimiter's Permit.finish does with its own.
REDATE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local token = ARGV[2]
local shift = now - tonumber(ARGV[3])
if shift <= 0 then
  return 0
end
for _, key in ipairs(KEYS) do
  for n = 0, cost - 1 do
    local member = token .. ':' .. n
    local score = redis.call('ZSCORE', key, member)
    if score then
      redis.call('ZADD', key, 'XX', tonumber(score) + shift, member)
    end
  end
  local ttl = redis.call('PTTL', key)
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl + math.ceil(shift / 1000))
  end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class SharedWindow:
    """One window as the instances share it: `name` tells it apart ("telegram:chat:42")."""

    name: str
    limit: int
    seconds: float


@dataclass(slots=True)
class SharedPermit:
    """Redis's answer: granted, or `wait` seconds before asking again. `at` is the server's time of the
    answer in seconds since the epoch."""

    wait: float
    at: float
    _owner: SharedLimits | None = None
    _keys: list[str] = field(default_factory=list)
    _cost: int = 0
    _token: str = ""
    _counted_us: int = 0

    @property
    def granted(self) -> bool:
        return self.wait <= 0.0

    def finish(self) -> None:
        """The send is over: its entries are re-dated to now, in the background (the caller's `finish`
        is synchronous); `SharedLimits.drain` waits for that."""
        owner, self._owner = self._owner, None
        if owner is not None and self.granted:
            owner.redate_later(self)


class SharedLimits:
    """Sliding windows in Redis that every instance configured with the same Redis and prefix shares."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix.rstrip(":")
        self.retry_seconds = retry_seconds
        self.monotonic = monotonic
        self._owns_client = owns_client
        self._acquire = client.register_script(ACQUIRE)
        self._redate = client.register_script(REDATE)
        # Set while Redis is unreachable: the outage was reported, and the next try waits for _retry_at.
        self.down = False
        self._retry_at = 0.0
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> SharedLimits:
        """A client of its own for `url` (redis://, rediss:// or unix://), closed by `close`. Each call
        tries once, briefly: a send should not wait long for Redis, and the local limits take over."""
        client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, prefix=prefix, retry_seconds=retry_seconds, owns_client=True)

    def key(self, window: SharedWindow) -> str:
        return f"{self.prefix}:{window.name}"

    async def acquire(self, windows: Sequence[SharedWindow], cost: int) -> SharedPermit | None:
        """Count `cost` sends in every window if each allows them, else in none; None when Redis cannot
        be asked, and the caller goes by its own limits."""
        if not windows or cost <= 0:
            return SharedPermit(0.0, 0.0)
        if self._skip():
            return None
        keys = [self.key(window) for window in windows]
        token = secrets.token_hex(8)
        args: list[int | str] = [cost, token]
        for window in windows:
            args += [window.limit, round(window.seconds * MICROS)]
        try:
            reply: Any = await self._acquire(keys=keys, args=args)
            wait_us, now_us = int(reply[0]), int(reply[1])
        except (RedisError, OSError) as error:
            self._failed(error)
            return None
        self._answered()
        if wait_us > 0:
            return SharedPermit(wait_us / MICROS, now_us / MICROS)
        return SharedPermit(0.0, now_us / MICROS, self, keys, cost, token, now_us)

    def redate_later(self, permit: SharedPermit) -> None:
        if self.down:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._redate_now(permit))
        except RuntimeError:
            return  # no loop to run it on: the entries keep the time they were counted at
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _redate_now(self, permit: SharedPermit) -> None:
        try:
            await self._redate(keys=permit._keys, args=[permit._cost, permit._token, permit._counted_us])
        except (RedisError, OSError) as error:
            self._failed(error)
        else:
            self._answered()

    async def drain(self) -> None:
        """Wait until the finished sends' entries are re-dated."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if self._owns_client:
            await self.client.aclose()

    def _skip(self) -> bool:
        if not self.down:
            return False
        now = self.monotonic()
        if now < self._retry_at:
            return True
        # This call tries Redis again; the ones made meanwhile skip it rather than each waiting for it.
        self._retry_at = now + self.retry_seconds
        return False

    def _failed(self, error: BaseException) -> None:
        self._retry_at = self.monotonic() + self.retry_seconds
        if not self.down:
            self.down = True
            log.warning(
                "shared rate limits: Redis is unreachable (%s); this instance keeps to its own limits "
                "until it answers again",
                error,
            )

    def _answered(self) -> None:
        if self.down:
            self.down = False
            log.info("shared rate limits: Redis answers again; the instances share their limits")
