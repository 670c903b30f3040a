"""Stage jobs called directly against real Redis, with a scripted backend behind the interface."""

from __future__ import annotations

import json
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from modfactory.backends.base import Backend, BackendUnavailable, JobRequest, TargetScores
from modfactory.evaluation.metrics import tune_thresholds
from modfactory.settings import Settings
from modfactory.stages.context import StageContext
from modfactory.stages.pipeline import JOBS
from modfactory.store import queue
from modfactory.store.run import RunSpec, RunState
from modfactory.store.runs import RunStore
from modfactory.values import (
    Checkpoint,
    DatasetSummary,
    JobStatus,
    RecipeParams,
    TrainingJob,
    UploadedFile,
)

evaluate = JOBS["evaluate"]
train = JOBS["train"]
poll_training = JOBS["poll_training"]
SVG = "{http://www.w3.org/2000/svg}"


class ScriptedBackend(Backend):
    """Answers ``get_job`` from a script of statuses; counts every call that costs money."""

    name = "local"
    base_model = "scripted"

    def __init__(self, script: list[TrainingJob]) -> None:
        self.script = script
        self.calls: dict[str, int] = {"create": 0, "get": 0, "start": 0}

    def hyperparameters(self, overrides):
        return overrides

    async def upload_file(self, path: Path, tag: str) -> UploadedFile:
        raise AssertionError("not used")

    async def create_job(self, request: JobRequest) -> TrainingJob:
        self.calls["create"] += 1
        return TrainingJob(id=f"job-{request.suffix}", status=JobStatus.QUEUED, model="m")

    async def get_job(self, job_id: str) -> TrainingJob:
        self.calls["get"] += 1
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    async def start_job(self, job_id: str) -> TrainingJob:
        self.calls["start"] += 1
        return TrainingJob(id=job_id, status=JobStatus.RUNNING, model="m")

    async def cancel_job(self, job_id: str) -> TrainingJob:
        raise AssertionError("not used")

    async def classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        raise AssertionError("not used")


async def setup(redis_db: str, tmp_path: Path, script: list[TrainingJob]):
    settings = Settings(redis_url=redis_db, data_dir=tmp_path, poll_interval=60)
    pool = await queue.open_pool(redis_db, settings.queue_name)
    store = RunStore(pool, settings.queue_name)
    backend = ScriptedBackend(script)
    ctx = {"modfactory": StageContext(settings, store, pool, backends={"local": backend})}
    run = await store.create(RunSpec(source="synthetic", backend="local", recipe=RecipeParams()))
    for stage in ("build", "upload"):
        await store.start_stage(run.id, stage)
        await store.finish_stage(
            run.id, stage, artifacts={"train_file_id": "f1", "validation_file_id": "f2"}
        )
    return ctx, store, backend, pool, run.id


async def trained(store: RunStore, run_id: str, files: dict[str, str]) -> None:
    """The run's train stage done: model ``ft:m``, an insult-only data set of ``files``."""
    await store.start_stage(run_id, "train")
    await store.finish_stage(
        run_id,
        "train",
        artifacts={**files, "model_id": "ft:m"},
        dataset=DatasetSummary(
            source="x", synthetic=True, labels=["insult"], dropped_labels=[], splits={}
        ),
    )


def job(status: JobStatus, steps: int = 0, **extra) -> TrainingJob:
    checkpoints = [
        Checkpoint(step=s, train_loss=1 / s, valid_loss=1.1 / s) for s in range(1, steps + 1)
    ]
    return TrainingJob(id="job", status=status, model="m", checkpoints=checkpoints, **extra)


async def test_looks_start_once_never_fork_and_chain_evaluation(
    redis_db: str, tmp_path: Path
) -> None:
    script = [job(JobStatus.VALIDATED), job(JobStatus.SUCCESS, 3, fine_tuned_model="ft:model")]
    ctx, store, backend, pool, run_id = await setup(redis_db, tmp_path, script)

    await train(ctx, run_id)
    await train(ctx, run_id)  # a retried train stage creates no second job
    assert backend.calls["create"] == 1
    assert await pool.exists(f"arq:job:{run_id}:poll:0")

    await poll_training(ctx, run_id, 0)  # VALIDATED: started, next look scheduled
    assert backend.calls == {"create": 1, "get": 1, "start": 1}
    assert await pool.exists(f"arq:job:{run_id}:poll:1")
    await poll_training(ctx, run_id, 0)  # the same look re-run after a crash: nothing new
    assert backend.calls == {"create": 1, "get": 1, "start": 1}
    assert (await store.get(run_id)).training.poll_seq == 1

    await poll_training(ctx, run_id, 1)  # SUCCESS
    run = await store.get(run_id)
    assert run.stages["train"].state == "succeeded" and run.artifacts.model_id == "ft:model"
    assert [h.status for h in run.training.history] == [
        "QUEUED",
        "VALIDATED",
        "RUNNING",
        "SUCCESS",
    ][1:]
    assert [c.step for c in run.training.checkpoints] == [1, 2, 3]
    assert run.artifacts.loss_chart == f"runs/{run_id}/loss.svg"  # a key in the store
    chart = ctx["modfactory"].artifacts.load(run.artifacts.loss_chart)
    drawn = ElementTree.fromstring(chart)  # an SVG: its loss lines through the 3 steps
    assert drawn.tag == f"{SVG}svg" and b"valid loss" in chart
    lines = [len(p.get("points", "").split()) for p in drawn.iter(f"{SVG}polyline")]
    assert lines and set(lines) == {3}
    assert (tmp_path / run.artifacts.loss_chart).is_file()
    assert await pool.exists(f"arq:job:{run_id}:evaluate")
    assert not await pool.exists(f"arq:job:{run_id}:poll:2")
    await poll_training(ctx, run_id, 1)  # a late duplicate look changes nothing
    assert backend.calls["get"] == 2


@pytest.mark.parametrize(
    ("status", "error", "state", "expected"),
    [
        (JobStatus.FAILED, "loss diverged", RunState.FAILED, "train: FAILED: loss diverged"),
        (
            JobStatus.FAILED_VALIDATION,
            "train.jsonl:3: bad label",
            RunState.FAILED,
            "train: FAILED_VALIDATION: train.jsonl:3: bad label",
        ),
        (
            JobStatus.CANCELLED,
            "cancelled in the console",
            RunState.CANCELLED,
            "the training job was cancelled at the backend: cancelled in the console",
        ),
    ],
)
async def test_a_job_that_ends_badly_ends_the_run_with_the_backends_reason(
    redis_db: str,
    tmp_path: Path,
    status: JobStatus,
    error: str,
    state: RunState,
    expected: str,
) -> None:
    ctx, store, backend, pool, run_id = await setup(redis_db, tmp_path, [job(status, error=error)])
    await train(ctx, run_id)
    await poll_training(ctx, run_id, 0)
    run = await store.get(run_id)
    assert run.state == state and run.error == expected
    assert backend.calls["start"] == 0
    assert not await pool.exists(f"arq:job:{run_id}:poll:1")
    assert not await pool.exists(f"arq:job:{run_id}:evaluate")


async def test_an_unreachable_backend_delays_the_next_look_without_failing(
    redis_db: str, tmp_path: Path
) -> None:
    ctx, store, backend, pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])

    async def unreachable(job_id: str) -> TrainingJob:
        raise BackendUnavailable("Mistral did not answer the request to get job j after 7 attempts")

    backend.get_job = unreachable
    await train(ctx, run_id)
    await poll_training(ctx, run_id, 0)
    run = await store.get(run_id)
    assert run.state == RunState.RUNNING and run.stages["train"].state == "running"
    assert "looking again later" in run.events[-1].message
    assert run.training.poll_seq == 1 and await pool.exists(f"arq:job:{run_id}:poll:1")
    score = await pool.zscore("modfactory", f"{run_id}:poll:1")
    assert score / 1000 - time.time() > 60  # after poll_max_interval (120 s ± 10 %), not at once


async def test_thresholds_come_from_validation_never_from_test(
    redis_db: str, tmp_path: Path
) -> None:
    """Validation says 0.3 is the best insult threshold; test alone would say 0.7."""
    ctx, store, backend, _pool, run_id = await setup(redis_db, tmp_path, [job(JobStatus.RUNNING)])
    rows = {
        "validation": [("v-pos", ["insult"], 0.3)] * 10 + [("v-neg", ["safe"], 0.1)] * 30,
        "test": [("t-pos", ["insult"], 0.7)] * 10 + [("t-neg", ["safe"], 0.4)] * 30,
    }
    files = {}
    for split, records in rows.items():
        files[f"{split}_file"] = str(tmp_path / f"{split}.jsonl")
        Path(files[f"{split}_file"]).write_text(
            "".join(
                json.dumps({"text": f"{t} {i}", "labels": {"moderation": lbl}}) + "\n"
                for i, (t, lbl, _) in enumerate(records)
            )
        )
    score_of = {t: s for records in rows.values() for t, _, s in records}

    async def classify(model: str, inputs: list[str]) -> list:
        return [{"moderation": {"scores": {"insult": score_of[t.split()[0]]}}} for t in inputs]

    backend.classify = classify
    await trained(store, run_id, files)
    await evaluate(ctx, run_id)
    run = await store.get(run_id)
    assert run.state == RunState.SUCCEEDED, run.error
    insult = run.metrics.labels["insult"]
    assert run.metrics.thresholds_from == "validation"
    assert insult.tuned_threshold == 0.3
    test_truth = [lbl for _, lbl, _ in rows["test"]]
    test_scores = [{"insult": s} for _, _, s in rows["test"]]
    assert (
        tune_thresholds(test_truth, test_scores, ["insult"])["insult"] == 0.7
    )  # what test would pick
    assert insult.tuned_recall == 1.0 and insult.tuned_precision == 0.25  # 0.3 flags all of test
    assert insult.f1 == 1.0  # at 0.5, test is separated perfectly
