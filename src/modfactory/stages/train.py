"""train: create the fine-tuning job, start it once validated, follow it to the end.

No worker slot is held while the job runs: ``train`` creates the job and schedules the
first look; each look (``poll_training``) records what it sees and schedules the next,
as a fresh arq job, until the job ends. Looks are numbered; a look whose number is stale
(its successor already ran) does nothing, so a re-run never forks the chain.
"""

from __future__ import annotations

from typing import Any

from modfactory import charts
from modfactory.backends.base import JobRequest, JobStatus, TrainingJob
from modfactory.runs import Run
from modfactory.stages.context import StageContext, guarded, stage


@stage("train")
async def train(sc: StageContext, run: Run) -> None:
    """Create the job unless the run has one, then schedule the first look at it."""
    if run.artifacts.training_job_id is None:
        backend = sc.backend(run.spec.backend)
        job = await backend.create_job(
            JobRequest(
                model=backend.base_model,
                training_file_id=run.artifacts.train_file_id,
                validation_file_ids=[run.artifacts.validation_file_id],
                hyperparameters=run.spec.hyperparameters,
                suffix=run.training.job_suffix(run.id),
            )
        )
        await sc.store.record_artifacts(
            run.id, f"created training job {job.id}", training_job_id=job.id
        )
    await sc.enqueue_poll(run.id, run.training.poll_seq, delay=0)


async def poll_training(ctx: dict[str, Any], run_id: str, seq: int) -> None:
    """Look at the job once: record it, start it when validated, finish on a final status."""
    sc = StageContext.of(ctx)
    run = await sc.store.get(run_id)
    if run.stages["train"].state != "running" or run.artifacts.training_job_id is None:
        return
    if run.training.poll_seq == seq + 1:  # this look ran, its successor may not be queued
        await sc.enqueue_poll(run_id, seq + 1)
        return
    if run.training.poll_seq != seq:
        return

    async def step() -> None:
        backend = sc.backend(run.spec.backend)
        job = await backend.get_job(run.artifacts.training_job_id)
        if job.status == JobStatus.VALIDATED:
            await sc.store.record_training(run_id, job)
            job = await backend.start_job(job.id)
        updated = await sc.store.record_training(run_id, job)
        if job.status == JobStatus.SUCCESS:
            await _succeeded(sc, updated, job)
        elif job.status.terminal:
            reason = job.error or f"the training job ended {job.status}"
            await sc.store.fail_stage(run_id, "train", f"{job.status}: {reason}")
        elif await sc.store.advance_poll(run_id, seq):
            await sc.enqueue_poll(run_id, seq + 1)

    await guarded(sc, "train", run_id, step)


async def _succeeded(sc: StageContext, run: Run, job: TrainingJob) -> None:
    chart = None
    if run.training.checkpoints:
        chart = charts.loss_chart(
            [c.model_dump() for c in run.training.checkpoints],
            sc.run_dir(run.id) / "loss.png",
            f"{run.id}: {job.fine_tuned_model}",
        )
    await sc.store.finish_stage(
        run.id,
        "train",
        artifacts={"model_id": job.fine_tuned_model, "loss_chart": str(chart) if chart else None},
        message=f"trained {job.fine_tuned_model}",
    )
    await sc.enqueue("evaluate", run.id)
