"""A scoring job, top to bottom, as arq jobs any worker takes:

    plan     the source read and cut into shard inputs in the artifact store (memory:
             one shard); the model's labels and thresholds fixed for the whole job; the
             price quoted (a job above MODFACTORY_MAX_COST waits for approval)
    shard    one shard scored into ``scores/<id>/part-NNNNN.parquet``, whole or not at all;
             each worker process scores one shard at a time, its model loaded once —
             or, through a backend's batch API, the shard sent as one batch job
             (exactly once: the job is found again by its metadata) and then
    look     followed by numbered looks, each a fresh arq job, holding no worker slot
             while it runs at the backend; its output read into the shard's part
    finish   the parts summed up (flagged per label, histograms, top texts), the most
             uncertain texts offered for review; the job succeeds; its report.html

Job ids are deterministic (``<id>:plan``, ``<id>:shard:<n>``, ``<id>:look:<n>:<seq>``,
``<id>:finish``), so a step is queued once. Only a window of shards is queued at a time —
as many as workers are alive — so that the shards never stand in front of the pipeline's
jobs in the queue, and a worker never waits holding a shard another could score (shards
for a batch API are sent in moments: all of them are queued). After each step the job
moves on (``advance``); a step nobody runs is queued again by ``reconciler``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from arq.worker import Retry

from modfactory.artifacts import ArtifactError, ArtifactsUnavailable, score_key
from modfactory.backends import BackendError, BackendUnavailable
from modfactory.data.archive import open_archive
from modfactory.data.exports import ExportError, write_whole
from modfactory.data.recipe import TARGET, RecipeError
from modfactory.scoring.context import ScoringContext
from modfactory.scoring.report import write_report
from modfactory.scoring.results import summarize
from modfactory.scoring.shard import (
    ScoringStopped,
    output_key,
    part_name,
    replaying,
    score_shard,
    shard_texts,
    stage_inputs,
)
from modfactory.serving.champions import thresholds_of
from modfactory.settings import redact
from modfactory.store import queue
from modfactory.store.leases import live_workers
from modfactory.store.run import RunNotFound
from modfactory.store.runs import RunStore
from modfactory.store.score_job import ScoreJob, ScoreState, ShardState
from modfactory.values import BatchStatus

log = logging.getLogger("modfactory.scoring")
PLAN_JOB, SHARD_JOB, FINISH_JOB = "score_plan", "score_shard", "score_finish"
LOOK_JOB = "score_look"
CHARACTERS_PER_TOKEN = 4  # what a quote assumes of texts it has not tokenized
MAX_WINDOW = 64  # most shards queued at once, however many workers there are
RETRY_AFTER = 5.0  # s before a step that met an unreachable store or backend runs again
EXPORT_TRIES = 12  # tries of the finish step to copy the parts to --output (a minute)


plan_job_id = queue.score_plan_job_id


def shard_job_id(score_id: str, index: int) -> str:
    return f"{score_id}:shard:{index}"


def look_job_id(score_id: str, index: int, seq: int) -> str:
    return f"{score_id}:look:{index}:{seq}"


def finish_job_id(score_id: str) -> str:
    return f"{score_id}:finish"


def is_shard_job(job_id: str) -> bool:
    """Is ``job_id`` one shard's (what a worker takes one at a time)?"""
    return job_id.startswith("score-") and ":shard:" in job_id


async def enqueue(
    sc: ScoringContext, name: str, job_id: str, *args: Any, defer: float | None = None
) -> bool:
    """Queue ``name(*args)`` under ``job_id`` (``defer`` s from now); False when it is
    queued or running."""
    queue_name = sc.settings.queue_name
    job = await sc.redis.enqueue_job(
        name, *args, _job_id=job_id, _queue_name=queue_name, _defer_by=defer
    )
    return job is not None


async def wanted_steps(sc: ScoringContext, job: ScoreJob) -> list[tuple[str, str, tuple]]:
    """(function, job id, args) of each step an unfinished job waits for: its plan, the
    window of unfinished shards, or its finish."""
    if job.state.terminal or job.state == ScoreState.AWAITING_APPROVAL:
        return []
    if not job.planned:
        return [(PLAN_JOB, plan_job_id(job.id), (job.id,))]
    if job.all_scored:
        return [(FINISH_JOB, finish_job_id(job.id), (job.id,))]
    if job.batch:  # a shard is sent in moments; then it is looked at, holding no slot
        sends = [(SHARD_JOB, shard_job_id(job.id, i), (job.id, i)) for i in job.shards_to_send()]
        looks = [
            (
                LOOK_JOB,
                look_job_id(job.id, i, job.shards[i].looks),
                (job.id, i, job.shards[i].looks),
            )
            for i in job.remote_shards()
        ]
        return sends[:MAX_WINDOW] + looks
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
        backend = sc.backend(spec.backend)
        rows, characters = await asyncio.to_thread(
            stage_inputs, archive, sc.artifacts, score_id, spec.shard_rows
        )
    except (RecipeError, RunNotFound, BackendError) as exc:
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
    batch = spec.batch_api and backend.batch_api
    quote = backend.quote_classify(math.ceil(characters / CHARACTERS_PER_TOKEN), batch=batch)
    thresholds = thresholds_of(run, labels, rule)  # type: ignore[arg-type]
    await sc.store.plan(score_id, rows, labels, thresholds, batch=batch, quote=quote)
    await advance(sc, score_id)
    return None


def _request_rows(sc: ScoringContext, backend_name: str) -> int:
    """Texts a shard sends in one request (one classify call, one batch request)."""
    return min(sc.settings.score_batch_rows, sc.backend(backend_name).max_batch or 10**9)


def _target(run: Any) -> str:
    targets = run.training.classifier_targets
    return targets[0]["name"] if targets else TARGET


async def score_one_shard(ctx: dict[str, Any], score_id: str, index: int) -> None:
    """Score shard ``index`` — or send it, to a batch API — unless it is done, at the
    backend already, or the job over."""
    sc = ScoringContext.of(ctx)
    job = await sc.store.start_shard(score_id, index, sc.settings.stage_max_attempts)
    if job is None:
        return await advance(sc, score_id)
    work = _send_shard if job.batch else _score_here
    try:
        await work(sc, job, index)
    except ScoringStopped:
        return None
    except (ArtifactsUnavailable, BackendUnavailable) as exc:  # may pass: not counted
        await sc.store.interrupt_shard(score_id, index, _said(sc, exc))
        raise Retry(defer=RETRY_AFTER) from None
    except (ArtifactError, BackendError, RunNotFound) as exc:
        await sc.store.fail(score_id, f"shard {index}: {_said(sc, exc)}")
    return None


async def _score_here(sc: ScoringContext, job: ScoreJob, index: int) -> None:
    """Score shard ``index`` in this worker, with the model loaded once per process."""
    spec = job.spec
    run = await RunStore(sc.redis, sc.settings.queue_name).get(spec.run_id)
    scorer = await sc.scorer(spec.backend, spec.model_id)
    size = _request_rows(sc, spec.backend)
    flagged = await score_shard(job, index, scorer, _target(run), sc.artifacts, sc.store, size)
    await sc.store.finish_shard(job.id, index, flagged)
    await advance(sc, job.id)


async def _send_shard(sc: ScoringContext, job: ScoreJob, index: int) -> None:
    """Create shard ``index``'s batch job (once: found again by its metadata) and queue
    the first look at it; a part already whole is the shard done."""
    spec, score_id = job.spec, job.id
    if await asyncio.to_thread(sc.artifacts.exists, output_key(score_id, index)):
        run = await RunStore(sc.redis, sc.settings.queue_name).get(spec.run_id)
        return await _finish_remote(sc, job, index, [], _target(run))
    texts = await asyncio.to_thread(shard_texts, sc.artifacts, score_id, index)
    size = _request_rows(sc, spec.backend)
    batch = await sc.backend(spec.backend).submit_batch(
        spec.model_id,
        [texts[i : i + size] for i in range(0, len(texts), size)],
        tag=f"{score_id}-{index:05d}",
        metadata={"modfactory_score": score_id, "shard": str(index)},
    )
    await sc.store.submitted(score_id, index, batch.id)
    first = look_job_id(score_id, index, 0)
    await enqueue(sc, LOOK_JOB, first, score_id, index, 0, defer=sc.settings.poll_interval)
    return None


def _look_delay(sc: ScoringContext, seq: int) -> float:
    """Seconds to the next look: MODFACTORY_POLL_INTERVAL, growing by half each look up to
    MODFACTORY_POLL_MAX_INTERVAL (a batch job runs for minutes to hours)."""
    s = sc.settings
    return min(s.poll_max_interval, s.poll_interval * 1.5 ** min(seq, 40))


async def score_look(ctx: dict[str, Any], score_id: str, index: int, seq: int) -> None:
    """Look ``seq`` at shard ``index``'s batch job: record it and look again later; once it
    has succeeded, read its output into the shard's part. A job that ended meanwhile has
    the batch job cancelled (never a paid job left running); a stale look does nothing."""
    sc = ScoringContext.of(ctx)
    job = await sc.store.get(score_id)
    shard = job.shards[index]
    if shard.state != ShardState.REMOTE or shard.looks != seq or shard.batch_id is None:
        return None
    backend = sc.backend(job.spec.backend)
    if job.state.terminal:
        try:
            await backend.cancel_batch(shard.batch_id)
        except BackendUnavailable:
            raise Retry(defer=RETRY_AFTER) from None
        except BackendError as exc:
            log.warning("scoring job %s: batch job %s: %s", score_id, shard.batch_id, exc)
        return None

    async def look_again(status: str, delay: float) -> None:
        if await sc.store.looked(score_id, index, seq, status):
            next_id = look_job_id(score_id, index, seq + 1)
            await enqueue(sc, LOOK_JOB, next_id, score_id, index, seq + 1, defer=delay)

    try:
        batch = await backend.get_batch(shard.batch_id)
    except BackendUnavailable as exc:
        log.warning("scoring job %s: looking again later: %s", score_id, _said(sc, exc))
        return await look_again(shard.remote_status or "unknown", sc.settings.poll_max_interval)
    except BackendError as exc:
        await sc.store.fail(score_id, f"shard {index}: {_said(sc, exc)}")
        return None
    if not batch.terminal:
        done = min(shard.rows, batch.completed_requests * _request_rows(sc, job.spec.backend))
        await sc.store.record_rows(score_id, index, done)
        return await look_again(batch.status, _look_delay(sc, seq))
    if batch.status != BatchStatus.SUCCESS:
        why = f": {'; '.join(batch.errors)[:300]}" if batch.errors else ""
        await sc.store.fail(
            score_id, f"shard {index}: batch job {batch.id} ended {batch.status}{why}"
        )
        return None
    try:
        run = await RunStore(sc.redis, sc.settings.queue_name).get(job.spec.run_id)
        results = await backend.batch_results(batch)
        await _finish_remote(sc, job, index, results, _target(run))
    except ScoringStopped:
        return None
    except (ArtifactsUnavailable, BackendUnavailable) as exc:
        log.warning("scoring job %s: reading shard %d again shortly: %s", score_id, index, exc)
        raise Retry(defer=RETRY_AFTER) from None
    except (ArtifactError, BackendError, RunNotFound) as exc:
        await sc.store.fail(score_id, f"shard {index}: {_said(sc, exc)}")
    return None


async def _finish_remote(
    sc: ScoringContext, job: ScoreJob, index: int, results: list, target: str
) -> None:
    """Write a batch job's ``results`` as shard ``index``'s part (or count the part found
    whole); the shard is done."""
    flagged = await score_shard(
        job,
        index,
        replaying(results),
        target,
        sc.artifacts,
        sc.store,
        _request_rows(sc, job.spec.backend),
    )
    await sc.store.finish_shard(job.id, index, flagged)
    await advance(sc, job.id)


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
    if job.spec.output:
        try:
            summary.exported_to = await asyncio.to_thread(_export, job, sc.artifacts)
        except ExportError as exc:
            if ctx.get("job_try", 1) < EXPORT_TRIES:
                log.warning("scoring job %s: copying again shortly: %s", score_id, exc)
                raise Retry(defer=RETRY_AFTER) from None
            kept = sc.artifacts.url_of(score_key(score_id))
            await sc.store.fail(score_id, f"{_said(sc, exc)}; every part is in {kept}/")
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


def _export(job: ScoreJob, artifacts: Any) -> str:
    """Every part copied to ``job.spec.output`` (whole; those there already left)."""
    output = job.spec.output or ""
    for index in range(len(job.shards)):
        write_whole(output, part_name(index), artifacts.load(output_key(job.id, index)))
    return output


JOBS = {
    PLAN_JOB: score_plan,
    SHARD_JOB: score_one_shard,
    LOOK_JOB: score_look,
    FINISH_JOB: score_finish,
}
