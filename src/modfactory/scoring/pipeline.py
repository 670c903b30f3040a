"""A scoring job, top to bottom, as arq jobs any worker takes:

    plan     the source read and cut into shard inputs in the artifact store (memory:
             one shard); the model's labels and thresholds fixed for the whole job
    shard    one shard scored into ``scores/<id>/part-NNNNN.parquet``, whole or not at all;
             each worker process scores one shard at a time, its model loaded once
    finish   the parts summed up (flagged per label, histograms, top texts), the most
             uncertain texts offered for review; the job succeeds; its report.html

Job ids are deterministic (``<id>:plan``, ``<id>:shard:<n>``, ``<id>:finish``), so a step is
queued once. Only a window of shards is queued at a time — as many as workers are alive —
so that the shards never stand in front of the pipeline's jobs in the queue, and a worker
never waits holding a shard another could score. After each step the job moves on
(``advance``); a step nobody runs is queued again by ``reconciler``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq.worker import Retry

from modfactory.artifacts import ArtifactError, ArtifactsUnavailable
from modfactory.backends import BackendError, BackendUnavailable
from modfactory.data.archive import open_archive
from modfactory.data.recipe import TARGET, RecipeError
from modfactory.scoring.context import ScoringContext
from modfactory.scoring.report import write_report
from modfactory.scoring.results import summarize
from modfactory.scoring.shard import ScoringStopped, score_shard, stage_inputs
from modfactory.serving.champions import thresholds_of
from modfactory.settings import redact
from modfactory.store.leases import live_workers
from modfactory.store.run import RunNotFound
from modfactory.store.runs import RunStore
from modfactory.store.score_job import ScoreJob

log = logging.getLogger("modfactory.scoring")
PLAN_JOB, SHARD_JOB, FINISH_JOB = "score_plan", "score_shard", "score_finish"
MAX_WINDOW = 64  # most shards queued at once, however many workers there are
RETRY_AFTER = 5.0  # s before a step that met an unreachable store or backend runs again


def plan_job_id(score_id: str) -> str:
    return f"{score_id}:plan"


def shard_job_id(score_id: str, index: int) -> str:
    return f"{score_id}:shard:{index}"


def finish_job_id(score_id: str) -> str:
    return f"{score_id}:finish"


def is_shard_job(job_id: str) -> bool:
    """Is ``job_id`` one shard's (what a worker takes one at a time)?"""
    return job_id.startswith("score-") and ":shard:" in job_id


async def enqueue(sc: ScoringContext, name: str, job_id: str, *args: Any) -> bool:
    """Queue ``name(*args)`` under ``job_id``; False when it is queued or running."""
    queue = sc.settings.queue_name
    return await sc.redis.enqueue_job(name, *args, _job_id=job_id, _queue_name=queue) is not None


async def wanted_steps(sc: ScoringContext, job: ScoreJob) -> list[tuple[str, str, tuple]]:
    """(function, job id, args) of each step an unfinished job waits for: its plan, the
    window of unfinished shards, or its finish."""
    if job.state.terminal:
        return []
    if not job.planned:
        return [(PLAN_JOB, plan_job_id(job.id), (job.id,))]
    if job.all_scored:
        return [(FINISH_JOB, finish_job_id(job.id), (job.id,))]
    window = min(MAX_WINDOW, max(1, await live_workers(sc.redis, sc.settings.queue_name)))
    return [
        (SHARD_JOB, shard_job_id(job.id, i), (job.id, i)) for i in job.unfinished_shards()[:window]
    ]


async def advance(sc: ScoringContext, score_id: str) -> None:
    """Queue what the job waits for now (each step once)."""
    job = await sc.store.get(score_id)
    for name, job_id, args in await wanted_steps(sc, job):
        await enqueue(sc, name, job_id, *args)


def _said(sc: ScoringContext, exc: BaseException) -> str:
    return redact(str(exc) or type(exc).__name__, sc.settings.secret_values())


async def score_plan(ctx: dict[str, Any], score_id: str) -> None:
    """Read the source, cut it into shard inputs, fix the labels and thresholds."""
    sc = ScoringContext.of(ctx)
    job = await sc.store.get(score_id)
    if job.state.terminal or job.planned:
        return await advance(sc, score_id)
    spec = job.spec
    try:
        run = await RunStore(sc.redis, sc.settings.queue_name).get(spec.run_id)
        archive = await asyncio.to_thread(
            open_archive, spec.source, spec.text_column, spec.id_column, sc.settings.data_dir
        )
        rows = await asyncio.to_thread(
            stage_inputs, archive, sc.artifacts, score_id, spec.shard_rows
        )
    except (RecipeError, RunNotFound) as exc:
        await sc.store.fail(score_id, _said(sc, exc))
        return None
    except ArtifactsUnavailable as exc:
        log.warning("scoring job %s: planning again shortly: %s", score_id, _said(sc, exc))
        raise Retry(defer=RETRY_AFTER) from None
    labels = run.dataset.labels if run.dataset else []
    if not rows:
        await sc.store.fail(score_id, f"source {spec.source} holds no rows")
        return None
    rule = "tuned" if spec.thresholds == "tuned" and run.metrics else "0.5"
    await sc.store.plan(score_id, rows, labels, thresholds_of(run, labels, rule))  # type: ignore[arg-type]
    await advance(sc, score_id)
    return None


async def score_one_shard(ctx: dict[str, Any], score_id: str, index: int) -> None:
    """Score shard ``index`` (unless it is done, or the job over)."""
    sc = ScoringContext.of(ctx)
    job = await sc.store.start_shard(score_id, index, sc.settings.stage_max_attempts)
    if job is None:
        return await advance(sc, score_id)
    spec = job.spec
    try:
        run = await RunStore(sc.redis, sc.settings.queue_name).get(spec.run_id)
        targets = run.training.classifier_targets
        scorer = await sc.scorer(spec.backend, spec.model_id)
        flagged = await score_shard(
            job,
            index,
            scorer,
            targets[0]["name"] if targets else TARGET,
            sc.artifacts,
            sc.store,
            min(sc.settings.score_batch_rows, sc.backend(spec.backend).max_batch or 10**9),
        )
    except ScoringStopped:
        return None
    except (ArtifactsUnavailable, BackendUnavailable) as exc:
        await sc.store.interrupt_shard(score_id, index, _said(sc, exc))
        raise Retry(defer=RETRY_AFTER) from None
    except (ArtifactError, BackendError, RunNotFound) as exc:
        await sc.store.fail(score_id, f"shard {index}: {_said(sc, exc)}")
        return None
    await sc.store.finish_shard(score_id, index, flagged)
    await advance(sc, score_id)
    return None


async def score_finish(ctx: dict[str, Any], score_id: str) -> None:
    """Sum the parts up, offer the most uncertain texts for review; the job succeeds."""
    sc = ScoringContext.of(ctx)
    job = await sc.store.get(score_id)
    if job.state.terminal or not job.all_scored:
        return None
    try:
        summary, uncertain = await asyncio.to_thread(summarize, job, sc.artifacts)
    except ArtifactsUnavailable as exc:
        log.warning("scoring job %s: summing up again shortly: %s", score_id, _said(sc, exc))
        raise Retry(defer=RETRY_AFTER) from None
    except ArtifactError as exc:
        await sc.store.fail(score_id, f"summing up: {_said(sc, exc)}")
        return None
    if uncertain:
        from modfactory.scoring.review import offer_for_review

        summary.offered_for_review = await offer_for_review(sc, job, uncertain)
    job = await sc.store.complete(score_id, summary)
    try:
        await asyncio.to_thread(write_report, job, sc.artifacts)
    except ArtifactError as exc:  # the page under /ui shows the same from Redis
        log.warning("scoring job %s: no report.html: %s", score_id, _said(sc, exc))
    return None


JOBS = {PLAN_JOB: score_plan, SHARD_JOB: score_one_shard, FINISH_JOB: score_finish}
