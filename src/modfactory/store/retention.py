"""Retention: finished runs beyond MODFACTORY_KEEP_RUNS / MODFACTORY_KEEP_DAYS are deleted
— document, index entries, run directory, and the files its backend keeps for its training
job (the caller says which: the store knows no backend) — except champions and the runs a
rollback needs (``ModelRecord.kept_runs``), checked again in the transaction that deletes
each one."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from redis.asyncio.client import Pipeline

from modfactory.settings import Settings
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import Run, RunNotFound
from modfactory.store.runs import RunStore

_SAFE_NAME = re.compile(r"[\w.-]+")  # a run or job id, never a path


JobFiles = Callable[[str, str], list[Path]]
"""``job_files(backend, job_id)``: what that backend keeps on this machine for the job."""


async def prune_runs(
    store: RunStore,
    registry: ModelRegistry,
    settings: Settings,
    job_files: JobFiles,
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
        places = [settings.data_dir / "runs" / run.id]
        if run.artifacts.training_job_id:
            places += job_files(run.spec.backend, run.artifacts.training_job_id)
        await asyncio.to_thread(_remove_files, places)
    for name in await registry.names():
        await registry.forget_candidates(name, set(pruned))
    return pruned


def _remove_files(places: list[Path]) -> None:
    """A pruned run's directories (each one named by an id, never a path from elsewhere)."""
    for place in places:
        root = place.parent.resolve()
        if place.resolve().parent == root and _SAFE_NAME.fullmatch(place.name):
            shutil.rmtree(place, ignore_errors=True)
