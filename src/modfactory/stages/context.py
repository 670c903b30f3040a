"""What every stage job needs, built once per worker, and the guard around each step."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from modfactory.backends import Backend, BackendError, BackendUnavailable, cached_backend
from modfactory.data.recipe import RecipeError
from modfactory.settings import Settings, redact
from modfactory.store import queue
from modfactory.store.run import Run, RunState, StageName, StageStatus
from modfactory.store.runs import RunStore
from modfactory.store.stage_names import next_stage

log = logging.getLogger("modfactory.stages")


@dataclass
class StageContext:
    settings: Settings
    store: RunStore
    redis: ArqRedis
    backends: dict[str, Backend] = field(default_factory=dict)  # by name, made on first use
    progress_every: float = 1.0  # seconds between two progress records of a stage

    @classmethod
    def of(cls, ctx: dict[str, Any]) -> StageContext:
        """The StageContext the worker put in arq's ``ctx``."""
        return ctx["modfactory"]

    def backend(self, name: str) -> Backend:
        return cached_backend(self.backends, name, self.settings, self.redis)

    def run_dir(self, run_id: str) -> Path:
        return (self.settings.data_dir / "runs" / run_id).resolve()

    async def enqueue(self, stage: StageName, run_id: str) -> None:
        await queue.enqueue_stage(self.redis, self.settings.queue_name, stage, run_id)

    async def enqueue_next(self, stage: StageName, run_id: str) -> None:
        """Queue the stage after ``stage`` (nothing after the last)."""
        following = next_stage(stage)
        if following is not None:
            await self.enqueue(following, run_id)

    async def enqueue_poll(self, run_id: str, seq: int, delay: float | None = None) -> None:
        interval = self.settings.poll_interval if delay is None else delay
        await queue.enqueue_poll(self.redis, self.settings.queue_name, run_id, seq, interval)

    def progress_reporter(self, run_id: str, stage: StageName) -> Callable[[str, int, int], None]:
        """A thread-safe ``report(what, done, total)`` recording at most one update every
        ``progress_every`` seconds (and the last)."""
        loop = asyncio.get_running_loop()
        last = [0.0]

        def report(what: str, done: int, total: int) -> None:
            if time.monotonic() - last[0] < self.progress_every and done < total:
                return
            last[0] = time.monotonic()
            asyncio.run_coroutine_threadsafe(
                self.store.record_progress(run_id, stage, what, done, total), loop
            )

        return report

    async def close(self) -> None:
        for backend in self.backends.values():
            await backend.close()


async def guarded(
    sc: StageContext, stage: StageName, run_id: str, step: Callable[[], Awaitable[None]]
) -> None:
    """Run ``step``; a failure fails the stage (and the run) with a reason worth reading,
    unless it may pass: an unreachable backend, or the step timing out (its work so far is
    kept). Then the attempt is recorded as interrupted and the reconciler queues the stage
    again, until MODFACTORY_STAGE_MAX_ATTEMPTS attempts have made no progress. A
    Redis error is raised as it is: with the run store away nothing can be recorded, and
    the stage, still running, is queued again once Redis is back.

    The step gets ``job_timeout - 5`` seconds, so a stuck step is recorded before arq
    gives up on the job.
    """
    limit = max(1, sc.settings.job_timeout - 5)

    def told(exc: BaseException) -> str:  # what an exception says, without any secret
        return redact(str(exc), sc.settings.secret_values())

    try:
        async with asyncio.timeout(limit):
            await step()
    except RedisError as exc:  # the run store is away: nothing can be recorded
        log.warning("run %s: %s interrupted, Redis unreachable: %s", run_id, stage, told(exc))
        raise  # the stage stays running; the reconciler queues it again
    except BackendUnavailable as exc:
        log.warning("run %s: %s interrupted: %s", run_id, stage, told(exc))
        await sc.store.interrupt_stage(run_id, stage, told(exc))
    except (RecipeError, BackendError) as exc:
        log.warning("run %s: %s failed: %s", run_id, stage, told(exc))
        await sc.store.fail_stage(run_id, stage, told(exc))
    except TimeoutError:  # an overloaded machine may be quicker next time
        log.warning("run %s: %s timed out", run_id, stage)
        reason = f"timed out after {limit} s (MODFACTORY_JOB_TIMEOUT)"
        await sc.store.interrupt_stage(run_id, stage, reason)
    except Exception as exc:
        log.exception("run %s: %s failed unexpectedly", run_id, stage)
        await sc.store.fail_stage(run_id, stage, f"{type(exc).__name__}: {told(exc)}")


async def cancel_remote_job(sc: StageContext, run_id: str) -> str | None:
    """Cancel the training job of a run that ended failed or cancelled, if the job may
    still be running (never a paid job left behind); says what happened. An unreachable
    backend leaves it to the reconciler, which tries again every round."""
    run = await sc.store.get(run_id)
    job_id = run.live_remote_job
    if job_id is None or not run.state.terminal or run.state == RunState.SUCCEEDED:
        await sc.store.forget_job_to_cancel(run_id)
        return None
    try:
        job = await sc.backend(run.spec.backend).cancel_job(job_id)
    except BackendUnavailable as exc:
        why = redact(str(exc), sc.settings.secret_values())
        log.warning("run %s: could not cancel training job %s yet: %s", run_id, job_id, why)
        return f"could not cancel training job {job_id} yet ({why}); trying again shortly"
    except BackendError as exc:
        why = redact(str(exc), sc.settings.secret_values())
        message = f"could not cancel training job {job_id}: {why}; cancel it at the backend"
        await sc.store.note(run_id, "train", message)
        await sc.store.forget_job_to_cancel(run_id)
        return message
    await sc.store.record_training(run_id, job)
    return f"cancelled training job {job_id} ({job.status})"


StageStep = Callable[[StageContext, Run], Awaitable[None]]
StageJob = Callable[[dict[str, Any], str], Awaitable[None]]


def stage(name: StageName) -> Callable[[StageStep], StageJob]:
    """Make ``step(sc, run)`` the arq job ``name(ctx, run_id)``.

    The job marks the stage running for one more attempt (or returns when it must not
    run) and runs the step under ``guarded``; the step records its results. Whenever the
    stage is found succeeded — just now, or already by an earlier attempt whose worker
    was lost before queuing on — the next stage is queued (a no-op if it is already).
    A run that failed here with a live training job has the job cancelled.
    """

    def wrap(step: StageStep) -> StageJob:
        async def job(ctx: dict[str, Any], run_id: str) -> None:
            sc = StageContext.of(ctx)
            run = await sc.store.start_stage(run_id, name, sc.settings.stage_max_attempts)
            if run is not None:
                await guarded(sc, name, run_id, lambda: step(sc, run))
            after = await sc.store.get(run_id)
            if after.state.terminal:
                await cancel_remote_job(sc, run_id)
            elif after.stages[name].state == StageStatus.SUCCEEDED:
                await sc.enqueue_next(name, run_id)

        job.__name__ = job.__qualname__ = name
        job.__doc__ = step.__doc__
        return job

    return wrap
