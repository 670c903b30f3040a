"""The model registry: per model name, its champion run and the history of promotions.

One JSON document per model name in Redis (``<prefix>:model:<name>``), changed only here,
atomically (``redis_json.update_document``, as the run store does). A run becomes champion
when it beats the champion on the same test file (``promotion.decide``), or by force;
``rollback`` restores the champion before the current one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from modfactory.redis_json import update_document


class Promotion(BaseModel):
    run_id: str
    model_id: str
    at: datetime
    reason: str


class ModelRecord(BaseModel):
    name: str
    champion: Promotion | None = None
    history: list[Promotion] = Field(default_factory=list)  # earlier champions, oldest first
    candidates: dict[str, str] = Field(default_factory=dict)  # run id -> why not promoted


class RegistryError(ValueError):
    """The registry cannot do that; the message says why."""


class ModelRegistry:
    def __init__(self, redis: Redis, prefix: str = "modfactory") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, name: str) -> str:
        return f"{self.prefix}:model:{name}"

    async def get(self, name: str) -> ModelRecord:
        raw = await self.redis.get(self._key(name))
        return ModelRecord.model_validate_json(raw) if raw else ModelRecord(name=name)

    async def names(self) -> list[str]:
        keys = await self.redis.keys(self._key("*"))
        prefix = len(self._key(""))
        return sorted((k.decode() if isinstance(k, bytes) else k)[prefix:] for k in keys)

    async def _update(self, name: str, change: Callable[[ModelRecord], Any]) -> ModelRecord:
        def load(raw: bytes | None) -> ModelRecord:
            return ModelRecord.model_validate_json(raw) if raw else ModelRecord(name=name)

        def always(record: ModelRecord) -> bool:
            change(record)
            return True

        return (await update_document(self.redis, self._key(name), load, always))[0]

    async def promote(self, name: str, run_id: str, model_id: str, reason: str) -> ModelRecord:
        """Make the run champion; the previous champion goes to the history."""

        def change(record: ModelRecord) -> None:
            if record.champion and record.champion.run_id == run_id:
                return
            if record.champion:
                record.history.append(record.champion)
            record.champion = Promotion(
                run_id=run_id, model_id=model_id, at=datetime.now(UTC), reason=reason
            )
            record.candidates.pop(run_id, None)

        return await self._update(name, change)

    async def keep_as_candidate(self, name: str, run_id: str, reason: str) -> ModelRecord:
        def change(record: ModelRecord) -> None:
            record.candidates[run_id] = reason

        return await self._update(name, change)

    async def rollback(self, name: str) -> ModelRecord:
        """Restore the previous champion; the current one becomes a candidate again."""

        def change(record: ModelRecord) -> None:
            if not record.history:
                raise RegistryError(f"model {name!r} has no earlier champion to roll back to")
            if record.champion:
                record.candidates[record.champion.run_id] = "rolled back"
            record.champion = record.history.pop()

        return await self._update(name, change)
