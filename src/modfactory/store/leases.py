"""Which worker holds which job, and whether that worker is still alive.

arq marks a running job with an in-progress key that lives its longest timeout + 10 s
(here MODFACTORY_JOB_TIMEOUT + 10 s: a scoring job's step, allowed longer, renews its mark
while it runs, ``WorkerLease.keeping``);
a worker killed mid-job (SIGKILL, a lost machine, an evicted pod) leaves the key behind,
and nobody takes the job again until it expires — an hour at the default timeouts.
Here each worker holds a lease (``<queue>:worker:<id>``, renewed every third of
MODFACTORY_WORKER_LEASE seconds, and noted in ``<queue>:workers``: how many are alive) and
notes itself as the holder of each job it starts (``<queue>:holder:<job id>``, removed
when the job ends). The reconciler asks
``release_if_orphaned``: a job in progress whose holder's lease is found expired in two
rounds in a row is released — its in-progress key deleted, so the next worker that polls
the queue takes it up.

A job whose holder is not known (the worker died between arq's mark and its own note)
keeps arq's expiry: nothing is released on a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

log = logging.getLogger("modfactory.store.leases")


def new_worker_id() -> str:
    return secrets.token_hex(6)


def _lease_key(queue_name: str, worker_id: str) -> str:
    return f"{queue_name}:worker:{worker_id}"


def _fleet_key(queue_name: str) -> str:  # worker id -> when its lease ends (ms)
    return f"{queue_name}:workers"


async def live_workers(redis: Redis, queue_name: str) -> int:
    """How many workers hold a lease now (those lost long ago are forgotten)."""
    now = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(_fleet_key(queue_name), "-inf", now - 3_600_000)
        pipe.zcount(_fleet_key(queue_name), now, "+inf")
        return int((await pipe.execute())[1])


def _holder_key(queue_name: str, job_id: str) -> str:
    return f"{queue_name}:holder:{job_id}"


class WorkerLease:
    """A worker's lease, renewed in the background while the worker lives."""

    def __init__(self, redis: Redis, queue_name: str, ttl: float) -> None:
        self.redis, self.queue_name, self.ttl = redis, queue_name, ttl
        self.worker_id = new_worker_id()
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return _lease_key(self.queue_name, self.worker_id)

    async def start(self) -> None:
        await self._renew()
        self._task = asyncio.create_task(self._keep_renewing())

    async def _renew(self) -> None:
        until = int((time.time() + self.ttl) * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, 1, px=int(self.ttl * 1000))
            pipe.zadd(_fleet_key(self.queue_name), {self.worker_id: until})
            await pipe.execute()

    async def _keep_renewing(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._renew()
            except RedisError as exc:  # Redis away: try again next time
                log.debug("could not renew worker lease %s: %s", self.worker_id, exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError):
            await self.redis.delete(self.key)
            await self.redis.zrem(_fleet_key(self.queue_name), self.worker_id)

    async def hold(self, job_id: str, for_seconds: float) -> None:
        """Note this worker as the holder of ``job_id`` (as long as arq's mark lives)."""
        await self.redis.set(
            _holder_key(self.queue_name, job_id), self.worker_id, px=int(for_seconds * 1000)
        )

    async def let_go(self, job_id: str) -> None:
        await self.redis.delete(_holder_key(self.queue_name, job_id))

    @contextlib.asynccontextmanager
    async def keeping(self, job_id: str, for_seconds: float) -> AsyncIterator[None]:
        """While the block runs, arq's in-progress mark of ``job_id`` and this worker's
        note as its holder are renewed every third of ``for_seconds``: a job allowed to
        run longer than the mark lives (a scoring job's step) is not started again by
        another worker meanwhile, and a dead worker's job is not held longer than that."""

        async def renew() -> None:
            every, ms = for_seconds / 3, int(for_seconds * 1000)
            while True:
                await asyncio.sleep(every)
                with contextlib.suppress(RedisError):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.pexpire(in_progress_key_prefix + job_id, ms)
                        pipe.pexpire(_holder_key(self.queue_name, job_id), ms)
                        await pipe.execute()

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def release_if_orphaned(redis: Redis, queue_name: str, job_id: str) -> str | None:
    """Release ``job_id`` if it is in progress on a worker whose lease was found expired in
    two rounds in a row (a Redis restart lets every lease lapse at once; a live worker
    renews its lease before the next round); the lost worker's id when it was released."""
    holder_key = _holder_key(queue_name, job_id)
    suspect_key = f"{queue_name}:suspect:{job_id}"
    in_progress = in_progress_key_prefix + job_id
    holder = await redis.get(holder_key)
    if holder is None:
        return None
    worker_id = holder.decode()
    lease = _lease_key(queue_name, worker_id)
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(holder_key, in_progress, lease, suspect_key)
            if await pipe.get(holder_key) != holder or not await pipe.exists(in_progress):
                return None
            alive = await pipe.exists(lease)
            seen_lost = await pipe.get(suspect_key) == holder
            pipe.multi()
            if alive:
                pipe.delete(suspect_key)
            elif not seen_lost:  # released next round, if still lost then
                pipe.set(suspect_key, holder, px=int(await _job_mark_ms(redis, in_progress)))
            else:
                pipe.delete(in_progress, holder_key, suspect_key)
            await pipe.execute()
        except WatchError:  # the job moved meanwhile: look again next round
            return None
    return worker_id if not alive and seen_lost else None


async def _job_mark_ms(redis: Redis, in_progress: str) -> int:
    """How long arq's in-progress mark still lives (ms; at least one second)."""
    return max(1000, await redis.pttl(in_progress))
