"""Atomic read-modify-write of one JSON document in Redis (WATCH/MULTI, retried on conflict),
acknowledged once replicated (``redis_replication``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from modfactory.redis_replication import read_history, replicated

M = TypeVar("M", bound=BaseModel)


async def update_document(
    redis: Redis,
    key: str,
    load: Callable[[bytes | None], M],
    change: Callable[[M], bool],
    *,
    guard: Callable[[Pipeline, M], Awaitable[None]] | None = None,
    also: Callable[[Pipeline, M], None] | None = None,
) -> tuple[M, bool]:
    """``load`` the document at ``key``, apply ``change`` and write it back atomically.

    ``change`` returns False to leave the document untouched; a concurrent writer makes
    the whole step run again on the new value, so no update is ever lost. ``guard`` may
    WATCH and read more keys after the change (and raise to refuse it); ``also`` queues
    more writes into the same transaction. Either way it returns once the replicas the
    client asks for hold the document as returned (NotReplicated else: not acknowledged).
    """
    while True:
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                history = await read_history(pipe, redis)
                document = load(await pipe.get(key))
                if not change(document):
                    await pipe.unwatch()
                    # acted on, so not to be lost
                    await replicated(redis, f"the read of {key}", history)
                    return document, False
                if guard is not None:
                    await guard(pipe, document)
                pipe.multi()
                pipe.set(key, document.model_dump_json())
                if also is not None:
                    also(pipe, document)
                await pipe.execute()
            except WatchError:
                continue
        await replicated(redis, f"the write of {key}", history)
        return document, True
