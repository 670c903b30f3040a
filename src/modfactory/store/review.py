"""The review queue: per model name, served texts waiting for a person, most uncertain
first. A sorted set (``<prefix>:review:<name>``: item id -> priority, lower first) beside a
hash of the items; the queue keeps its ``capacity`` most urgent items (the least uncertain
go first), an item older than ``max_age`` is dropped when met. An item is handed out under
a lease (``SET NX`` with an expiry), so two reviewers never hold the same one at once;
answering it removes it. With an ``overlap`` share, that share of items (by a hash of
their id) is for two different people: the first answer is kept on the item and the item
goes back to the queue for someone else; the second ends it, agreed or disputed
(``answer``). An item's id is ``<answer id>.<index>``: the served answer and its text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import WatchError

_ADD = """
redis.call("ZADD", KEYS[1], ARGV[1], ARGV[2])
redis.call("HSET", KEYS[2], ARGV[2], ARGV[3])
local over = redis.call("ZCARD", KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local gone = redis.call("ZPOPMAX", KEYS[1], over)
  for i = 1, #gone, 2 do redis.call("HDEL", KEYS[2], gone[i]) end
end
return 1
"""


class ReviewItem(BaseModel):
    """A served text as the champion answered it, waiting for a person's labels."""

    id: str
    model_name: str
    text: str
    scores: dict[str, float]
    flags: dict[str, bool]
    champion_run: str
    at: datetime
    uncertainty: float  # the smallest distance of a label's score from its threshold
    random: bool = False  # picked at random (an unbiased sample), not for its uncertainty
    lease_until: datetime | None = None  # set when handed out
    double: bool = False  # for two different people (MODFACTORY_REVIEW_OVERLAP)
    answers: dict[str, list[str]] = Field(default_factory=dict)  # reviewer -> labels flagged


@dataclass(frozen=True)
class Answered:
    """What an answer did to its item: the only answer (``single``), the first of two
    (``first``; the item waits for another person), or the second (``agreed`` or
    ``disputed``: ``other`` answered ``their`` labels)."""

    kind: Literal["single", "first", "agreed", "disputed"]
    item: ReviewItem
    other: str | None = None
    their: tuple[str, ...] = ()


def overlap_share(item_id: str) -> float:
    """Where an item falls in [0, 1): the same for every process (a hash of its id)."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) / 2**32


class ReviewQueue:
    def __init__(
        self, redis: Redis, prefix: str, capacity: int, max_age: float, overlap: float = 0.0
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.capacity = capacity
        self.max_age = max_age
        self.overlap = overlap
        self._add = redis.register_script(_ADD)

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}:review:{name}", f"{self.prefix}:review-items:{name}"

    def _lease(self, name: str, item_id: str) -> str:
        return f"{self.prefix}:review-lease:{name}:{item_id}"

    async def add(self, items: list[ReviewItem]) -> None:
        """Queue ``items`` (random picks first, then by uncertainty), within capacity."""
        for item in items:
            item = item.model_copy(update={"double": overlap_share(item.id) < self.overlap})
            queue, bodies = self._keys(item.model_name)
            priority = -1.0 if item.random else item.uncertainty
            await self._add(
                keys=[queue, bodies],
                args=[priority, item.id, item.model_dump_json(), self.capacity],
            )

    async def lease(
        self, name: str, limit: int, seconds: float, reviewer: str | None = None
    ) -> list[ReviewItem]:
        """Up to ``limit`` items no one holds, most urgent first, each leased to the caller
        for ``seconds`` (never one ``reviewer`` answered already); items past ``max_age``
        are dropped on the way."""
        queue, bodies = self._keys(name)
        found: list[ReviewItem] = []
        start, oldest = 0, datetime.now(UTC) - timedelta(seconds=self.max_age)
        until = datetime.now(UTC) + timedelta(seconds=seconds)
        while len(found) < limit:
            ids = await self.redis.zrange(queue, start, start + 99)
            if not ids:
                break
            start += len(ids)
            for raw_id, body in zip(ids, await self.redis.hmget(bodies, ids), strict=True):
                item = ReviewItem.model_validate_json(body) if body else None
                if item is None or item.at < oldest:
                    await self.remove(name, raw_id.decode())
                    start -= 1
                    continue
                if reviewer is not None and reviewer in item.answers:
                    continue  # theirs is in: the second answer is someone else's
                lease = self._lease(name, item.id)
                if await self.redis.set(lease, 1, nx=True, px=int(seconds * 1000)):
                    found.append(item.model_copy(update={"lease_until": until}))
                    if len(found) == limit:
                        break
        return found

    async def get(self, name: str, item_id: str) -> ReviewItem | None:
        body = await self.redis.hget(self._keys(name)[1], item_id)
        return ReviewItem.model_validate_json(body) if body else None

    async def answer(
        self, name: str, item_id: str, reviewer: str, labels: list[str]
    ) -> Answered | None:
        """Record ``reviewer``'s answer (None: the item is gone — answered meanwhile, too
        old). A double item keeps its first answer and goes back to the queue; its second,
        by someone else, removes it."""
        queue, bodies = self._keys(name)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(bodies)
                    body = await pipe.hget(bodies, item_id)
                    if body is None:
                        await pipe.unwatch()
                        return None
                    item = ReviewItem.model_validate_json(body)
                    others = {r: a for r, a in item.answers.items() if r != reviewer}
                    pipe.multi()
                    if item.double and not others:
                        item.answers[reviewer] = sorted(labels)
                        pipe.hset(bodies, item_id, item.model_dump_json())
                        pipe.delete(self._lease(name, item_id))
                        done = Answered("first", item)
                    else:
                        pipe.zrem(queue, item_id)
                        pipe.hdel(bodies, item_id)
                        pipe.delete(self._lease(name, item_id))
                        done = _second(item, others, labels)
                    await pipe.execute()
                    return done
                except WatchError:
                    continue

    async def release(self, name: str, item_id: str) -> None:
        """Hand the item back (skipped): another reviewer may take it at once."""
        await self.redis.delete(self._lease(name, item_id))

    async def remove(self, name: str, item_id: str) -> None:
        """The item is answered (or too old): out of the queue."""
        queue, bodies = self._keys(name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(queue, item_id)
            pipe.hdel(bodies, item_id)
            pipe.delete(self._lease(name, item_id))
            await pipe.execute()

    async def size(self, name: str) -> int:
        return int(await self.redis.zcard(self._keys(name)[0]))


def _second(item: ReviewItem, others: dict[str, list[str]], labels: list[str]) -> Answered:
    if not item.double:
        return Answered("single", item)
    other, their = next(iter(others.items()))
    kind = "agreed" if sorted(their) == sorted(labels) else "disputed"
    return Answered(kind, item, other, tuple(their))  # type: ignore[arg-type]
