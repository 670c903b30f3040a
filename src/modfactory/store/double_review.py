"""Reviews that check each other (MODFACTORY_REVIEW_OVERLAP), per model name in Redis:

- ``<prefix>:review-hold:<name>``: the texts (by SHA-256) held out of training — a double
  text from its first answer until a second agrees, or a disputed one until it is settled;
- ``<prefix>:disputes:<name>``: the disputed texts (item id -> ``Dispute``), open or settled;
- ``<prefix>:review-pairs:<name>``: both answers of every text two people answered, for
  their agreement (``evaluation.agreement``);
- ``<prefix>:review-counts:<name>``: texts answered, per reviewer.

Writes are acknowledged once replicated: a hold a failover loses would let a disputed text
into training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import WatchError

from modfactory.redis_replication import note_history, replicated

PAIRS_KEPT = 100_000  # the newest pairs of a model name, for agreement


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Pair(BaseModel):
    """One text, two people's answers (the labels each flagged)."""

    item_id: str
    first: str
    first_labels: list[str]
    second: str
    second_labels: list[str]
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Dispute(BaseModel):
    """A text two people answered differently: held out of training until settled."""

    item_id: str
    model_name: str
    text: str
    answers: dict[str, list[str]]
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    settled_by: str | None = None
    settled_labels: list[str] | None = None
    settled_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.settled_by is None


class DisputeSettled(ValueError):
    """The dispute is settled already, or there is none; the message says which."""


class DoubleReviews:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, what: str, name: str) -> str:
        return f"{self.prefix}:{what}:{name}"

    async def _write(self, what: str, fill: Callable[[Any], None]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            fill(pipe)
            noted = note_history(pipe, self.redis)
            answers = await pipe.execute()
        await replicated(self.redis, what, answers[-1] if noted else None)

    async def hold(self, name: str, text: str) -> None:
        key = self._key("review-hold", name)
        await self._write("a review hold", lambda pipe: pipe.sadd(key, text_digest(text)))

    async def release(self, name: str, text: str) -> None:
        key = self._key("review-hold", name)
        await self._write("a review hold", lambda pipe: pipe.srem(key, text_digest(text)))

    async def held(self, name: str) -> set[str]:
        """The digests of the texts held out of training."""
        return {d.decode() for d in await self.redis.smembers(self._key("review-hold", name))}

    async def answered(self, name: str, reviewer: str) -> None:
        await self.redis.hincrby(self._key("review-counts", name), reviewer, 1)

    async def counts(self, name: str) -> dict[str, int]:
        found = await self.redis.hgetall(self._key("review-counts", name))
        return {k.decode(): int(v) for k, v in found.items()}

    async def pair(self, name: str, pair: Pair) -> None:
        key = self._key("review-pairs", name)

        def fill(pipe: Any) -> None:
            pipe.rpush(key, pair.model_dump_json())
            pipe.ltrim(key, -PAIRS_KEPT, -1)

        await self._write("a review pair", fill)

    async def pairs(self, name: str) -> list[Pair]:
        raws = await self.redis.lrange(self._key("review-pairs", name), 0, -1)
        return [Pair.model_validate_json(raw) for raw in raws]

    async def dispute(self, dispute: Dispute) -> None:
        key = self._key("disputes", dispute.model_name)
        body = dispute.model_dump_json()
        await self._write("a dispute", lambda pipe: pipe.hset(key, dispute.item_id, body))

    async def disputes(self, name: str) -> list[Dispute]:
        """Every dispute of ``name``, open ones first, oldest first within each."""
        found = await self.redis.hvals(self._key("disputes", name))
        disputes = [Dispute.model_validate_json(raw) for raw in found]
        return sorted(disputes, key=lambda d: (not d.open, d.at))

    async def settle(self, name: str, item_id: str, by: str, labels: list[str]) -> Dispute:
        """Mark the dispute settled with ``labels`` (the caller stores them as the text's
        correction, then releases the hold); DisputeSettled if it is not open."""
        key = self._key("disputes", name)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, item_id)
                    if raw is None:
                        raise DisputeSettled(f"no dispute {item_id!r} of model {name!r}")
                    dispute = Dispute.model_validate_json(raw)
                    if not dispute.open:
                        raise DisputeSettled(
                            f"dispute {item_id} was settled by {dispute.settled_by} already"
                        )
                    dispute.settled_by, dispute.settled_labels = by, sorted(labels)
                    dispute.settled_at = datetime.now(UTC)
                    pipe.multi()
                    pipe.hset(key, item_id, dispute.model_dump_json())
                    noted = note_history(pipe, self.redis)
                    answers = await pipe.execute()
                except WatchError:
                    continue
            await replicated(self.redis, "a settled dispute", answers[-1] if noted else None)
            return dispute
