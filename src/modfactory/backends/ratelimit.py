"""Request rate limits: in-process, or shared by every worker through Redis.

A limiter has named buckets, each with a rate (requests per second); a request names the
buckets it counts against (every Mistral request counts against ``api``, classify and
moderate calls against ``classify`` too) and waits until all of them allow it. Each
request reserves a slot; slots are ``SPACING / rate`` seconds apart. A caller that wakes
up more than ``LATE`` seconds after its slot (a busy event loop) reserves a new one rather
than send late, so requests reach the API at most ~``LATE`` after their slots and no
one-second window ever holds more than ``rate`` of them. ``hold_off`` (a 429's
Retry-After) makes every later request wait, in every process sharing the limiter.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("modfactory.backends.ratelimit")
SPACING = 1.2  # slots 20 % further apart than the rate: room for LATE plus transit under load
LATE = 0.04  # a caller this late for its slot takes another


class RateLimiter:
    """In-process limiter (one asyncio loop); what a backend uses when no Redis is shared."""

    def __init__(self, rates: Mapping[str, float | None]) -> None:
        self.intervals = {name: SPACING / rate for name, rate in rates.items() if rate}
        self._next: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def wait(self, *buckets: str) -> None:
        """Sleep until a request counted against ``buckets`` may leave."""
        limited = [b for b in buckets if b in self.intervals]
        while limited:
            async with self._lock:
                now = time.monotonic()
                start = max([now, *(self._next.get(b, 0.0) for b in limited)])
                for bucket in limited:
                    self._next[bucket] = start + self.intervals[bucket]
            if await _slept_until(start):
                return

    async def hold_off(self, seconds: float) -> None:
        """No request of any bucket leaves in the next ``seconds``."""
        until = time.monotonic() + seconds
        for bucket in self.intervals:
            self._next[bucket] = max(self._next.get(bucket, 0.0), until)


# Each request reserves the next free slot in all its buckets at once (GCRA with no
# burst): the slot is the latest of now and each bucket's next-free time, which then moves
# one interval past the slot. Times are Redis's own clock, in microseconds, so processes on
# different machines agree. Returns how long the caller must wait before sending. Every
# grant is logged as "reserved-at:slot:limiter" in ``<bucket>:granted`` (the latest
# LOG_LENGTH): the limiters' own record of what they let leave, to audit or test exactly.
LOG_LENGTH = 1000
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = now
for i, key in ipairs(KEYS) do
  local free = tonumber(redis.call('GET', key) or '0')
  if free > start then start = free end
end
for i, key in ipairs(KEYS) do
  local free = start + tonumber(ARGV[i])
  redis.call('SET', key, string.format('%.0f', free), 'PX', math.ceil((free - now) / 1000) + 1000)
  redis.call('LPUSH', key .. ':granted', string.format('%.0f:%.0f:', now, start) .. ARGV[#ARGV])
  redis.call('LTRIM', key .. ':granted', 0, tonumber(ARGV[#ARGV - 1]) - 1)
end
return string.format('%.0f', start - now)
"""

# Push every bucket's next-free time to at least now + ARGV[1] microseconds (logged as
# "from:until" in ``<namespace>:held``).
_HOLD_OFF = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_ = now + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local free = tonumber(redis.call('GET', key) or '0')
  if until_ > free then
    redis.call('SET', key, string.format('%.0f', until_), 'PX', math.ceil(ARGV[1] / 1000) + 1000)
  end
end
redis.call('LPUSH', ARGV[2], string.format('%.0f:%.0f', now, until_))
redis.call('LTRIM', ARGV[2], 0, tonumber(ARGV[3]) - 1)
return 0
"""


class Grant(NamedTuple):
    """A request a shared limiter let leave, in seconds of Redis's clock."""

    reserved: float  # when its slot was reserved
    slot: float  # when it could leave
    limiter: str  # which limiter (process) reserved it


class SharedRateLimiter:
    """The same limits for every process on one Redis: keys ``<namespace>:<bucket>``.

    ``namespace`` should identify the API account (never contain its key). When Redis
    cannot be reached, requests fall back to an in-process limiter rather than fail.
    """

    def __init__(self, redis: Redis, namespace: str, rates: Mapping[str, float | None]) -> None:
        self.redis = redis
        self.namespace = namespace
        self.intervals = {name: SPACING / rate for name, rate in rates.items() if rate}
        self.fallback = RateLimiter(rates)
        self.name = secrets.token_hex(4)  # names this limiter's grants in the log
        self._reserve = redis.register_script(_RESERVE)
        self._hold_off = redis.register_script(_HOLD_OFF)

    def _keys(self, buckets: tuple[str, ...]) -> list[str]:
        return [f"{self.namespace}:{b}" for b in buckets]

    async def granted(self, bucket: str) -> list[Grant]:
        """The latest requests let leave in ``bucket`` by any limiter, oldest first."""
        raw = await self.redis.lrange(f"{self.namespace}:{bucket}:granted", 0, -1)
        grants = []
        for item in reversed(raw):
            reserved, slot, name = item.decode().split(":")
            grants.append(Grant(int(reserved) / 1e6, int(slot) / 1e6, name))
        return grants

    async def held(self) -> list[tuple[float, float]]:
        """(from, until) of the latest pauses (a 429's Retry-After), oldest first, in
        seconds of Redis's clock."""
        raw = await self.redis.lrange(f"{self.namespace}:held", 0, -1)
        pairs = [item.decode().split(":") for item in reversed(raw)]
        return [(int(start) / 1e6, int(until) / 1e6) for start, until in pairs]

    async def wait(self, *buckets: str) -> None:
        limited = tuple(b for b in buckets if b in self.intervals)
        if not limited:
            return
        micros = [round(self.intervals[b] * 1_000_000) for b in limited]
        while True:
            try:
                delay = int(
                    await self._reserve(
                        keys=self._keys(limited), args=[*micros, LOG_LENGTH, self.name]
                    )
                )
            except (RedisError, OSError) as exc:
                log.warning("shared rate limit unavailable (%s); limiting in-process", exc)
                await self.fallback.wait(*limited)
                return
            if await _slept_until(time.monotonic() + delay / 1_000_000):
                return

    async def hold_off(self, seconds: float) -> None:
        await self.fallback.hold_off(seconds)
        try:
            await self._hold_off(
                keys=self._keys(tuple(self.intervals)),
                args=[round(seconds * 1_000_000), f"{self.namespace}:held", LOG_LENGTH],
            )
        except (RedisError, OSError) as exc:
            log.warning("could not share a rate-limit pause (%s)", exc)


async def _slept_until(slot: float) -> bool:
    """Sleep until ``slot`` (monotonic time); False when woken too late to use it."""
    if slot > time.monotonic():
        await asyncio.sleep(slot - time.monotonic())
    return time.monotonic() - slot <= LATE


Limiter = RateLimiter | SharedRateLimiter
