"""train: create the fine-tuning job, start it once validated, follow it to the end.

No worker slot is held while the job runs: ``start_training`` creates the job and
schedules the first look; each look (``look_at_job``) records what it sees and schedules
the next, as a fresh arq job, until the job ends. Looks are numbered; a look whose number is stale
(its successor already ran) does nothing, so a re-run never forks the chain.

One remote job per run: while the job is alive, nothing that fails here fails the stage
for good — an unreachable API, a start whose answer was lost, a status this code does not
know — it is looked at again later. A train stage queued again follows its job if that is
still alive and creates a new one only once the old one is over.
"""

from __future__ import annotations

import asyncio

from modfactory import charts
from modfactory.artifacts import run_key
from modfactory.backends.base import JobRequest
from modfactory.stages.context import StageContext
from modfactory.stages.policy import Action
from modfactory.store.run import Run, RunState, StageStatus
from modfactory.values import JobStatus, TrainingJob


async def start_training(sc: StageContext, run: Run) -> None:
    """Create the job unless the run has one still alive, then schedule a look at it."""
    if run.training.job_over and run.training.status != JobStatus.SUCCESS:
        run = await sc.store.new_training_generation(run.id)  # the job failed: a new one
    if run.artifacts.training_job_id is None:
        backend = sc.backend(run.spec.backend)
        suffix = run.training.job_suffix(run.id, backend.suffix_prefix)
        await sc.store.note(run.id, "train", f"creating the training job (suffix {suffix})")
        job = await backend.create_job(
            JobRequest(
                model=backend.base_model,
                training_file_id=run.artifacts.train_file_id,
                validation_file_ids=[run.artifacts.validation_file_id],
                hyperparameters=run.spec.hyperparameters,
                suffix=suffix,
            )
        )
        await sc.store.record_artifacts(
            run.id, f"created training job {job.id}", training_job_id=job.id
        )
    else:
        await sc.store.note(run.id, "train", f"following job {run.artifacts.training_job_id}")
    await sc.enqueue_poll(run.id, run.training.poll_seq, delay=0)


async def look_at_job(sc: StageContext, run_id: str, seq: int) -> bool:
    """Look at the job once: record it, start it when validated (within the cost cap),
    finish on a final status (the failure policy decides), else schedule the next look.
    True when the run may have moved on (the pipeline then queues what follows)."""
    run = await sc.store.get(run_id)
    if run.state != RunState.RUNNING or run.stages["train"].state != StageStatus.RUNNING:
        return False  # finished, cancelled, or parked awaiting approval
    if run.artifacts.training_job_id is None:
        return False
    if run.training.poll_seq == seq + 1:  # this look ran, its successor may not be queued
        await sc.enqueue_poll(run_id, seq + 1)
        return False
    if run.training.poll_seq != seq:
        return False

    async def look_again_later(why: str) -> None:
        await sc.store.note(run_id, "train", f"{why}; looking again later")
        if await sc.store.advance_poll(run_id, seq):
            await sc.enqueue_poll(run_id, seq + 1, delay=sc.settings.poll_max_interval)

    routine: list[bool] = []

    async def step() -> None:
        job = await _look(sc, run, run.artifacts.training_job_id)
        if job is None:
            return  # parked awaiting approval
        updated = await sc.store.record_training(
            run_id, job, advance_poll_from=None if job.terminal else seq
        )
        decision = sc.policy.after_look(job)
        if decision.action == Action.SUCCEED:
            await _succeeded(sc, updated, job, decision.reason)
        elif decision.action != Action.WAIT:
            await sc.policy.apply(sc.store, run_id, "train", decision)
        else:
            if decision.reason:
                await sc.store.note(run_id, "train", decision.reason)
            if updated.training.poll_seq == seq + 1:
                quiet = updated.training.quiet_looks
                every = min(sc.settings.poll_interval, backend_look_every(sc, run))
                delay = min(sc.settings.poll_max_interval, every * 1.5**quiet)
                await sc.enqueue_poll(run_id, seq + 1, delay=delay)
            routine.append(True)  # the common look: nothing more to check

    policy = sc.policy
    await policy.attempt(
        sc.store, run_id, "train", step, limit=policy.look_limit, interrupted=look_again_later
    )
    return not routine


def backend_look_every(sc: StageContext, run: Run) -> float:
    """How often the run's backend says a look is worth it (a local look is a Redis read)."""
    return sc.backend(run.spec.backend).look_every or sc.settings.poll_interval


async def _look(sc: StageContext, run: Run, job_id: str) -> TrainingJob | None:
    """The job as it is now, started first if it waits validated (None: it waits for
    approval of its quote instead)."""
    backend = sc.backend(run.spec.backend)
    job = await backend.get_job(job_id)
    if job.status != JobStatus.VALIDATED:
        return job
    updated = await sc.store.record_training(run.id, job)
    over = _over_the_cap(updated, job)
    if over:
        await sc.store.await_approval(run.id, over)
        return None
    await sc.store.note(run.id, "train", f"starting job {job.id}")
    return await backend.start_job(job.id)


def _over_the_cap(run: Run, job: TrainingJob) -> str | None:
    """Why the quote needs approval before the job may start (None: start it)."""
    cap = run.spec.max_cost
    if cap is None or run.training.approved:
        return None
    cost, currency = job.metadata.get("cost"), job.metadata.get("cost_currency", "")
    if cost is None:
        return f"no cost was quoted and MODFACTORY_MAX_COST is {cap}"
    if cost > cap:
        return f"quoted {cost} {currency} is above MODFACTORY_MAX_COST {cap}"
    return None


async def _succeeded(sc: StageContext, run: Run, job: TrainingJob, message: str) -> None:
    chart = None
    if run.training.checkpoints:
        svg = await asyncio.to_thread(
            charts.loss_chart,
            [c.model_dump() for c in run.training.checkpoints],
            f"{run.id}: {job.fine_tuned_model}",
        )
        chart = await asyncio.to_thread(
            sc.artifacts.save, run_key(run.id, f"loss{charts.SUFFIX}"), svg
        )
    await sc.store.finish_stage(
        run.id,
        "train",
        artifacts={"model_id": job.fine_tuned_model, "loss_chart": chart},
        message=message,
    )
