"""What every stage job needs, built once per worker: settings, the run store, Redis, the
artifact store, the backends (made on first use), the failure policy; and the cancelling
of a run's job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from modfactory.artifacts import ArtifactStore
from modfactory.backends import Backend, BackendError, BackendUnavailable, cached_backend
from modfactory.settings import Settings, redact
from modfactory.stages.policy import FailurePolicy
from modfactory.store import queue
from modfactory.store.run import RunState, StageName
from modfactory.store.runs import RunStore

log = logging.getLogger("modfactory.stages")


@dataclass
class StageContext:
    settings: Settings
    store: RunStore
    redis: ArqRedis
    backends: dict[str, Backend] = field(default_factory=dict)  # by name, made on first use
    progress_every: float = 1.0  # seconds between two progress records of a stage
    policy: FailurePolicy = field(init=False)
    artifacts: ArtifactStore = field(init=False)  # where every stage reads and writes files

    def __post_init__(self) -> None:
        self.policy = FailurePolicy.of(self.settings)
        self.artifacts = ArtifactStore.from_settings(self.settings)

    @classmethod
    def of(cls, ctx: dict[str, Any]) -> StageContext:
        """The StageContext the worker put in arq's ``ctx``."""
        return ctx["modfactory"]

    def backend(self, name: str) -> Backend:
        return cached_backend(self.backends, name, self.settings, self.redis)

    async def enqueue(self, stage: StageName, run_id: str) -> None:
        await queue.enqueue_stage(self.redis, self.settings.queue_name, stage, run_id)

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
