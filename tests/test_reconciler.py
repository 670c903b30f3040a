"""No run stuck, no job left behind: the reconciler, stage attempts, re-attaching a live job,
cancelling the job of a run that is over. Real Redis, stage jobs called directly, a
scripted backend behind the interface."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from modfactory.backends.base import BackendUnavailable
from modfactory.producer import Producer
from modfactory.stages.context import StageContext
from modfactory.stages.pipeline import JOBS
from modfactory.stages.reconciler import reconcile_once, requeue_lost_steps
from modfactory.store import queue
from modfactory.store.leases import WorkerLease
from modfactory.store.run import RunSpec, RunState
from modfactory.store.runs import RunStore
from modfactory.values import JobStatus, RecipeParams, TrainingJob
from test_stages import ScriptedBackend, job, setup, trained

evaluate = JOBS["evaluate"]
train = JOBS["train"]
poll_training = JOBS["poll_training"]
upload = JOBS["upload"]

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


async def test_a_step_held_by_a_lost_worker_is_released_one_held_by_a_live_worker_is_not(
    redis_db: str, tmp_path: Path
) -> None:
    """arq's in-progress mark of a killed worker's job lives JOB_TIMEOUT + 10 s; the
    reconciler releases the job as soon as its holder's lease is gone, and only then."""
    ctx, store, _, pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    sc = context(ctx)
    queue_name = sc.settings.queue_name
    await queue.enqueue_stage(pool, queue_name, "train", run_id)
    job_id = queue.stage_job_id(run_id, "train")
    in_progress = f"arq:in-progress:{job_id}"
    await pool.psetex(in_progress, 610_000, b"1")  # what arq marks as a worker starts it

    assert await requeue_lost_steps(sc) == []  # no holder noted: arq's expiry decides
    assert await pool.exists(in_progress)

    alive = WorkerLease(pool, queue_name, ttl=60)
    await alive.start()
    await alive.hold(job_id, 610)
    assert await requeue_lost_steps(sc) == []  # its worker renews its lease
    assert await pool.exists(in_progress)

    await alive.stop()  # as if its lease had expired: the worker is lost
    assert await requeue_lost_steps(sc) == []  # once is not enough (a Redis restart)…
    assert await pool.exists(in_progress)
    assert await requeue_lost_steps(sc) == [job_id]  # …lost two rounds in a row: released
    assert not await pool.exists(in_progress)
    assert job_id in await queued_jobs(pool)  # still queued: the next worker takes it
    run = await store.get(run_id)
    assert f"worker {alive.worker_id} running it was lost" in run.events[-1].message
    assert await requeue_lost_steps(sc) == []  # released once
    await pool.aclose()


@pytest.mark.slow
async def test_a_long_scoring_step_renews_its_mark_and_its_holder_note_while_it_runs(
    redis_db: str,
) -> None:
    """arq's mark lives JOB_TIMEOUT + 10 s for every job; a scoring step allowed longer
    keeps both keys alive while it runs (renewed every third of that), and stops after."""
    from redis.asyncio import Redis

    pool = Redis.from_url(redis_db)
    lease = WorkerLease(pool, "mf-keep", ttl=60)
    await lease.start()
    job_id = "score-x:shard:0"
    in_progress, holder = f"arq:in-progress:{job_id}", f"mf-keep:holder:{job_id}"
    await pool.psetex(in_progress, 1500, b"1")
    await lease.hold(job_id, 1.5)
    async with lease.keeping(job_id, 1.5):  # renewed every 0.5 s, for 1.5 s
        renewals = 0
        while renewals < 4:  # outlives the 1.5 s each key was set for
            ttl = await pool.pttl(in_progress)
            assert ttl > 0 and await pool.pttl(holder) > 0
            if ttl > 1200:  # just renewed: wait for it to age, then for the next renewal
                renewals += 1
                while await pool.pttl(in_progress) > 1200:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.02)
    await lease.stop()
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
    (tmp_path / "t.jsonl").write_text("{}\n")
    await store.finish_stage(run.id, "build", artifacts={"train_file": str(tmp_path / "t.jsonl")})
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
    assert failed.error == (
        "upload: gave up after 5 attempts that ran and made no progress (5 in all; "
        f"MODFACTORY_STAGE_MAX_ATTEMPTS); the last: {UNREACHABLE}"
    )
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


async def evaluating_run(redis_db: str, tmp_path: Path, texts: int):
    """A run at its evaluate stage, classifying 10 texts a batch, one batch at a time."""
    tmp_path.mkdir()
    ctx, store, backend, pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    sc = context(ctx)
    sc.settings = sc.settings.model_copy(
        update={"classify_batch_size": 10, "classify_concurrency": 1}
    )
    sc.progress_every = 0  # every batch recorded: the attempts here last milliseconds
    files = {}
    for split in ("validation", "test"):
        files[f"{split}_file"] = str(tmp_path / f"{split}.jsonl")
        Path(files[f"{split}_file"]).write_text(
            "".join(
                json.dumps(
                    {
                        "text": f"{split} {i}",
                        "labels": {"moderation": ["insult"] if i % 3 else ["safe"]},
                    }
                )
                + "\n"
                for i in range(texts)
            )
        )
    await trained(store, run_id, files)
    return ctx, store, backend, pool, run_id


class Killer:
    """A backend's ``classify`` that answers ``answers`` batches per attempt, then hangs — where
    the test kills the attempt, as a SIGKILLed worker dies: nothing more is recorded."""

    def __init__(self, answers: int) -> None:
        self.answers = answers
        self.answered = 0
        self.hung = asyncio.Event()
        self.left = answers
        self.lasting: tuple[RunStore, str] | None = None  # each attempt ran before it hangs

    async def classify(self, model: str, inputs: list[str]) -> list:
        if self.left == 0:
            if self.lasting is not None:  # as if MODFACTORY_STAGE_MIN_ATTEMPT had passed
                store, run_id = self.lasting
                attempts = (await store.get(run_id)).stages["evaluate"].attempts
                await store.mark_ran(run_id, "evaluate", attempts)
            self.hung.set()
            await asyncio.Event().wait()  # until killed
        self.left -= 1
        self.answered += 1
        return [
            {"moderation": {"scores": {"insult": 0.9 if int(t.split()[1]) % 3 else 0.1}}}
            for t in inputs
        ]

    async def attempt(self, ctx: dict, run_id: str) -> None:
        """One attempt of evaluate, killed when it hangs (or done when it does not)."""
        self.left, self.hung = self.answers, asyncio.Event()
        attempt = asyncio.create_task(evaluate(ctx, run_id))
        hung = asyncio.create_task(self.hung.wait())
        await asyncio.wait({attempt, hung}, return_when=asyncio.FIRST_COMPLETED)
        hung.cancel()
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attempt
        # The progress records the attempt sent before it died land (with a real kill
        # they may be lost: at most a progress interval's worth, here none).
        records = [t for t in asyncio.all_tasks() if "record_progress" in t.get_coro().__qualname__]
        await asyncio.gather(*records)


async def test_a_stage_killed_at_the_same_point_fails_one_killed_while_progressing_succeeds(
    redis_db: str, tmp_path: Path
) -> None:
    """MODFACTORY_STAGE_MAX_ATTEMPTS (5) counts the attempts that ran and made no progress;
    those killed before they ran count apart."""
    ctx, store, backend, pool, run_id = await evaluating_run(redis_db, tmp_path / "a", texts=80)
    poison = Killer(answers=0)  # every attempt dies before its first batch comes back
    backend.classify = poison.classify
    for _ in range(5):  # killed at once: proves nothing about the stage
        await poison.attempt(ctx, run_id)
        assert (await store.get(run_id)).state == RunState.RUNNING
    poison.lasting = (store, run_id)
    for _ in range(5):  # killed after they ran: each one counts
        await poison.attempt(ctx, run_id)
        assert (await store.get(run_id)).state == RunState.RUNNING
    await poison.attempt(ctx, run_id)  # not made: five ran and made no progress
    failed = await store.get(run_id)
    assert failed.state == RunState.FAILED
    assert failed.stages["evaluate"].cut_short == 5
    assert failed.error == (
        "evaluate: gave up after 5 attempts that ran and made no progress (10 in all; "
        "MODFACTORY_STAGE_MAX_ATTEMPTS); the last: it ended without a result (the worker was lost)"
    )
    await pool.aclose()

    ctx, store, backend, pool, run_id = await evaluating_run(redis_db, tmp_path / "b", texts=100)
    progressing = Killer(answers=2)  # each attempt checkpoints two more batches, then dies
    backend.classify = progressing.classify
    for kill in range(8):
        await progressing.attempt(ctx, run_id)
        run = await store.get(run_id)
        assert run.state == RunState.RUNNING, (kill, run.error)
    assert run.stages["evaluate"].attempts == 8 and run.stages["evaluate"].stalled == 0
    progressing.answers = 100  # the ninth attempt is let finish
    await progressing.attempt(ctx, run_id)
    done = await store.get(run_id)
    assert done.state == RunState.SUCCEEDED, done.error
    assert progressing.answered == 20  # 10 + 10 batches of validation and test: each paid once
    await pool.aclose()
