"""The model registry: per model name, its champion run and the history of promotions.

One JSON document per model name in Redis (``<prefix>:model:<name>``), changed atomically
by the rules of ``ModelRecord`` (``redis_json.update_document``, as the run store does):
here, and in the run store's transaction that finishes an evaluation. A run becomes champion
when it beats the champion on the same test file (``promotion.decide_promotion``), or by
force; ``rollback`` restores the champion before the current one. The evaluate stage records its
verdict in the transaction that finishes the run (``RunStore.finish_evaluation``), so a
run cancelled meanwhile, or measured against a champion that was replaced meanwhile, is
never promoted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from modfactory.redis_json import update_document

ROLLED_BACK = "rolled back"  # the candidate reason of a champion replaced by a rollback


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

    @property
    def champion_run(self) -> str | None:
        return self.champion.run_id if self.champion else None

    def promote(self, run_id: str, model_id: str, reason: str) -> None:
        """Make the run champion; the previous champion goes to the history."""
        if self.champion and self.champion.run_id == run_id:
            return
        if self.champion:
            self.history.append(self.champion)
        self.champion = Promotion(
            run_id=run_id, model_id=model_id, at=datetime.now(UTC), reason=reason
        )
        self.candidates.pop(run_id, None)

    def keep_as_candidate(self, run_id: str, reason: str) -> None:
        if self.champion_run != run_id:
            self.candidates[run_id] = reason

    def kept_runs(self) -> set[str]:
        """Runs that must outlive pruning: every run that is or was a champion — the
        champion, the earlier ones a rollback may restore, and those rolled back."""
        kept = {p.run_id for p in [*self.history, *filter(None, [self.champion])]}
        return kept | {r for r, why in self.candidates.items() if why == ROLLED_BACK}


def load_record(name: str, raw: bytes | None) -> ModelRecord:
    return ModelRecord.model_validate_json(raw) if raw else ModelRecord(name=name)


class RegistryError(ValueError):
    """The registry cannot do that; the message says why."""


class ModelRegistry:
    def __init__(self, redis: Redis, prefix: str = "modfactory") -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}:model:{name}"

    async def get(self, name: str) -> ModelRecord:
        return load_record(name, await self.redis.get(self.key(name)))

    async def names(self) -> list[str]:
        """Every model name (SCAN, never KEYS: a large keyspace must not block Redis)."""
        prefix = len(self.key(""))
        return sorted(
            [
                (k.decode() if isinstance(k, bytes) else k)[prefix:]
                async for k in self.redis.scan_iter(match=self.key("*"), count=500)
            ]
        )

    async def kept_runs(self) -> set[str]:
        """``ModelRecord.kept_runs`` of every model name."""
        kept: set[str] = set()
        for name in await self.names():
            kept |= (await self.get(name)).kept_runs()
        return kept

    async def watch_kept(self, pipe: Pipeline, name: str, run_id: str) -> bool:
        """In a transaction: WATCH ``name``'s record; is ``run_id`` one it must keep?"""
        await pipe.watch(self.key(name))
        return run_id in load_record(name, await pipe.get(self.key(name))).kept_runs()

    async def forget_candidates(self, name: str, run_ids: set[str]) -> None:
        """Drop pruned runs from ``name``'s candidates."""

        def change(record: ModelRecord) -> None:
            for run_id in run_ids & set(record.candidates):
                del record.candidates[run_id]

        await self._update(name, change)

    async def _update(
        self,
        name: str,
        change: Callable[[ModelRecord], Any],
        guard: Callable[[Pipeline, ModelRecord], Awaitable[None]] | None = None,
    ) -> ModelRecord:
        def always(record: ModelRecord) -> bool:
            change(record)
            return True

        return (
            await update_document(
                self.redis, self.key(name), lambda raw: load_record(name, raw), always, guard=guard
            )
        )[0]

    async def promote(
        self,
        name: str,
        run_id: str,
        model_id: str,
        reason: str,
        guard: Callable[[Pipeline, str | None], Awaitable[None]] | None = None,
    ) -> ModelRecord:
        """Make the run champion; the previous champion goes to the history. ``guard``
        (pipe, champion before) may WATCH and check more keys, raising to refuse."""
        before: list[str | None] = []

        def change(record: ModelRecord) -> None:
            before[:] = [record.champion_run]
            record.promote(run_id, model_id, reason)

        async def checked(pipe: Pipeline, record: ModelRecord) -> None:
            if guard is not None:
                await guard(pipe, before[0])

        return await self._update(name, change, checked)

    async def rollback(self, name: str) -> ModelRecord:
        """Restore the previous champion; the current one becomes a candidate again."""

        def change(record: ModelRecord) -> None:
            if not record.history:
                raise RegistryError(f"model {name!r} has no earlier champion to roll back to")
            if record.champion:
                record.candidates[record.champion.run_id] = ROLLED_BACK
            record.champion = record.history.pop()

        return await self._update(name, change)
