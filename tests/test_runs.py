"""The run store: transitions, idempotence and atomicity."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest
from redis.asyncio import Redis

from modfactory.store.run import (
    STAGES,
    ActiveRunExists,
    RunNotFound,
    RunSpec,
    RunState,
    RunStateError,
    StageStatus,
)
from modfactory.store.runs import RunStore
from modfactory.values import Checkpoint, JobStatus, RecipeParams, TrainingJob


def spec() -> RunSpec:
    return RunSpec(source="synthetic:100", backend="local", recipe=RecipeParams())


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeAsyncRedis(), "test")


async def test_a_run_goes_through_its_stages_and_succeeds(store: RunStore) -> None:
    run = await store.create(spec())
    assert run.state == RunState.QUEUED and run.current_stage == "build"
    for stage in STAGES:
        started = await store.start_stage(run.id, stage)
        assert started is not None and started.stages[stage].state == StageStatus.RUNNING
        await store.finish_stage(
            run.id, stage, artifacts={"model_id": "m"} if stage == "train" else None
        )
    final = await store.get(run.id)
    assert final.state == RunState.SUCCEEDED and final.finished_at is not None
    assert final.artifacts.model_id == "m"
    assert all(final.stages[s].finished_at >= final.stages[s].started_at for s in STAGES)
    assert [e.message for e in final.events][-1] == "run succeeded"
    # Re-running a finished stage changes nothing.
    assert await store.start_stage(run.id, "build") is None
    assert (await store.finish_stage(run.id, "evaluate")).updated_at == final.updated_at


async def test_a_failure_ends_the_run_and_stops_later_stages(store: RunStore) -> None:
    run = await store.create(spec())
    await store.start_stage(run.id, "build")
    failed = await store.fail_stage(run.id, "build", "split 'train' is empty")
    assert failed.state == RunState.FAILED
    assert failed.error == "build: split 'train' is empty"
    assert failed.stages["build"].error == "split 'train' is empty"
    assert await store.start_stage(run.id, "upload") is None
    reopened = await store.reopen_stage(run.id, "build")
    assert (
        reopened.state == RunState.QUEUED and reopened.stages["build"].state == StageStatus.PENDING
    )
    assert (await store.start_stage(run.id, "build")).stages[
        "build"
    ].attempts == 1  # a fresh budget


async def test_training_looks_are_recorded_once_each(store: RunStore) -> None:
    run = await store.create(spec())
    job = TrainingJob(
        id="j",
        status=JobStatus.RUNNING,
        model="m",
        checkpoints=[Checkpoint(step=2, train_loss=0.5), Checkpoint(step=1, train_loss=0.9)],
    )
    await store.record_training(run.id, job)
    await store.record_training(run.id, job)
    job.checkpoints.insert(0, Checkpoint(step=3, train_loss=0.3))
    recorded = await store.record_training(run.id, job)
    assert [c.step for c in recorded.training.checkpoints] == [1, 2, 3]
    assert [h.status for h in recorded.training.history] == ["RUNNING"]


async def test_unknown_run_is_named(store: RunStore) -> None:
    with pytest.raises(RunNotFound, match="run-nope"):
        await store.get("run-nope")


async def test_concurrent_writers_lose_nothing_and_a_poll_advances_once(redis_db: str) -> None:
    """Real Redis, many connections: WATCH/MULTI keeps every update and one winner."""
    clients = [Redis.from_url(redis_db) for _ in range(8)]
    stores = [RunStore(c, "test") for c in clients]
    run = await stores[0].create(spec())
    fields = [
        "train_file",
        "validation_file",
        "test_file",
        "dataset_dir",
        "train_file_id",
        "validation_file_id",
        "training_job_id",
        "model_id",
    ]
    await asyncio.gather(
        *(s.record_artifacts(run.id, **{f: f"v-{f}"}) for s, f in zip(stores, fields, strict=True))
    )
    artifacts = (await stores[0].get(run.id)).artifacts
    assert all(getattr(artifacts, f) == f"v-{f}" for f in fields)

    wins = await asyncio.gather(*(stores[i % 8].advance_poll(run.id, 0) for i in range(40)))
    assert sum(wins) == 1
    assert (await stores[0].get(run.id)).training.poll_seq == 1
    for c in clients:
        await c.aclose()


async def test_progress_is_kept_only_while_the_stage_runs(store: RunStore) -> None:
    run = await store.create(spec())
    await store.record_progress(run.id, "build", "train rows", 5, 10)
    assert (await store.get(run.id)).progress is None  # build is not running yet
    await store.start_stage(run.id, "build")
    await store.record_progress(run.id, "build", "train rows", 5, 10)
    progress = (await store.get(run.id)).progress
    assert (progress.stage, progress.what, progress.done, progress.total) == (
        "build",
        "train rows",
        5,
        10,
    )
    assert (await store.finish_stage(run.id, "build")).progress is None


async def test_a_cancelled_run_stays_cancelled_when_its_running_stage_ends(store: RunStore) -> None:
    run = await store.create(spec())
    await store.start_stage(run.id, "build")
    cancelled = await store.cancel(run.id, "cancelled by the user")
    assert cancelled.stages["build"].state == StageStatus.CANCELLED
    after = await store.finish_stage(run.id, "build", artifacts={"dataset_dir": "/x"})
    assert after.state == RunState.CANCELLED and after.stages["build"].state == "cancelled"
    with pytest.raises(RunStateError, match="is cancelled already"):
        await store.cancel(run.id, "again")


async def test_one_unfinished_run_per_model_name(store: RunStore) -> None:
    first = await store.create(spec())
    with pytest.raises(ActiveRunExists, match=f"unfinished run: {first.id} \\(queued at build\\)"):
        await store.create(spec())
    other_model = await store.create(spec().model_copy(update={"model_name": "other"}))
    assert (await store.active_run("other")).id == other_model.id

    await store.start_stage(first.id, "build")
    await store.fail_stage(first.id, "build", "bad file")
    assert await store.active_run("moderation") is None
    second = await store.create(spec())  # the failed run no longer holds the slot

    with pytest.raises(ActiveRunExists, match=second.id):
        await store.reopen_stage(first.id, "build")  # reopening would make two unfinished
    assert (await store.get(first.id)).state == RunState.FAILED  # and nothing changed
    await store.cancel(second.id, "by hand")
    reopened = await store.reopen_stage(first.id, "build")
    assert reopened.state == RunState.QUEUED
    assert (await store.active_run("moderation")).id == first.id


async def test_racing_creates_on_real_redis_make_exactly_one_run(redis_db: str) -> None:
    clients = [Redis.from_url(redis_db) for _ in range(10)]
    stores = [RunStore(c, "test") for c in clients]
    results = await asyncio.gather(
        *(stores[i % 10].create(spec()) for i in range(50)), return_exceptions=True
    )
    created = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, ActiveRunExists)]
    assert len(created) == 1 and len(refused) == 49
    assert {r.run.id for r in refused} == {created[0].id}
    assert len(await stores[0].list()) == 1
    for c in clients:
        await c.aclose()


async def test_metric_indexes_follow_every_change_and_old_runs_are_reindexed(
    store: RunStore,
) -> None:
    run = await store.create(spec())
    for stage in STAGES:
        await store.start_stage(run.id, stage)
        await store.finish_stage(run.id, stage)
        await store.finish_stage(run.id, stage)  # a repeated finish counts nothing more
    states = await store.redis.hgetall(store.states_key)
    assert states == {run.id.encode(): b"succeeded"}
    counts = await store.state_counts()
    assert {state: n for state, n in counts.items() if n} == {"succeeded": 1}
    histogram = await store.redis.hgetall(store.stage_histogram_key)
    assert {k.decode(): float(v) for k, v in histogram.items() if k.endswith(b"|count")} == {
        f"{stage}|local|count": 1 for stage in STAGES
    }
    assert all(histogram[f"{stage}|local|inf".encode()] == b"1" for stage in STAGES)

    # As stored before the indexes existed: no state, per-run durations of an older version.
    await store.redis.delete(store.states_key, store.stage_histogram_key)
    await store.redis.hset(store.stage_seconds_key, "run-old:build", "mistral 42.5")
    assert await store.reindex() == 1
    assert await store.redis.hgetall(store.states_key) == states
    assert not await store.redis.exists(store.stage_seconds_key)  # folded, once
    again = await store.redis.hgetall(store.stage_histogram_key)
    assert again[b"build|mistral|count"] == b"1" and again[b"build|mistral|60"] == b"1"
    assert b"build|mistral|30" not in again
    assert {k: v for k, v in again.items() if b"|local|" in k} == histogram
    assert await store.reindex() == 0
    assert await store.redis.hgetall(store.stage_histogram_key) == again


def test_the_rules_of_a_run_hold_on_the_document_alone() -> None:
    """Each state change is a method of the document: no Redis needed to check its rule."""
    from modfactory.stages.policy import FailurePolicy
    from modfactory.store.run import Run

    gives_up = FailurePolicy(max_attempts=2, job_timeout=60).gives_up
    run = Run(id="run-1", spec=spec())
    assert run.start_stage("build", gives_up) and run.stages["build"].attempts == 1
    assert run.interrupt_stage("build", "Hub unreachable")
    assert run.start_stage("build", gives_up)  # a second attempt
    assert run.mark_ran("build", 2)  # it ran (and was lost)
    assert run.start_stage("build", gives_up)  # a third is refused: the stage fails
    assert run.state == RunState.FAILED
    assert run.error == (
        "build: gave up after 2 attempts that ran and made no progress (2 in all; "
        "MODFACTORY_STAGE_MAX_ATTEMPTS); the last: Hub unreachable"
    )
    assert not run.start_stage("build") and not run.fail_stage("build", "again")
    assert run.reopen_stage("build") and run.state == RunState.QUEUED
    assert run.stages["build"].attempts == 0  # a fresh budget

    for stage in STAGES:
        assert run.start_stage(stage)
        assert run.finish_stage(stage, artifacts={"model_id": "m"} if stage == "train" else None)
        assert not run.finish_stage(stage)  # once only
    assert run.state == RunState.SUCCEEDED and run.artifacts.model_id == "m"
    assert not run.cancel("late", strict=False)
    with pytest.raises(RunStateError, match="run run-1 is succeeded already"):
        run.cancel("late")
    with pytest.raises(RunStateError, match="not awaiting approval"):
        run.approve()

    looked = Run(id="run-2", spec=spec())
    looked.artifacts.training_job_id = "job-1"
    job = TrainingJob(id="job-1", status="RUNNING", model="m", checkpoints=[Checkpoint(step=1)])
    assert looked.record_training(job, advance_poll_from=0)
    assert looked.record_training(job, advance_poll_from=0)  # the same look again
    assert [c.step for c in looked.training.checkpoints] == [1]
    assert looked.training.quiet_looks == 1 and looked.training.poll_seq == 1
    with pytest.raises(RunStateError, match="job-1 of run run-2 may still be running"):
        looked.new_training_generation()
    looked.record_training(job.model_copy(update={"status": "FAILED"}))
    assert looked.new_training_generation() and looked.training.previous_jobs == ["job-1"]
    assert looked.artifacts.training_job_id is None and looked.training.generation == 1


async def test_a_look_queued_by_script_is_what_arq_would_have_queued_once(redis_db: str) -> None:
    """``queue.enqueue_poll`` writes arq's own job record (read back by arq's Job), deferred
    by the delay, and refuses an id that is already queued, as ``enqueue_job`` does."""
    from arq.jobs import Job
    from arq.jobs import JobStatus as ArqStatus

    from modfactory.store import queue

    pool = await queue.open_pool(redis_db, "looks")
    try:
        assert await queue.enqueue_poll(pool, "looks", "run-1", 3, delay=10)
        assert not await queue.enqueue_poll(pool, "looks", "run-1", 3, delay=0)
        job = Job(queue.poll_job_id("run-1", 3), pool, "looks", queue.deserialize)
        info = await job.info()
        assert info is not None
        assert (info.function, info.args, info.kwargs) == (queue.POLL_JOB, ["run-1", 3], {})  # JSON
        assert await job.status() == ArqStatus.deferred
        score = await pool.zscore("looks", queue.poll_job_id("run-1", 3))
        assert 9_000 <= score - info.enqueue_time.timestamp() * 1000 <= 11_000  # 10 s ± 10 %
        assert await pool.zcard("looks") == 1
    finally:
        await pool.aclose()


async def test_runs_are_found_by_state_and_model_name_newest_first(store: RunStore) -> None:
    made = []
    for name in ("a", "b", "a", "a.b", "a"):
        spec = RunSpec(source="s", backend="local", recipe=RecipeParams(), model_name=name)
        made.append(await store.create(spec, exclusive=False))
    await store.cancel(made[2].id, "by hand")
    assert [r.id for r in await store.find(10, model_name="a")] == [
        made[4].id,
        made[2].id,
        made[0].id,
    ]
    assert [r.id for r in await store.find(10, state="cancelled")] == [made[2].id]
    assert [r.id for r in await store.find(1, state="queued", model_name="a")] == [made[4].id]
    assert await store.find(10, model_name="nobody") == []
