"""No scoring job is ever stuck: every reconcile round, each unfinished job's wanted steps
(its plan, its window of shards, its finish) are queued again if no worker has them, and a
step held by a worker whose lease expired is released for the next (``store.leases``)."""

from __future__ import annotations

import logging
from typing import Any

from modfactory.scoring.context import ScoringContext
from modfactory.scoring.pipeline import enqueue, wanted_steps
from modfactory.store import queue
from modfactory.store.leases import release_if_orphaned

log = logging.getLogger("modfactory.scoring.reconciler")
JOB_NAME = "reconcile_scores"


async def reconcile_scores_once(sc: ScoringContext) -> list[str]:
    """One round; the job ids queued again or released."""
    moved = []
    for job in await sc.store.active():
        for name, job_id, args in await wanted_steps(sc, job):
            if await queue.job_exists(sc.redis, job_id):
                lost = await release_if_orphaned(sc.redis, sc.settings.queue_name, job_id)
                if lost is not None:
                    moved.append(job_id)
                continue
            await queue.clear_stale_result(sc.redis, job_id)
            if await enqueue(sc, name, job_id, *args):
                moved.append(job_id)
    if moved:
        log.info("scoring: queued or released again: %s", moved)
    return moved


async def reconcile_scores(ctx: dict[str, Any]) -> dict[str, Any]:
    """The arq cron job."""
    return {"moved": await reconcile_scores_once(ScoringContext.of(ctx))}
