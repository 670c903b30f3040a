"""The failure policy, driven per stage and per outcome: what each way an attempt can end
makes of the stage and the run — and no other module of the stages decides it."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from modfactory.backends import BackendError, BackendUnavailable
from modfactory.data.recipe import RecipeError
from modfactory.stages.policy import CUT_SHORT_FACTOR, Action, FailurePolicy
from modfactory.store.run import STAGES, Run, RunSpec, RunState, StageStatus
from modfactory.store.run_parts import StageState
from modfactory.store.runs import RunStore
from modfactory.values import JobStatus, RecipeParams, TrainingJob

SECRET = "sk-very-secret-0123456789"
POLICY = FailurePolicy(max_attempts=3, job_timeout=65, secrets=(SECRET,))

# (what ends the attempt, the decision, the reason recorded)
OUTCOMES = {
    "bad input": (RecipeError("row 3: field 'text' is empty"), Action.FAIL, "row 3: field"),
    "refused": (BackendError(f"401 for key {SECRET}"), Action.FAIL, "401 for key ***"),
    "unreachable": (BackendUnavailable("connect timeout"), Action.INTERRUPT, "connect timeout"),
    "too slow": (TimeoutError(), Action.INTERRUPT, "timed out after 60 s (MODFACTORY_JOB_TIMEOUT)"),
    "a bug": (KeyError("labels"), Action.FAIL, "KeyError: 'labels'"),
}


async def started(stage: str) -> tuple[RunStore, str]:
    store = RunStore(fakeredis.FakeAsyncRedis(), "policy")
    run = await store.create(RunSpec(source="synthetic", backend="local", recipe=RecipeParams()))
    for before in STAGES[: STAGES.index(stage)]:
        await store.start_stage(run.id, before)
        await store.finish_stage(run.id, before)
    assert await store.start_stage(run.id, stage, POLICY.gives_up)
    return store, run.id


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("outcome", sorted(OUTCOMES))
async def test_each_way_an_attempt_ends_is_decided_once_for_every_stage(
    stage: str, outcome: str
) -> None:
    exc, action, reason = OUTCOMES[outcome]
    store, run_id = await started(stage)

    async def step() -> None:
        raise exc

    decision = await POLICY.attempt(store, run_id, stage, step)
    assert decision.action == action and reason in decision.reason
    run = await store.get(run_id)
    if action == Action.FAIL:
        assert run.state == RunState.FAILED and run.stages[stage].state == StageStatus.FAILED
        assert run.error.startswith(f"{stage}: ") and reason in run.error
    else:  # interrupted: still running, to be attempted again, with how it ended
        assert run.state == RunState.RUNNING and run.stages[stage].state == StageStatus.RUNNING
        assert reason in run.stages[stage].last_error
    assert SECRET not in run.model_dump_json()


@pytest.mark.parametrize("stage", STAGES)
async def test_a_step_that_returns_is_left_alone_and_redis_away_is_raised(stage: str) -> None:
    store, run_id = await started(stage)

    async def fine() -> None:
        await store.note(run_id, stage, "did the work")

    assert await POLICY.attempt(store, run_id, stage, fine) is None

    async def redis_away() -> None:
        raise RedisConnectionError("Connection refused")

    with pytest.raises(RedisConnectionError):  # nothing could be recorded: arq's to retry
        await POLICY.attempt(store, run_id, stage, redis_away)
    assert (await store.get(run_id)).stages[stage].state == StageStatus.RUNNING


async def test_a_look_at_the_job_interrupted_is_looked_at_again_not_attempted_again() -> None:
    store, run_id = await started("train")
    told: list[str] = []

    async def unreachable() -> None:
        raise BackendUnavailable("503 from the API")

    async def later(why: str) -> None:
        told.append(why)

    decision = await POLICY.attempt(
        store, run_id, "train", unreachable, limit=POLICY.look_limit, interrupted=later
    )
    assert decision.action == Action.INTERRUPT and told == ["503 from the API"]
    assert (await store.get(run_id)).stages["train"].last_error is None  # no attempt used


@pytest.mark.parametrize(
    ("status", "action", "reason"),
    [
        (JobStatus.SUCCESS, Action.SUCCEED, "trained ft:model"),
        (JobStatus.CANCELLED, Action.CANCEL, "cancelled at the backend: by a person"),
        (JobStatus.FAILED, Action.FAIL, "FAILED: by a person"),
        (JobStatus.RUNNING, Action.WAIT, ""),
        ("REWINDING", Action.WAIT, "job ftjob-1 has an unknown status"),
    ],
)
async def test_the_training_jobs_status_decides_the_train_stage(
    status: str, action: Action, reason: str
) -> None:
    job = TrainingJob(
        id="ftjob-1", model="base", status=status, fine_tuned_model="ft:model", error="by a person"
    )
    decision = POLICY.after_look(job)
    assert decision.action == action and reason in decision.reason
    if action in (Action.FAIL, Action.CANCEL):
        store, run_id = await started("train")
        await POLICY.apply(store, run_id, "train", decision)
        run = await store.get(run_id)
        assert run.state == (RunState.FAILED if action == Action.FAIL else RunState.CANCELLED)


def test_a_stage_stalled_max_attempts_times_is_given_up_naming_the_last_end() -> None:
    assert POLICY.gives_up(StageState(attempts=5, stalled=2, last_error="503")) is None
    said = POLICY.gives_up(StageState(attempts=5, stalled=3, last_error="503"))
    assert said == (
        "gave up after 3 attempts that ran and made no progress (5 in all; "
        "MODFACTORY_STAGE_MAX_ATTEMPTS); the last: 503"
    )
    assert "the worker was lost" in POLICY.gives_up(StageState(attempts=3, stalled=3))


def test_attempts_lost_before_they_ran_count_apart_and_still_end_a_stage() -> None:
    """Workers killed before an attempt could run prove nothing: they do not use up the
    attempts budget, but a stage whose every attempt dies at once still fails, bounded."""
    lost_early = StageState(attempts=11, stalled=2, cut_short=3 * CUT_SHORT_FACTOR - 1)
    assert POLICY.gives_up(lost_early) is None
    lost_early.cut_short += 1
    said = POLICY.gives_up(lost_early)
    assert said is not None and said.startswith(
        f"gave up after {3 * CUT_SHORT_FACTOR} attempts whose worker was lost within 10 s"
    )
    assert "\n" not in said


def test_whether_an_attempt_ran_decides_what_its_stalling_counts_as() -> None:
    """Lost before it ran: cut short. Marked as run (it lasted), or ended of itself with an
    error: stalled. Moved the stage on: neither."""
    run = Run(id="run-1", spec=RunSpec(source="synthetic", backend="local", recipe=RecipeParams()))
    gives_up = POLICY.gives_up
    assert run.start_stage("evaluate", gives_up)
    assert run.start_stage("evaluate", gives_up)  # attempt 1 lost at once
    assert (run.stages["evaluate"].cut_short, run.stages["evaluate"].stalled) == (1, 0)
    assert not run.mark_ran("evaluate", 1)  # a mark for an earlier attempt is refused
    assert run.mark_ran("evaluate", 2)
    assert run.start_stage("evaluate", gives_up)  # attempt 2 lost after it ran
    assert (run.stages["evaluate"].cut_short, run.stages["evaluate"].stalled) == (1, 1)
    assert run.interrupt_stage("evaluate", "HTTP 503")
    assert run.start_stage("evaluate", gives_up)  # attempt 3 ended of itself, quickly
    assert (run.stages["evaluate"].cut_short, run.stages["evaluate"].stalled) == (1, 2)
    assert run.record_progress("evaluate", "test texts classified", 64, 882)
    assert run.start_stage("evaluate", gives_up)  # attempt 4 moved the stage on
    assert (run.stages["evaluate"].cut_short, run.stages["evaluate"].stalled) == (1, 2)


async def test_an_attempt_that_lasts_is_marked_as_run_and_a_quick_one_is_not() -> None:
    store, run_id = await started("build")
    quick = FailurePolicy(max_attempts=3, job_timeout=65, min_attempt=0.05)
    marked = asyncio.Event()
    mark_ran = store.mark_ran

    async def marking(*args: object) -> None:
        await mark_ran(*args)  # type: ignore[arg-type]
        marked.set()

    store.mark_ran = marking  # type: ignore[method-assign]
    await quick.attempt(store, run_id, "build", marked.wait, attempt=1)  # lasts until marked
    assert (await store.get(run_id)).stages["build"].ran

    async def nothing() -> None:
        return None

    store2, run2 = await started("build")
    await POLICY.attempt(store2, run2, "build", nothing, attempt=1)  # ends before 10 s
    assert not (await store2.get(run2)).stages["build"].ran


def test_no_other_module_of_the_stages_fails_or_interrupts_a_stage() -> None:
    stages = Path(__file__).resolve().parents[1] / "src" / "modfactory" / "stages"
    deciders = set()
    for path in stages.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("fail_stage", "interrupt_stage"):
                deciders.add(path.stem)
    assert deciders == {"policy"}


async def test_a_truly_stuck_stage_fails_after_max_attempts_step_limits() -> None:
    """A step that never returns is cut at the step limit (it ran: it counts), so the stage
    fails after ``max_attempts`` attempts — within max_attempts x the step limit."""
    policy = FailurePolicy(max_attempts=2, job_timeout=6, min_attempt=3600)  # limit: 1 s
    store, run_id = await started("upload")  # attempt 1 under way
    run, attempts = await store.get(run_id), 0
    while run is not None:
        attempts += 1
        decision = await policy.attempt(
            store, run_id, "upload", asyncio.Event().wait, attempt=run.stages["upload"].attempts
        )
        assert decision is not None and decision.action == Action.INTERRUPT
        assert decision.reason == "timed out after 1 s (MODFACTORY_JOB_TIMEOUT)"
        run = await store.start_stage(run_id, "upload", policy.gives_up)
    failed = await store.get(run_id)
    assert attempts == 2 and failed.state == RunState.FAILED
    assert failed.error == (
        "upload: gave up after 2 attempts that ran and made no progress (2 in all; "
        "MODFACTORY_STAGE_MAX_ATTEMPTS); the last: timed out after 1 s (MODFACTORY_JOB_TIMEOUT)"
    )
