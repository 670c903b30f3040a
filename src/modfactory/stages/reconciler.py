"""The reconciler: no run is ever stuck, and no training job runs on that nobody follows.

Every MODFACTORY_RECONCILE_INTERVAL seconds one worker (arq's unique cron job id, plus a
Redis lock against overlapping rounds) walks the unfinished runs. A run whose current
step — its stage job, or the next look at its training job — is neither queued, deferred
nor in progress in arq has that step queued again: a job arq dropped after its tries, a
stage that could not record its end (Redis away), a run created but never queued, a
worker lost between finishing a stage and queuing the next, a Redis restarted without its
queue. A step still marked in progress by a worker whose lease has expired (killed, its
machine lost) is released for the next worker at once (``store.leases``), rather than
when arq's mark expires, MODFACTORY_JOB_TIMEOUT + 10 s later. A stage whose attempts
keep ending without progress fails after
MODFACTORY_STAGE_MAX_ATTEMPTS of them, naming how the last ended (``policy``).
Runs that ended failed or cancelled while their training job may still run have that job
cancelled. The first round of each day prunes finished runs beyond MODFACTORY_KEEP_RUNS /
_KEEP_DAYS (``store.retention``). Every round moves the audit trail's new entries into the
artifact store (``store.audit``). A starting worker runs one round at once.
"""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modfactory.artifacts import ArtifactError
from modfactory.backends import job_data
from modfactory.stages.context import StageContext, cancel_remote_job
from modfactory.store import queue
from modfactory.store.audit import AuditLog
from modfactory.store.leases import release_if_orphaned
from modfactory.store.registry import ModelRegistry
from modfactory.store.retention import prune_runs
from modfactory.store.run import Run, RunNotFound, RunState, StageStatus

log = logging.getLogger("modfactory.stages.reconciler")
JOB_NAME = "reconcile"


@dataclass
class Round:
    """What one round did."""

    requeued: list[str] = field(default_factory=list)  # "<run>:<step>"
    cancels: list[str] = field(default_factory=list)  # what each cancellation attempt said
    skipped: bool = False  # another worker's round was still going
    pruned: list[str] = field(default_factory=list)  # finished runs deleted (once a day)
    audited: int = 0  # audit entries moved from Redis into the artifact store


def current_job(run: Run) -> tuple[str, str] | None:
    """(arq job id, what it is) of the step ``run`` waits for; None when it waits for
    nobody (awaiting approval, or over)."""
    if run.state.terminal or run.state == RunState.AWAITING_APPROVAL:
        return None
    stage = run.current_stage
    if stage is None:
        return None
    train = run.stages["train"]
    if stage == "train" and train.state == StageStatus.RUNNING and run.artifacts.training_job_id:
        seq = run.training.poll_seq
        return queue.poll_job_id(run.id, seq), f"look {seq} at the training job"
    return queue.stage_job_id(run.id, stage), stage


async def requeue_lost_steps(sc: StageContext) -> list[str]:
    """Queue again the current step of every unfinished run that has no arq job; release
    one held by a lost worker."""
    queue_name = sc.settings.queue_name
    requeued = []
    for run in await sc.store.active():
        wanted = current_job(run)
        if wanted is None:
            continue
        if await queue.job_exists(sc.redis, wanted[0]):
            lost = await release_if_orphaned(sc.redis, queue_name, wanted[0])
            if lost is not None:  # still queued: the next worker to poll takes it up
                requeued.append(wanted[0])
                why = f"took up {wanted[1]} again: worker {lost} running it was lost"
                await sc.store.note(run.id, run.current_stage, why)
            continue
        try:
            fresh = await sc.store.get(run.id)  # it may have moved on meanwhile
        except RunNotFound:
            continue
        if current_job(fresh) != wanted:
            continue
        job_id, what = wanted
        await queue.clear_stale_result(sc.redis, job_id)
        if job_id == queue.stage_job_id(run.id, fresh.current_stage or ""):
            queued = await queue.enqueue_stage(sc.redis, queue_name, fresh.current_stage, run.id)
        else:
            queued = await queue.enqueue_poll(
                sc.redis, queue_name, run.id, fresh.training.poll_seq, 0
            )
        if queued:
            requeued.append(job_id)
            await sc.store.note(
                run.id, fresh.current_stage, f"queued {what} again: no worker had it"
            )
    return requeued


async def reconcile_once(sc: StageContext) -> Round:
    """One round (at most one at a time across all workers)."""
    lock = f"{sc.settings.queue_name}:reconcile-lock"
    token = secrets.token_hex(8)
    # Held at most until the next round is due: a worker killed mid-round delays nothing,
    # and an overlap after a very slow round is harmless (every step is idempotent).
    ttl = max(5, sc.settings.reconcile_interval - 1)
    if not await sc.redis.set(lock, token, nx=True, ex=ttl):
        return Round(skipped=True)
    try:
        done = Round(requeued=await requeue_lost_steps(sc))
        for run_id in await sc.store.runs_with_jobs_to_cancel():
            said = await cancel_remote_job(sc, run_id)
            if said:
                done.cancels.append(f"{run_id}: {said}")
        day = f"{sc.settings.queue_name}:pruned-on:{datetime.now(UTC):%Y-%m-%d}"
        if await sc.redis.set(day, 1, nx=True, ex=2 * 86_400):  # the first round of a day
            registry = ModelRegistry(sc.redis, sc.settings.queue_name)
            data = functools.partial(job_data, sc.settings)
            done.pruned = await prune_runs(sc.store, registry, sc.settings, sc.artifacts, data)
        try:
            audit = AuditLog(sc.redis, sc.settings.queue_name)
            done.audited = await audit.compact(sc.artifacts, sc.settings.audit_retention)
        except ArtifactError as exc:  # the store is away: the stream keeps them meanwhile
            log.warning("audit trail not compacted this round: %s", exc)
    finally:
        if (await sc.redis.get(lock)) == token.encode():
            await sc.redis.delete(lock)
    if done.requeued or done.cancels:
        log.info("reconciled: queued %s again; %s", done.requeued or "nothing", done.cancels)
    if done.pruned:
        log.info("pruned %d finished run(s) beyond MODFACTORY_KEEP_RUNS/DAYS", len(done.pruned))
    return done


async def reconcile(ctx: dict[str, Any]) -> dict[str, Any]:
    """The arq cron job."""
    done = await reconcile_once(StageContext.of(ctx))
    return {
        "requeued": done.requeued,
        "cancels": done.cancels,
        "pruned": len(done.pruned),
        "skipped": done.skipped,
    }
