"""Whether anyone works the queue: the latest worker heartbeat (arq's health-check key)
and the runs that wait while no worker is alive — read by ``modfactory runs`` and
``/healthz``."""

from __future__ import annotations

from datetime import UTC, datetime

from redis.asyncio import Redis

from modfactory.store.run import RunState
from modfactory.store.runs import RunStore

HEALTH_CHECK_SUFFIX = ":health-check"  # arq's key for a worker's heartbeat


async def worker_heartbeat(redis: Redis, queue_name: str) -> str | None:
    """The latest heartbeat of a worker on ``queue_name``, if one is recent (arq keeps the
    key for one health-check interval plus a second)."""
    raw = await redis.get(queue_name + HEALTH_CHECK_SUFFIX)
    return raw.decode() if raw else None


async def queued_without_worker(
    redis: Redis, queue_name: str, bound: float, now: datetime | None = None
) -> list[tuple[str, float]]:
    """(run id, seconds queued) of each run queued longer than ``bound`` seconds while no
    worker is alive (no recent heartbeat): nothing will pick them up until one starts."""
    if await worker_heartbeat(redis, queue_name) is not None:
        return []
    now = now or datetime.now(UTC)
    waiting = []
    for run in await RunStore(redis, queue_name).active():
        queued_for = (now - run.updated_at).total_seconds()
        if run.state == RunState.QUEUED and queued_for > bound:
            waiting.append((run.id, queued_for))
    return waiting
