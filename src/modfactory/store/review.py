"""The review queue: per model name, served texts waiting for a person, most uncertain
first. A sorted set (``<prefix>:review:<name>``: item id -> priority, lower first) beside a
hash of the items; the queue keeps its ``capacity`` most urgent items (the least uncertain
go first), an item older than ``max_age`` is dropped when met. An item is handed out under
a lease (``SET NX`` with an expiry), so two reviewers never get the same one; answering it
removes it. An item's id is ``<answer id>.<index>``: the served answer and its text.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from redis.asyncio import Redis

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


class ReviewQueue:
    def __init__(self, redis: Redis, prefix: str, capacity: int, max_age: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.capacity = capacity
        self.max_age = max_age
        self._add = redis.register_script(_ADD)

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}:review:{name}", f"{self.prefix}:review-items:{name}"

    def _lease(self, name: str, item_id: str) -> str:
        return f"{self.prefix}:review-lease:{name}:{item_id}"

    async def add(self, items: list[ReviewItem]) -> None:
        """Queue ``items`` (random picks first, then by uncertainty), within capacity."""
        for item in items:
            queue, bodies = self._keys(item.model_name)
            priority = -1.0 if item.random else item.uncertainty
            await self._add(
                keys=[queue, bodies],
                args=[priority, item.id, item.model_dump_json(), self.capacity],
            )

    async def lease(self, name: str, limit: int, seconds: float) -> list[ReviewItem]:
        """Up to ``limit`` items no one holds, most urgent first, each leased to the caller
        for ``seconds``; items past ``max_age`` are dropped on the way."""
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
                lease = self._lease(name, item.id)
                if await self.redis.set(lease, 1, nx=True, px=int(seconds * 1000)):
                    found.append(item.model_copy(update={"lease_until": until}))
                    if len(found) == limit:
                        break
        return found

    async def get(self, name: str, item_id: str) -> ReviewItem | None:
        body = await self.redis.hget(self._keys(name)[1], item_id)
        return ReviewItem.model_validate_json(body) if body else None

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
