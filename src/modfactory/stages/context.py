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

from modfactory import jobs
from modfactory.backends import Backend, BackendError, get_backend
from modfactory.monitoring import ApiErrorCounter
from modfactory.recipe import RecipeError
from modfactory.runs import Run, RunStore, StageName
from modfactory.settings import Settings

log = logging.getLogger("modfactory.stages")


@dataclass
class StageContext:
    settings: Settings
    store: RunStore
    redis: ArqRedis
    backends: dict[str, Backend] = field(default_factory=dict)  # by name, made on first use

    @classmethod
    def of(cls, ctx: dict[str, Any]) -> StageContext:
        """The StageContext the worker put in arq's ``ctx``."""
        return ctx["modfactory"]

    def backend(self, name: str) -> Backend:
        if name not in self.backends:
            backend = get_backend(name, self.settings)
            backend.error_counter = ApiErrorCounter(self.redis, self.settings.queue_name)
            self.backends[name] = backend
        return self.backends[name]

    def run_dir(self, run_id: str) -> Path:
        return (self.settings.data_dir / "runs" / run_id).resolve()

    async def enqueue(self, stage: StageName, run_id: str) -> None:
        await jobs.enqueue_stage(self.redis, self.settings.queue_name, stage, run_id)

    async def enqueue_poll(self, run_id: str, seq: int, delay: float | None = None) -> None:
        interval = self.settings.poll_interval if delay is None else delay
        await jobs.enqueue_poll(self.redis, self.settings.queue_name, run_id, seq, interval)

    def progress_reporter(self, run_id: str, stage: StageName) -> Callable[[str, int, int], None]:
        """A thread-safe ``report(what, done, total)`` recording at most one update a second."""
        loop = asyncio.get_running_loop()
        last = [0.0]

        def report(what: str, done: int, total: int) -> None:
            if time.monotonic() - last[0] < 1 and done < total:
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
    """Run ``step``; any failure fails the stage (and the run) with a reason worth reading.

    The step gets ``job_timeout - 5`` seconds, so a stuck step is recorded as failed before
    arq gives up on the job.
    """
    try:
        async with asyncio.timeout(max(1, sc.settings.job_timeout - 5)):
            await step()
    except (RecipeError, BackendError) as exc:
        log.warning("run %s: %s failed: %s", run_id, stage, exc)
        await sc.store.fail_stage(run_id, stage, str(exc))
    except TimeoutError:
        log.warning("run %s: %s timed out", run_id, stage)
        await sc.store.fail_stage(
            run_id,
            stage,
            f"timed out after {sc.settings.job_timeout - 5} s (MODFACTORY_JOB_TIMEOUT)",
        )
    except Exception as exc:
        log.exception("run %s: %s failed unexpectedly", run_id, stage)
        await sc.store.fail_stage(run_id, stage, f"{type(exc).__name__}: {exc}")


StageStep = Callable[[StageContext, Run], Awaitable[None]]
StageJob = Callable[[dict[str, Any], str], Awaitable[None]]


def stage(name: StageName) -> Callable[[StageStep], StageJob]:
    """Make ``step(sc, run)`` the arq job ``name(ctx, run_id)``.

    The job marks the stage running (or returns at once when it already succeeded or the
    run is over) and runs the step under ``guarded``; the step records its results and
    enqueues the next stage.
    """

    def wrap(step: StageStep) -> StageJob:
        async def job(ctx: dict[str, Any], run_id: str) -> None:
            sc = StageContext.of(ctx)
            run = await sc.store.start_stage(run_id, name)
            if run is None:
                log.info("run %s: %s has nothing to do", run_id, name)
                return
            await guarded(sc, name, run_id, lambda: step(sc, run))

        job.__name__ = job.__qualname__ = name
        job.__doc__ = step.__doc__
        return job

    return wrap
