"""The scoring-job store: every change of a scoring job is applied here, atomically.

A job is one JSON document (``<prefix>:score:<id>``), listed newest first in a sorted set
(``<prefix>:scores``); the unfinished ones are a set of their own (``<prefix>:scores:active``,
what the reconciler walks). Each change is one of ``ScoreJob``'s methods applied in a
WATCH/MULTI transaction (``redis_json``). How far each running shard has got is a small
hash beside the document (``<prefix>:score:<id>:rows``), written at every batch without
rewriting the document.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from modfactory.redis_json import update_document
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import Run, RunState, RunStateError
from modfactory.store.runs import RunStore
from modfactory.store.score_job import (
    ScoreJob,
    ScoreJobNotFound,
    ScoreJobStateError,
    ScoreSpec,
    ScoreSummary,
    new_score_id,
    now,
)
from modfactory.values import PriceQuote


async def scoring_model(
    runs: RunStore, registry: ModelRegistry, model_name: str, run_id: str | None
) -> tuple[Run, str]:
    """(run, model id) that scores: ``run_id``'s model, else ``model_name``'s champion;
    RunStateError saying what to do when there is none."""
    if run_id:
        run = await runs.get(run_id)
        if run.state != RunState.SUCCEEDED or not run.artifacts.model_id:
            raise RunStateError(f"run {run_id} is {run.state}; only a succeeded run has a model")
        return run, run.artifacts.model_id
    champion = (await registry.get(model_name)).champion
    if champion is None:
        raise RunStateError(
            f"model {model_name!r} has no champion to score with: a run must succeed first "
            "(`modfactory run`), or name one with --run RUN"
        )
    return await runs.get(champion.run_id), champion.model_id


class ScoreJobStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis, self.prefix = redis, prefix
        self._index = f"{prefix}:scores"
        self._active = f"{prefix}:scores:active"

    def _key(self, score_id: str) -> str:
        return f"{self.prefix}:score:{score_id}"

    def _rows_key(self, score_id: str) -> str:
        return f"{self.prefix}:score:{score_id}:rows"

    # --- reads ------------------------------------------------------------------------
    async def get(self, score_id: str) -> ScoreJob:
        raw = await self.redis.get(self._key(score_id))
        if raw is None:
            raise ScoreJobNotFound(score_id)
        return ScoreJob.model_validate_json(raw)

    async def list(self, limit: int = 50) -> list[ScoreJob]:
        """The newest jobs first."""
        ids = [i.decode() for i in await self.redis.zrevrange(self._index, 0, limit - 1)]
        return await self._many(ids)

    async def active(self) -> list[ScoreJob]:
        """The unfinished jobs."""
        return await self._many(sorted(i.decode() for i in await self.redis.smembers(self._active)))

    async def _many(self, ids: list[str]) -> list[ScoreJob]:
        if not ids:
            return []
        raws = await self.redis.mget([self._key(i) for i in ids])
        return [ScoreJob.model_validate_json(raw) for raw in raws if raw is not None]

    async def rows_in_progress(self, score_id: str) -> dict[int, int]:
        """Rows scored so far by each shard under way (shard -> rows)."""
        found = await self.redis.hgetall(self._rows_key(score_id))
        return {int(k): int(v) for k, v in found.items()}

    # --- writes -------------------------------------------------------------------------
    async def create(self, spec: ScoreSpec) -> ScoreJob:
        """Store a new queued job."""
        job = ScoreJob(id=new_score_id(), spec=spec)
        job._event(f"created: {spec.source} scored by {spec.run_id} ({spec.model_id})")

        def load(raw: bytes | None) -> ScoreJob:
            if raw is not None:
                raise ScoreJobStateError(f"scoring job {job.id} exists already")
            return job

        def indexed(pipe: Pipeline, created: ScoreJob) -> None:
            pipe.zadd(self._index, {created.id: created.created_at.timestamp()})
            pipe.sadd(self._active, created.id)

        await update_document(self.redis, self._key(job.id), load, lambda _: True, also=indexed)
        return job

    async def _update(self, score_id: str, change: Callable[[ScoreJob], bool]) -> ScoreJob:
        def load(raw: bytes | None) -> ScoreJob:
            if raw is None:
                raise ScoreJobNotFound(score_id)
            return ScoreJob.model_validate_json(raw)

        def stamped(job: ScoreJob) -> bool:
            if not change(job):
                return False
            job.updated_at = now()
            return True

        def indexed(pipe: Pipeline, job: ScoreJob) -> None:
            if job.state.terminal:
                pipe.srem(self._active, job.id)
                pipe.delete(self._rows_key(job.id))

        job, _ = await update_document(self.redis, self._key(score_id), load, stamped, also=indexed)
        return job

    async def plan(
        self,
        score_id: str,
        shard_rows: list[int],
        labels: list[str],
        thresholds: dict[str, float],
        *,
        batch: bool = False,
        quote: PriceQuote | None = None,
    ) -> ScoreJob:
        return await self._update(
            score_id, lambda j: j.plan(shard_rows, labels, thresholds, batch=batch, quote=quote)
        )

    async def approve(self, score_id: str) -> ScoreJob:
        return await self._update(score_id, lambda j: j.approve())

    async def submitted(self, score_id: str, index: int, batch_id: str) -> ScoreJob:
        return await self._update(score_id, lambda j: j.submitted(index, batch_id))

    async def looked(self, score_id: str, index: int, seq: int, status: str) -> bool:
        """``ScoreJob.looked``: True when this look was the current one (then the next
        is to be queued)."""
        changed: list[bool] = []

        def change(job: ScoreJob) -> bool:
            changed[:] = [job.looked(index, seq, status)]
            return changed[0]

        await self._update(score_id, change)
        return changed[0]

    async def start_shard(self, score_id: str, index: int, max_attempts: int) -> ScoreJob | None:
        """``ScoreJob.start_shard``: the job, or None when the shard must not be scored."""
        changed: list[bool] = []

        def change(job: ScoreJob) -> bool:
            changed[:] = [job.start_shard(index, max_attempts)]
            return changed[0]

        job = await self._update(score_id, change)
        return job if changed[0] and not job.state.terminal else None

    async def record_rows(self, score_id: str, index: int, rows: int) -> None:
        """Shard ``index`` has scored ``rows`` rows so far (progress, not history)."""
        await self.redis.hset(self._rows_key(score_id), str(index), rows)

    async def interrupt_shard(self, score_id: str, index: int, error: str) -> ScoreJob:
        return await self._update(score_id, lambda j: j.interrupt_shard(index, error))

    async def finish_shard(self, score_id: str, index: int, flagged: dict[str, int]) -> ScoreJob:
        job = await self._update(score_id, lambda j: j.finish_shard(index, flagged))
        await self.redis.hdel(self._rows_key(score_id), str(index))
        return job

    async def complete(self, score_id: str, summary: ScoreSummary) -> ScoreJob:
        return await self._update(score_id, lambda j: j.complete(summary))

    async def fail(self, score_id: str, error: str) -> ScoreJob:
        return await self._update(score_id, lambda j: j.fail(error))

    async def cancel(self, score_id: str, reason: str) -> ScoreJob:
        return await self._update(score_id, lambda j: j.cancel(reason))
