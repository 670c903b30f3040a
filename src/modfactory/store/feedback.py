"""Moderators' corrections, as a log in Redis: per model name, a sorted set of corrections
by sequence number (``<prefix>:feedback:<name>``), its counter, and the highest number
compacted away (``trim``: the artifact store holds what is older, see ``stages.feedback``;
a Redis that lost its data is put back in step by ``restore``). A correction sent again
with the same ``request_id`` is stored once and answered with the first one's id. Also
here: the per-token rate of corrections.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from modfactory.redis_replication import note_history, replicated

REQUEST_IDS_KEPT = 7 * 86_400  # seconds a request id is remembered (retries come sooner)

_ADD = """
if KEYS[3] ~= "" then
  local prior = redis.call("GET", KEYS[3])
  if prior then return {0, prior} end
end
local seq = redis.call("INCR", KEYS[2])
redis.call("ZADD", KEYS[1], seq, ARGV[1])
redis.call("SADD", KEYS[4], ARGV[3])
if KEYS[3] ~= "" then redis.call("SET", KEYS[3], ARGV[2], "EX", ARGV[4]) end
return {seq, ARGV[2]}
"""


_RESTORE = """
if redis.call("EXISTS", KEYS[3]) == 1 then return 0 end
local base = tonumber(ARGV[1])
local entries = redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES")
for i = 1, #entries, 2 do
  redis.call("ZADD", KEYS[1], tonumber(entries[i + 1]) + base, entries[i])
end
redis.call("INCRBY", KEYS[2], base)
redis.call("SET", KEYS[3], base)
return 1
"""


class Correction(BaseModel):
    """One text as a person labelled it: the labels named are flagged, the others not."""

    id: str = Field(default_factory=lambda: f"fb-{secrets.token_hex(8)}")
    seq: int = 0  # its place in the model name's log (given when it is stored)
    model_name: str
    text: str
    labels: list[str]
    reviewer: str | None = None
    at: datetime
    request_id: str | None = None
    via: Literal["api", "import", "review", "adjudication"] = "api"


class FeedbackLog:
    """The corrections of every model name, in the order they arrived."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._restore = redis.register_script(_RESTORE)

    def _log(self, model_name: str) -> str:
        return f"{self.prefix}:feedback:{model_name}"

    def _seq(self, model_name: str) -> str:
        return f"{self.prefix}:feedback-seq:{model_name}"

    def _trimmed(self, model_name: str) -> str:
        return f"{self.prefix}:feedback-trimmed:{model_name}"

    async def add(self, correction: Correction) -> tuple[str, bool]:
        """Store ``correction`` (its ``seq`` is given here): (its id, stored now?). A
        ``request_id`` seen before stores nothing and answers the first one's id."""
        name = correction.model_name
        request_key = ""
        if correction.request_id:
            digest = hashlib.sha256(correction.request_id.encode()).hexdigest()[:32]
            request_key = f"{self.prefix}:feedback-request:{name}:{digest}"
        body = correction.model_dump_json(exclude={"seq"})
        keys = [self._log(name), self._seq(name), request_key, f"{self.prefix}:feedback-models"]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.eval(_ADD, len(keys), *keys, body, correction.id, name, REQUEST_IDS_KEPT)
            noted = note_history(pipe, self.redis)
            answers = await pipe.execute()
        (seq, stored_id), history = answers[0], answers[-1] if noted else None
        await replicated(self.redis, f"correction {correction.id}", history)
        return stored_id.decode() if isinstance(stored_id, bytes) else stored_id, seq != 0

    async def count(self, model_name: str) -> int:
        """How many corrections ``model_name`` ever got (the last sequence number)."""
        return int(await self.redis.get(self._seq(model_name)) or 0)

    async def trimmed(self, model_name: str) -> int:
        """The highest sequence number compacted away from the log (0: none)."""
        return int(await self.redis.get(self._trimmed(model_name)) or 0)

    async def after(self, model_name: str, seq: int) -> list[Correction]:
        """The corrections still in the log numbered above ``seq``, oldest first."""
        log = self._log(model_name)
        raw = await self.redis.zrangebyscore(log, f"({seq}", "+inf", withscores=True)
        return [
            Correction.model_validate_json(body).model_copy(update={"seq": int(n)})
            for body, n in raw
        ]

    async def restore(self, model_name: str, compacted: int) -> bool:
        """After Redis lost its data (no compaction mark, yet a snapshot up to ``compacted``
        exists): renumber the corrections that came since after the snapshot's, and go on
        counting from there. True if it did (a second call does nothing)."""
        keys = [self._log(model_name), self._seq(model_name), self._trimmed(model_name)]
        return bool(await self._restore(keys=keys, args=[compacted]))

    async def trim(self, model_name: str, upto: int) -> None:
        """Forget the corrections numbered up to ``upto`` (they are compacted elsewhere)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(self._log(model_name), "-inf", upto)
            pipe.set(self._trimmed(model_name), upto)
            await pipe.execute()

    async def model_names(self) -> list[str]:
        names = await self.redis.smembers(f"{self.prefix}:feedback-models")
        return sorted(n.decode() for n in names)

    async def lock(self, model_name: str, seconds: int) -> bool:
        """Take the compaction lock of ``model_name`` (one compaction at a time)."""
        key = f"{self.prefix}:feedback-compacting:{model_name}"
        return bool(await self.redis.set(key, 1, nx=True, ex=seconds))

    async def unlock(self, model_name: str) -> None:
        await self.redis.delete(f"{self.prefix}:feedback-compacting:{model_name}")


class RateLimit:
    """At most ``per_minute`` calls per caller and clock minute, over every replica."""

    def __init__(self, redis: Redis, prefix: str, name: str, per_minute: int) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:rate:{name}:"
        self.per_minute = per_minute

    async def allow(self, caller: str) -> bool:
        """Count one call of ``caller`` (a token's hash); False beyond the limit."""
        key = f"{self.prefix}{caller}:{int(time.time() // 60)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            calls, _ = await pipe.execute()
        return calls <= self.per_minute
