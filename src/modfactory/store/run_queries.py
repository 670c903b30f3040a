"""Which runs there are: one by id, the newest, those matching a filter, the unfinished,
the prunable — reads of the run documents and their indexes, and a run's deletion.

Every change of a run is ``runs.RunStore``'s (a subclass of this one).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from modfactory.store.run import (
    ActiveRunExists,
    Run,
    RunNotFound,
    RunState,
)
from modfactory.store.run_indexes import RunIndexes


class RunQueries(RunIndexes):
    """Reads of runs (and deleting them); the indexes: ``RunIndexes``."""

    def _slot(self, model_name: str) -> str:
        return f"{self.prefix}:active:{model_name}"

    async def _check_slot(self, pipe: Pipeline, model_name: str, run_id: str) -> None:
        """WATCH ``model_name``'s slot and its holder; raise if another unfinished run holds it."""
        slot = self._slot(model_name)
        await pipe.watch(slot)
        holder = await pipe.get(slot)
        if holder is None or holder.decode() == run_id:
            return
        await pipe.watch(self._key(holder.decode()))
        raw = await pipe.get(self._key(holder.decode()))
        if raw is not None:
            active = Run.model_validate_json(raw)
            if not active.state.terminal:
                raise ActiveRunExists(active)

    # --- reads -----------------------------------------------------------------------
    async def get(self, run_id: str) -> Run:
        raw = await self.redis.get(self._key(run_id))
        if raw is None:
            raise RunNotFound(run_id)
        return Run.model_validate_json(raw)

    async def list(self, limit: int = 50) -> list[Run]:
        ids = await self.redis.zrevrange(self._index, 0, limit - 1)
        raws = (
            await self.redis.mget(
                [self._key(i.decode() if isinstance(i, bytes) else i) for i in ids]
            )
            if ids
            else []
        )
        return [Run.model_validate_json(raw) for raw in raws if raw is not None]

    async def find(self, limit: int, state: str = "", model_name: str = "") -> list[Run]:
        """The newest ``limit`` runs in ``state`` and of ``model_name`` (either may be
        empty: any): ids by the state index, documents read a hundred at a time."""
        ids = [i.decode() for i in await self.redis.zrevrange(self._index, 0, -1)]
        if state:
            states = await self.redis.hgetall(self.states_key)
            ids = [i for i in ids if states.get(i.encode(), b"").decode() == state]
        found: list[Run] = []
        named = json.dumps({"model_name": model_name}, separators=(",", ":"))[1:-1].encode()
        for start in range(0, len(ids), 100):
            raws = await self.redis.mget([self._key(i) for i in ids[start : start + 100]])
            # a document without the name in it is not parsed (its JSON is compact)
            runs = [
                Run.model_validate_json(r) for r in raws if r and (not model_name or named in r)
            ]
            found += [r for r in runs if not model_name or r.spec.model_name == model_name]
            if len(found) >= limit:
                break
        return found[:limit]

    async def active_run(self, model_name: str) -> Run | None:
        """The unfinished run holding ``model_name``'s slot, if any."""
        holder = await self.redis.get(self._slot(model_name))
        if holder is None:
            return None
        try:
            run = await self.get(holder.decode())
        except RunNotFound:
            return None
        return None if run.state.terminal else run

    async def active(self) -> list[Run]:
        """Runs not yet finished, oldest first (what the reconciler looks after)."""
        await self._index_unfinished_once()
        ids = sorted(i.decode() for i in await self.redis.smembers(self.unfinished_key))
        runs = []
        for raw in await self.redis.mget([self._key(i) for i in ids]) if ids else []:
            if raw is not None:
                run = Run.model_validate_json(raw)
                if not run.state.terminal:
                    runs.append(run)
        return runs

    async def prunable(
        self,
        keep_runs: int | None,
        keep_days: float | None,
        protected: set[str],
        now: datetime | None = None,
    ) -> list[str]:
        """Finished runs beyond the newest ``keep_runs`` finished ones and older than
        ``keep_days`` (each limit applies only when set; both unset: none), except the
        ``protected``; newest first. Unfinished runs are never prunable."""
        if keep_runs is None and keep_days is None:
            return []
        entries = await self.redis.zrevrange(self._index, 0, -1, withscores=True)
        states = await self.redis.hmget(self.states_key, [i for i, _ in entries]) if entries else []
        cutoff = (now or datetime.now(UTC)).timestamp() - (keep_days or 0) * 86_400
        finished, doomed = 0, []
        for (raw_id, created), state in zip(entries, states, strict=True):
            if state is None or not RunState(state.decode()).terminal:
                continue
            finished += 1
            run_id = raw_id.decode()
            kept_by_count = keep_runs is not None and finished <= keep_runs
            kept_by_age = keep_days is not None and created >= cutoff
            if run_id not in protected and not kept_by_count and not kept_by_age:
                doomed.append(run_id)
        return doomed

    async def delete(
        self, run_id: str, keep: Callable[[Pipeline, Run], Awaitable[bool]] | None = None
    ) -> bool:
        """Remove a finished run and its index entries; False if it is unfinished, gone, or
        ``keep(pipe, run)`` — which WATCHes what it reads, in the same transaction — says
        it is needed after all (a run promoted since the caller looked)."""
        key = self._key(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    run = Run.model_validate_json(raw) if raw is not None else None
                    if run is None or not run.state.terminal or (keep and await keep(pipe, run)):
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hincrby(self.state_counts_key, str(run.state), -1)
                    pipe.delete(key)
                    pipe.zrem(self._index, run_id)
                    pipe.hdel(self.states_key, run_id)
                    pipe.srem(self.unfinished_key, run_id)
                    pipe.srem(self.jobs_to_cancel_key, run_id)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def runs_with_jobs_to_cancel(self) -> list[str]:
        return sorted(i.decode() for i in await self.redis.smembers(self.jobs_to_cancel_key))

    async def forget_job_to_cancel(self, run_id: str) -> None:
        """The run's remote job is over (or cannot be cancelled): stop trying."""
        await self.redis.srem(self.jobs_to_cancel_key, run_id)
