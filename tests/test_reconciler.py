"""No run stuck, no job left behind: the reconciler, stage attempts, re-attaching a live job,
cancelling the job of a run that is over. Real Redis, stage jobs called directly, a
scripted backend behind the interface."""

from __future__ import annotations

import asyncio
from pathlib import Path

from modfactory.backends.base import BackendUnavailable
from modfactory.producer import Producer
from modfactory.stages.context import StageContext
from modfactory.stages.reconciler import reconcile_once, requeue_lost_steps
from modfactory.stages.train import poll_training, train
from modfactory.stages.upload import upload
from modfactory.store.run import RunSpec, RunState
from modfactory.values import JobStatus, RecipeParams, TrainingJob
from test_stages import ScriptedBackend, job, setup

UNREACHABLE = "Mistral did not answer the request to upload x after 7 attempts (HTTP 503)"


class CancellableBackend(ScriptedBackend):
    """Also cancels (or cannot reach the API to, while ``reachable`` is False)."""

    reachable = True

    async def cancel_job(self, job_id: str) -> TrainingJob:
        self.calls["cancel"] = self.calls.get("cancel", 0) + 1
        if not self.reachable:
            raise BackendUnavailable("Mistral did not answer the request to cancel job")
        return TrainingJob(id=job_id, status=JobStatus.CANCELLED, model="m")


def context(ctx: dict) -> StageContext:
    return ctx["modfactory"]


async def queued_jobs(pool) -> set[str]:
    return {i.decode() for i in await pool.zrange("modfactory", 0, -1)}


async def drop_job(pool, job_id: str) -> None:
    """What a lost queue (or a by-hand ``DEL``) does to a job."""
    await pool.delete(f"arq:job:{job_id}")
    await pool.zrem("modfactory", job_id)


async def test_a_run_created_but_never_queued_and_a_deleted_look_are_queued_again(
    redis_db: str, tmp_path: Path
) -> None:
    ctx, store, backend, pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    sc = context(ctx)
    never_queued = await store.create(
        RunSpec(source="synthetic", backend="local", recipe=RecipeParams(), model_name="other")
    )
    await train(ctx, run_id)  # creates the job and queues look 0
    assert await queued_jobs(pool) == {f"{run_id}:poll:0"}

    assert await requeue_lost_steps(sc) == [f"{never_queued.id}:build"]
    assert await requeue_lost_steps(sc) == []  # queued now: nothing to do

    await drop_job(pool, f"{run_id}:poll:0")
    assert await requeue_lost_steps(sc) == [f"{run_id}:poll:0"]
    assert "queued look 0 at the training job again" in (await store.get(run_id)).events[-1].message
    await poll_training(ctx, run_id, 0)  # the look runs and chains on as usual
    assert f"{run_id}:poll:1" in await queued_jobs(pool)
    assert backend.calls["create"] == 1
    await pool.aclose()


async def test_a_run_awaiting_approval_or_over_is_left_alone(redis_db: str, tmp_path: Path) -> None:
    ctx, store, _backend, pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    await train(ctx, run_id)
    await drop_job(pool, f"{run_id}:poll:0")
    await store.await_approval(run_id, "quoted 9 EUR")
    assert await requeue_lost_steps(context(ctx)) == []
    await store.cancel(run_id, "by hand")
    assert await requeue_lost_steps(context(ctx)) == []
    await pool.aclose()


async def test_a_stage_interrupted_five_times_ends_the_run_failed_naming_it(
    redis_db: str, tmp_path: Path
) -> None:
    ctx, store, backend, pool, _run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    run = await store.create(
        RunSpec(source="synthetic", backend="local", recipe=RecipeParams(), model_name="up")
    )
    await store.start_stage(run.id, "build")
    await store.finish_stage(run.id, "build", artifacts={"train_file": str(tmp_path / "t")})
    attempts = []

    async def unreachable(path: Path, tag: str):
        attempts.append(tag)
        raise BackendUnavailable(UNREACHABLE)

    backend.upload_file = unreachable
    for attempt in range(1, 6):
        await upload(ctx, run.id)
        interrupted = await store.get(run.id)
        assert interrupted.state == RunState.RUNNING  # not failed: tried again later
        assert interrupted.stages["upload"].attempts == attempt
        assert interrupted.stages["upload"].last_error == UNREACHABLE
    await upload(ctx, run.id)  # the sixth attempt is not made
    failed = await store.get(run.id)
    assert len(attempts) == 5
    assert failed.state == RunState.FAILED
    assert failed.error == f"upload: gave up after 5 attempts; the last: {UNREACHABLE}"
    await pool.aclose()


async def test_a_stage_found_succeeded_queues_the_next_step(redis_db: str, tmp_path: Path) -> None:
    """A worker lost between recording a stage done and queuing the next one."""
    ctx, _store, backend, pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    assert await queued_jobs(pool) == set()  # setup finished upload by hand: nothing queued
    await upload(ctx, run_id)  # the retried job finds upload done
    assert await queued_jobs(pool) == {f"{run_id}:train"}
    assert backend.calls == {"create": 0, "get": 0, "start": 0}
    await pool.aclose()


async def test_a_requeued_train_stage_follows_its_live_job_and_replaces_only_an_ended_one(
    redis_db: str, tmp_path: Path
) -> None:
    ctx, store, _, pool, run_id = await setup(redis_db, tmp_path, [])
    backend = CancellableBackend([job(JobStatus.RUNNING)])
    context(ctx).backends["local"] = backend
    producer = Producer(pool, context(ctx).settings)
    await train(ctx, run_id)
    await poll_training(ctx, run_id, 0)
    assert (await store.get(run_id)).training.status == "RUNNING"

    # The stage fails while the job runs, and the API cannot be reached to cancel it.
    backend.reachable = False
    await store.fail_stage(run_id, "train", "timed out")
    await reconcile_once(context(ctx))
    assert await store.runs_with_jobs_to_cancel() == [run_id]  # kept for the next round
    # Queued again by hand: the live job is followed, not doubled.
    await producer.enqueue("train", run_id)
    assert await store.runs_with_jobs_to_cancel() == []  # the run is its job's owner again
    await train(ctx, run_id)
    assert backend.calls["create"] == 1
    followed = await store.get(run_id)
    assert followed.artifacts.training_job_id == "job-" + followed.training.job_suffix(run_id, "mf")
    assert "following job" in followed.events[-1].message

    # Failed again; this time the job is cancelled; queued again: a new job, a new suffix.
    backend.reachable = True
    await store.fail_stage(run_id, "train", "timed out again")
    await reconcile_once(context(ctx))
    assert backend.calls["cancel"] == 2
    cancelled = await store.get(run_id)
    assert cancelled.training.status == "CANCELLED" and cancelled.live_remote_job is None
    assert await store.runs_with_jobs_to_cancel() == []
    await producer.enqueue("train", run_id)
    await train(ctx, run_id)
    renewed = await store.get(run_id)
    assert backend.calls["create"] == 2
    assert renewed.training.generation == 1 and renewed.training.previous_jobs == [
        cancelled.artifacts.training_job_id
    ]
    assert renewed.artifacts.training_job_id != cancelled.artifacts.training_job_id
    await pool.aclose()


async def test_cancelling_a_run_cancels_its_job_and_a_failed_cancel_is_retried(
    redis_db: str, tmp_path: Path
) -> None:
    ctx, store, _, pool, run_id = await setup(redis_db, tmp_path, [])
    backend = CancellableBackend([job(JobStatus.RUNNING)])
    context(ctx).backends["local"] = backend
    await train(ctx, run_id)
    await poll_training(ctx, run_id, 0)
    backend.reachable = False
    await store.cancel(run_id, "by hand")
    assert (
        (await reconcile_once(context(ctx)))
        .cancels[0]
        .startswith(f"{run_id}: could not cancel training job")
    )
    backend.reachable = True
    done = await reconcile_once(context(ctx))
    assert done.cancels == [
        f"{run_id}: cancelled training job job-{done.cancels[0].split('job-')[1]}"
    ]
    assert (await store.get(run_id)).training.status == "CANCELLED"
    assert await store.runs_with_jobs_to_cancel() == []
    assert (await reconcile_once(context(ctx))).cancels == []  # once cancelled, left alone
    await pool.aclose()


async def test_a_job_status_nobody_knows_is_recorded_and_looked_at_again(
    redis_db: str, tmp_path: Path
) -> None:
    odd = TrainingJob(id="job", status="PAUSED_FOR_MAINTENANCE", model="m")
    ctx, store, _backend, pool, run_id = await setup(redis_db, tmp_path, [odd])
    await train(ctx, run_id)
    await poll_training(ctx, run_id, 0)
    run = await store.get(run_id)
    assert run.state == RunState.RUNNING and run.training.status == "PAUSED_FOR_MAINTENANCE"
    assert "unknown status" in run.events[-1].message
    assert await pool.exists(f"arq:job:{run_id}:poll:1")
    await pool.aclose()


async def test_reconcile_rounds_never_overlap(redis_db: str, tmp_path: Path) -> None:
    ctx, _store, _backend, pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    rounds = await asyncio.gather(*(reconcile_once(context(ctx)) for _ in range(5)))
    assert any(r.skipped for r in rounds) and not all(r.skipped for r in rounds)
    assert [q for r in rounds for q in r.requeued] == [f"{run_id}:train"]
    await pool.aclose()
