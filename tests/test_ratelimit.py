"""One rate limit for every process sharing a Redis (real redis-server), and its fallback."""

from __future__ import annotations

import asyncio
import itertools
import time

from redis.asyncio import Redis

from modfactory.backends.ratelimit import SPACING, RateLimiter, SharedRateLimiter
from modfactory.store.embedded_redis import free_port


def most_in_one_second(times: list[float]) -> int:
    times, peak, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


def all_apart(slots: list[float], interval: float) -> bool:
    """Consecutive slots at least ``interval`` apart (to the microsecond they are kept in)."""
    ordered = sorted(slots)
    return all(b - a >= interval - 1e-6 for a, b in itertools.pairwise(ordered))


async def test_two_processes_sharing_a_redis_share_one_limit(redis_db: str) -> None:
    """Two limiters on two connections (two workers): together never above the rate."""
    connections = [Redis.from_url(redis_db), Redis.from_url(redis_db)]
    limiters = [SharedRateLimiter(r, "t:rate:acct", {"api": 10}) for r in connections]
    sent: list[float] = []

    async def request(limiter: SharedRateLimiter) -> None:
        await limiter.wait("api")
        sent.append(time.monotonic())

    start = time.monotonic()
    await asyncio.gather(*(request(limiters[i % 2]) for i in range(25)))
    granted = await limiters[0].granted("api")  # the limiters' own record
    slots = [g.slot for g in granted]
    assert len(slots) == 25 and {g.limiter for g in granted} == {x.name for x in limiters}
    assert all_apart(slots, SPACING / 10)  # exactly, whatever the load on this machine
    assert time.monotonic() - start >= 24 * SPACING / 10 - 0.05  # they waited for them
    for r in connections:
        await r.aclose()


async def test_the_classify_share_is_stricter_and_both_buckets_count(redis_db: str) -> None:
    redis = Redis.from_url(redis_db)
    limiter = SharedRateLimiter(redis, "t:rate:b", {"api": 20, "classify": 4})
    sent: list[tuple[str, float]] = []

    async def request(kind: str) -> None:
        await limiter.wait("api", *(["classify"] if kind == "classify" else []))
        sent.append((kind, time.monotonic()))

    await asyncio.gather(*(request("classify") for _ in range(8)), request("poll"))
    classify = [t for kind, t in sent if kind == "classify"]
    assert most_in_one_second(classify) <= 4
    assert max(classify) - min(classify) >= 7 * SPACING / 4 - 0.05
    await redis.aclose()


async def test_a_429_pause_is_shared_with_every_process(redis_db: str) -> None:
    first, second = Redis.from_url(redis_db), Redis.from_url(redis_db)
    got_429 = SharedRateLimiter(first, "t:rate:c", {"api": 50})
    other = SharedRateLimiter(second, "t:rate:c", {"api": 50})
    await got_429.hold_off(0.6)
    start = time.monotonic()
    await other.wait("api")
    assert time.monotonic() - start >= 0.55
    [(held_from, held_until)] = await other.held()
    [grant] = await other.granted("api")
    assert abs(held_until - held_from - 0.6) < 1e-6 and grant.reserved >= held_from
    assert grant.slot >= held_until and grant.limiter == other.name
    await first.aclose()
    await second.aclose()


async def test_without_redis_requests_are_still_limited_in_process() -> None:
    unreachable = Redis(port=free_port(), socket_connect_timeout=0.2)
    limiter = SharedRateLimiter(unreachable, "t:rate:d", {"api": 10})
    start = time.monotonic()
    for _ in range(4):
        await limiter.wait("api")
    assert time.monotonic() - start >= 3 * SPACING / 10 - 0.02
    await unreachable.aclose()


async def test_the_in_process_limiter_and_no_limit() -> None:
    limited, free = RateLimiter({"api": 20}), RateLimiter({"api": None})
    start = time.monotonic()
    for _ in range(5):
        await free.wait("api")
    assert time.monotonic() - start < 0.05
    for _ in range(5):
        await limited.wait("api")
    assert time.monotonic() - start >= 4 * SPACING / 20 - 0.02
