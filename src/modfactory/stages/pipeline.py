"""The pipeline: every run, top to bottom, as the business process it is.

    build      the cookbook's recipe: train / validation / test JSONL, charts  stages.build
    upload     the train and validation files given to the backend            stages.upload
    train      the fine-tuning job created (or the live one followed), then    stages.train
      look     looked at, again and again, until it ends — no worker slot is
               held while the job runs; started once validated, within the
               cost cap (else the run waits for approval)
    evaluate   scored on validation and test, thresholds tuned, measured       stages.evaluate
               against the champion, promoted if it beats it

Each step is an arq job (``JOBS``), in the manner of a Temporal workflow's activities: it
reads its run, does its work under the failure policy (``policy``: what a failure, a
timeout or a lost backend makes of the stage) and records its result in the run store;
then the run moves on (``advance``): a stage found done — just now, or by an earlier
attempt whose worker was lost before queuing on — queues the next, and a run over with a
training job alive has it cancelled. Re-running a done step changes nothing. Nothing waits
in memory: a step nobody runs (lost, dropped, Redis restarted) is queued again by the
reconciler (``reconciler``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from modfactory.stages.build import build_splits
from modfactory.stages.context import StageContext, cancel_remote_job
from modfactory.stages.evaluate import evaluate_model
from modfactory.stages.train import look_at_job, start_training
from modfactory.stages.upload import upload_files
from modfactory.store import queue
from modfactory.store.run import Run, StageStatus
from modfactory.store.stage_names import STAGES, StageName, next_stage

StageStep = Callable[[StageContext, Run], Awaitable[None]]
StageJob = Callable[..., Awaitable[None]]

STEPS: dict[StageName, StageStep] = {
    "build": build_splits,
    "upload": upload_files,
    "train": start_training,  # ... and ``look_at_job`` until the job ends
    "evaluate": evaluate_model,  # ... and promotion
}
assert tuple(STEPS) == STAGES, "a step for every stage, in order"


async def advance(sc: StageContext, run_id: str, stage: StageName) -> None:
    """After a step of ``stage``: queue the next stage once it is done (a no-op if it is
    queued already); cancel the training job of a run that is over."""
    run = await sc.store.get(run_id)
    if run.state.terminal:
        await cancel_remote_job(sc, run_id)
    elif run.stages[stage].state == StageStatus.SUCCEEDED:
        following = next_stage(stage)
        if following is not None:
            await sc.enqueue(following, run_id)


def stage_job(name: StageName) -> StageJob:
    """The arq job ``name(ctx, run_id)``: one more attempt at the stage (unless it must not
    run: done, the run over, or given up), then the run moves on."""
    step = STEPS[name]

    async def job(ctx: dict[str, Any], run_id: str) -> None:
        sc = StageContext.of(ctx)
        run = await sc.store.start_stage(run_id, name, sc.policy.gives_up)
        if run is not None:
            attempt = run.stages[name].attempts
            await sc.policy.attempt(sc.store, run_id, name, lambda: step(sc, run), attempt=attempt)
        await advance(sc, run_id, name)

    job.__name__ = job.__qualname__ = name
    job.__doc__ = step.__doc__
    return job


async def poll_training(ctx: dict[str, Any], run_id: str, seq: int) -> None:
    """The arq job of look ``seq`` at a run's training job; then the run moves on."""
    sc = StageContext.of(ctx)
    if await look_at_job(sc, run_id, seq):
        await advance(sc, run_id, "train")


JOBS: dict[str, StageJob] = {name: stage_job(name) for name in STAGES} | {
    queue.POLL_JOB: poll_training
}
