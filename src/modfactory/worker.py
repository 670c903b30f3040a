"""The worker: every job the daemon runs, and how arq is configured to run them.

Jobs: the pipeline's (``stages.pipeline``: ``build``, ``upload``, ``train``,
``poll_training`` — one look at a training job, re-scheduled until it ends — and
``evaluate``); a scoring job's (``scoring.pipeline``: ``score_plan``, ``score_shard`` — one
at a time per worker process —, ``score_finish``); the cron jobs ``reconcile`` and
``reconcile_scores`` every MODFACTORY_RECONCILE_INTERVAL seconds on one worker (see
``stages.reconciler``: it re-queues the lost step of any unfinished run and cancels
training jobs of runs that are over; ``scoring.reconciler`` does the same for scoring).
Triggers that run inside the worker process — the retrain schedule — are passed in by
whoever starts it (the CLI), so the worker knows no trigger. A starting worker loads the
stages' libraries, then runs one reconcile round, before it takes a job. Each worker holds
a lease and notes the jobs it runs (``store.leases``), so a job whose worker was lost is
taken up again within MODFACTORY_WORKER_LEASE seconds and two reconcile rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import signal
from collections.abc import Sequence
from typing import Any

from arq import func
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.worker import Worker
from redis.exceptions import RedisError

from modfactory.scoring.context import ScoringContext
from modfactory.scoring.pipeline import JOBS as SCORING_JOBS
from modfactory.scoring.pipeline import MAX_WINDOW, is_shard_job
from modfactory.scoring.reconciler import JOB_NAME as RECONCILE_SCORES_JOB
from modfactory.scoring.reconciler import reconcile_scores, reconcile_scores_once
from modfactory.settings import Settings
from modfactory.stages.context import StageContext
from modfactory.stages.pipeline import JOBS
from modfactory.stages.reconciler import JOB_NAME as RECONCILE_JOB
from modfactory.stages.reconciler import reconcile, reconcile_once
from modfactory.store import queue
from modfactory.store.leases import WorkerLease
from modfactory.store.runs import RunStore

log = logging.getLogger("modfactory.worker")
REDIS_AWAY_PAUSE = 1.0  # s between polls while Redis fails at once


def preload(settings: Settings) -> None:
    """Import the libraries the stages use (scikit-learn, scipy; the Mistral SDK
    when a key is set) before the worker takes a job: a worker killed while importing loses
    no attempt of any stage, and each stage makes progress from its first second. (The
    modules import them lazily, so the CLI and ``serve`` start without them.)"""
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401

    if settings.mistral_api_key and importlib.util.find_spec("mistralai"):
        import mistralai.client  # noqa: F401


def worker_options(settings: Settings, triggers: Sequence[CronJob] = ()) -> dict[str, Any]:
    """arq Worker keyword arguments: the jobs, JSON serialization, timeouts, heartbeat;
    ``triggers``: more cron jobs to run (e.g. ``triggers.schedule.retrain_cron_jobs``)."""

    async def on_startup(ctx: dict[str, Any]) -> None:
        lease = WorkerLease(ctx["redis"], settings.queue_name, settings.worker_lease)
        await lease.start()
        ctx["lease"] = lease
        sc = StageContext(settings, RunStore(ctx["redis"], settings.queue_name), ctx["redis"])
        ctx["modfactory"] = sc
        ctx["scoring"] = ScoringContext(settings, ctx["redis"], sc.artifacts, sc.backends)
        await asyncio.to_thread(preload, settings)
        await reconcile_once(sc)
        await reconcile_scores_once(ctx["scoring"])

    marked_for = in_progress_seconds(settings)

    async def on_job_start(ctx: dict[str, Any]) -> None:  # arq's in-progress mark lives as long
        with contextlib.suppress(RedisError):
            await ctx["lease"].hold(ctx["job_id"], marked_for)

    async def on_job_end(ctx: dict[str, Any]) -> None:
        with contextlib.suppress(RedisError):
            await ctx["lease"].let_go(ctx["job_id"])

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if "lease" in ctx:
            await ctx["lease"].stop()
        if "modfactory" in ctx:
            await ctx["modfactory"].close()

    every = queue.every(settings.reconcile_interval)
    reconciling = queue.once_per_tick(
        reconcile, RECONCILE_JOB, every, settings.job_timeout, settings.reconcile_interval
    )
    reconciling_scores = queue.once_per_tick(
        reconcile_scores,
        RECONCILE_SCORES_JOB,
        every,
        settings.job_timeout,
        settings.reconcile_interval,
    )
    cron_jobs = [reconciling, reconciling_scores, *triggers]
    return {
        "cron_jobs": cron_jobs,
        "functions": _functions(settings),
        "queue_name": settings.queue_name,
        "queue_read_limit": settings.max_jobs + MAX_WINDOW,  # past the window of shards
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "on_job_start": on_job_start,
        "on_job_end": on_job_end,
        "max_jobs": settings.max_jobs,
        "job_timeout": settings.job_timeout,
        "keep_result": 0,
        "health_check_interval": settings.health_check_interval,
        "job_serializer": queue.serialize,
        "job_deserializer": queue.deserialize,
        "poll_delay": 0.2,
    }


def in_progress_seconds(settings: Settings) -> float:
    """How long arq's mark of a running job lives (and this worker's note as its holder):
    a stage job's longest run and 10 s. A scoring step, allowed MODFACTORY_SCORE_SHARD_TIMEOUT,
    renews both while it runs — so a job lost with its worker, whoever held it, is taken
    up again within this, however long a shard may take."""
    return settings.job_timeout + 10


def _functions(settings: Settings) -> list[Any]:
    """The pipeline's jobs, and the scoring jobs (their tries counted by the scoring job
    itself: arq's count each Retry too; their marks renewed while they run)."""
    stages = [
        func(job, name=name, keep_result=0, timeout=settings.job_timeout)
        for name, job in JOBS.items()
    ]
    scoring = [
        func(
            _marked_while_running(job, in_progress_seconds(settings)),
            name=name,
            keep_result=0,
            timeout=settings.score_shard_timeout,
            max_tries=10**6,
        )
        for name, job in SCORING_JOBS.items()
    ]
    return [*stages, *scoring]


def _marked_while_running(job: Any, seconds: float) -> Any:
    """``job`` with its in-progress mark and holder note renewed while it runs."""

    @functools.wraps(job)
    async def run(ctx: dict[str, Any], *args: Any) -> Any:
        async with ctx["lease"].keeping(ctx["job_id"], seconds):
            return await job(ctx, *args)

    return run


def build_worker(
    settings: Settings,
    redis: ArqRedis | None = None,
    triggers: Sequence[CronJob] = (),
    **overrides: Any,
) -> Worker:
    """An arq Worker for ``settings`` (``redis``: share an existing pool, as the CLI does;
    ``triggers``: as for ``worker_options``)."""
    options = worker_options(settings, triggers)
    if redis is not None:
        options["redis_pool"] = redis
    return FleetWorker(settings, **{**options, **overrides})


class FleetWorker(Worker):
    """arq's Worker on the pool ``queue.open_pool`` makes (TLS, Sentinel, time-outs, waiting
    out a failover: the one connection factory), opened in the worker's own event loop when
    it starts, and outliving a Redis that is away longer than the pool waits: arq's loop
    would end the worker; this one says so and polls again once Redis answers."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        super().__init__(**options)
        self.in_progress_timeout_s = in_progress_seconds(settings)  # not the longest timeout
        self._settings = settings
        self._redis_away_since: float | None = None

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await queue.open_pool(
                self._settings.redis_url or "redis://localhost:6379",
                self.queue_name,
                ca_file=self._settings.redis_ca_file,
                min_replicas=self._settings.redis_min_replicas,
            )
        await super().main()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's, but one shard of a scoring job at a time: while this process scores one,
        it leaves the others in the queue for another worker (scoring holds the CPU)."""
        for job_id in job_ids:
            if is_shard_job(job_id.decode()) and self._scoring_shard():
                continue
            await super().start_jobs([job_id])

    def _scoring_shard(self) -> bool:
        return any(is_shard_job(i) and not t.done() for i, t in self.tasks.items())

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            loop = asyncio.get_running_loop()
            if self._redis_away_since is None:
                self._redis_away_since = loop.time()
                log.warning("Redis unreachable (%s: %s); waiting for it", type(exc).__name__, exc)
            await asyncio.sleep(REDIS_AWAY_PAUSE)  # an error at once (e.g. refused auth)
            return
        if self._redis_away_since is not None:
            away = asyncio.get_running_loop().time() - self._redis_away_since
            log.warning("Redis answers again after %.1f s; polling the queue", away)
            self._redis_away_since = None


async def stop_worker(worker: Worker) -> None:
    """Stop an in-process worker (``handle_signals=False``): its running jobs are cancelled
    and re-queued by arq, then it closes; unlike ``Worker.close`` alone, this does not raise
    the cancelled jobs' CancelledError into the caller."""
    worker.handle_sig(signal.SIGUSR1)
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    worker.tasks.clear()
    await worker.close()
