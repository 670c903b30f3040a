"""Retention: finished runs beyond MODFACTORY_KEEP_RUNS / MODFACTORY_KEEP_DAYS are deleted
— document, index entries, the run's artifacts, and what its backend keeps for its training
job (artifacts and Redis keys: the caller says which, the store knows no backend) — except
champions and the runs a rollback needs (``ModelRecord.kept_runs``), checked again in the
transaction that deletes each one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio.client import Pipeline

from modfactory.artifacts import ArtifactError, ArtifactStore, run_key
from modfactory.settings import Settings
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import Run, RunNotFound
from modfactory.store.runs import RunStore

log = logging.getLogger("modfactory.store")
JobData = Callable[[str, str], tuple[list[str], list[str]]]
"""``job_data(backend, job_id)``: the artifact keys and Redis keys that backend keeps for
the job."""


async def prune_runs(
    store: RunStore,
    registry: ModelRegistry,
    settings: Settings,
    artifacts: ArtifactStore,
    job_data: JobData,
    dry_run: bool = False,
) -> list[str]:
    """Delete the finished runs beyond the retention settings; their ids (``dry_run``:
    what would go, nothing deleted)."""
    protected = await registry.kept_runs()
    doomed = await store.prunable(settings.keep_runs, settings.keep_days, protected)
    if dry_run or not doomed:
        return doomed

    async def promoted_since(pipe: Pipeline, run: Run) -> bool:
        return await registry.watch_kept(pipe, run.spec.model_name, run.id)

    pruned = []
    for run_id in doomed:
        try:
            run = await store.get(run_id)
        except RunNotFound:
            continue
        if not await store.delete(run_id, keep=promoted_since):
            continue
        pruned.append(run_id)
        places, keys = [run_key(run.id)], []
        if run.artifacts.training_job_id:
            files, keys = job_data(run.spec.backend, run.artifacts.training_job_id)
            places += files
        if keys:
            await store.redis.delete(*keys)
        for place in places:
            try:
                await asyncio.to_thread(artifacts.delete, place)
            except ArtifactError as exc:  # the store away: the objects stay, the run is gone
                log.warning("run %s pruned, but not its artifacts at %s: %s", run_id, place, exc)
    for name in await registry.names():
        await registry.forget_candidates(name, set(pruned))
    return pruned
