"""The run store's indexes, written in the runs' own transactions so that nothing a
worker or a scrape reads grows with the runs ever made: each run's state, the counts of
runs by state, a stage-duration histogram (what ``/metrics`` reads), the unfinished runs
(what the reconciler walks) and the runs whose remote job may outlive them (whose jobs it
cancels). Runs stored before an index existed are indexed once, on first use.
"""

from __future__ import annotations

from collections import Counter

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from modfactory.store.run import STAGE_BUCKETS, STAGES, Run, RunState, StageStatus, now


class RunIndexes:
    """The keys of runs and their indexes, and how a change of a run updates them."""

    def __init__(self, redis: Redis, prefix: str = "modfactory") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:runs"

    @property
    def states_key(self) -> str:
        """Hash: run id -> state (what ``/metrics`` counts)."""
        return f"{self.prefix}:run-states"

    @property
    def state_counts_key(self) -> str:
        """Hash: state -> how many stored runs are in it (kept in the same transactions)."""
        return f"{self.prefix}:run-state-counts"

    async def state_counts(self) -> dict[str, int]:
        """Stored runs by state, read from the counts (not from every run)."""
        await self._count_states_once()
        raw = await self.redis.hgetall(self.state_counts_key)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def _count_states_once(self) -> None:
        """Counts for runs stored before the counts existed: taken once from the states."""
        marker = f"{self.prefix}:run-state-counts-since"
        if await self.redis.exists(marker):
            return
        await self.reindex()
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.states_key, marker)
                if await pipe.exists(marker):
                    return
                counts = Counter(v.decode() for v in await pipe.hvals(self.states_key))
                pipe.multi()
                pipe.delete(self.state_counts_key)
                if counts:
                    pipe.hset(self.state_counts_key, mapping=dict(counts))
                pipe.set(marker, now().isoformat())
                await pipe.execute()
            except WatchError:
                pass  # a run changed meanwhile: counted on the next read

    @property
    def stage_seconds_key(self) -> str:
        """Hash of per-run stage durations that older versions kept (folded once into
        ``stage_histogram_key``)."""
        return f"{self.prefix}:stage-seconds"

    @property
    def stage_histogram_key(self) -> str:
        """Hash: ``<stage>|<backend>|<bucket>`` -> how many succeeded stages took at most
        that many seconds, plus ``…|sum`` and ``…|count``: counted once per stage, never
        lessened by pruning, and as small with a million runs as with one."""
        return f"{self.prefix}:stage-histogram"

    def _count_duration(self, pipe: Pipeline, run: Run, stage: str) -> None:
        """Queue the histogram increments of ``stage`` of ``run`` (just succeeded)."""
        state = run.stages[stage]
        if state.state != StageStatus.SUCCEEDED or not (state.started_at and state.finished_at):
            return
        self._count_seconds(
            pipe, stage, run.spec.backend, (state.finished_at - state.started_at).total_seconds()
        )

    def _count_seconds(self, pipe: Pipeline, stage: str, backend: str, seconds: float) -> None:
        base = f"{stage}|{backend}"
        for bucket in STAGE_BUCKETS:
            if seconds <= bucket:
                pipe.hincrby(self.stage_histogram_key, f"{base}|{bucket:g}", 1)
        pipe.hincrbyfloat(self.stage_histogram_key, f"{base}|sum", seconds)
        pipe.hincrby(self.stage_histogram_key, f"{base}|count", 1)

    @property
    def unfinished_key(self) -> str:
        """Set of the ids of runs not yet succeeded, failed or cancelled."""
        return f"{self.prefix}:unfinished"

    @property
    def jobs_to_cancel_key(self) -> str:
        """Set of ids of runs that are over while their remote training job may not be."""
        return f"{self.prefix}:jobs-to-cancel"

    def _index_writes(self, pipe: Pipeline, run: Run) -> None:
        """Queue the indexes' writes for ``run`` (idempotent: plain HSET / SADD / SREM)."""
        pipe.hset(self.states_key, run.id, str(run.state))
        if run.state.terminal:
            pipe.srem(self.unfinished_key, run.id)
        else:
            pipe.sadd(self.unfinished_key, run.id)
        if run.state.terminal and run.state != RunState.SUCCEEDED and run.live_remote_job:
            pipe.sadd(self.jobs_to_cancel_key, run.id)
        else:
            pipe.srem(self.jobs_to_cancel_key, run.id)

    async def reindex(self) -> int:
        """Index runs stored before the indexes existed, and fold an older version's per-run
        durations into the histogram, each exactly once; returns how many runs."""
        await self._fold_stage_seconds()
        if await self.redis.hlen(self.states_key) >= await self.redis.zcard(self._index):
            return 0
        known = set(await self.redis.hkeys(self.states_key))
        missing = [i for i in await self.redis.zrange(self._index, 0, -1) if i not in known]
        for raw_id in missing:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.states_key)  # a concurrent reindex: one wins
                    raw = await pipe.get(self._key(raw_id.decode()))
                    if raw is None or await pipe.hexists(self.states_key, raw_id):
                        continue
                    run = Run.model_validate_json(raw)
                    pipe.multi()
                    self._index_writes(pipe, run)
                    pipe.hincrby(self.state_counts_key, str(run.state), 1)
                    for stage in STAGES:
                        self._count_duration(pipe, run, stage)
                    await pipe.execute()
                except WatchError:
                    continue
        return len(missing)

    async def _fold_stage_seconds(self) -> None:
        if not await self.redis.exists(self.stage_seconds_key):
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.stage_seconds_key)
                durations = await pipe.hgetall(self.stage_seconds_key)
                pipe.multi()
                for field, value in durations.items():
                    backend, seconds = value.decode().split()
                    stage = field.decode().rsplit(":", 1)[1]
                    self._count_seconds(pipe, stage, backend, float(seconds))
                pipe.delete(self.stage_seconds_key)
                await pipe.execute()
            except WatchError:
                pass  # another process folded them

    async def _index_unfinished_once(self) -> None:
        """Runs stored before the unfinished-runs index existed are indexed once."""
        marker = f"{self.prefix}:unfinished-indexed"
        if await self.redis.exists(marker):
            return
        await self.reindex()
        states = await self.redis.hgetall(self.states_key)
        unfinished = [i for i, state in states.items() if not RunState(state.decode()).terminal]
        async with self.redis.pipeline(transaction=True) as pipe:
            if unfinished:
                pipe.sadd(self.unfinished_key, *unfinished)
            pipe.set(marker, 1)
            await pipe.execute()
