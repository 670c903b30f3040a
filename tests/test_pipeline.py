"""End to end through a real redis-server and real arq worker processes (local backend)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from helpers import producer_for, settings_for, wait_until, worker_process
from modfactory.backends.local.trainer import PAUSE_ENV
from modfactory.store import queue
from modfactory.store.run import STAGES, RunState

pytestmark = pytest.mark.slow


async def test_a_run_goes_through_all_four_stages(redis_db: str, tmp_path: Path) -> None:
    settings = settings_for(redis_db, tmp_path / "data", log_format="json")
    producer = await producer_for(settings)
    run = (await producer.submit(producer.spec(source="synthetic:3000"))).run

    # The queued job is JSON, not pickle.
    raw = await Redis.from_url(redis_db).get(f"arq:job:{run.id}:build")
    assert json.loads(raw)["f"] == "build" and json.loads(raw)["a"] == [run.id]

    with worker_process(settings, tmp_path / "worker.log"):
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
    assert final.state == RunState.SUCCEEDED, final.error

    # The worker logs one JSON line per event of the run, each carrying the run id.
    lines = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()]
    mine = [line for line in lines if line.get("run_id") == run.id]
    assert [(line.get("stage"), line["message"]) for line in mine][-1] == (None, "run succeeded")
    assert ("build", "started") in [(line.get("stage"), line["message"]) for line in mine]
    assert len(mine) >= len(final.events) - 1  # 'created' was logged by the producer
    assert all(final.stages[s].state == "succeeded" for s in STAGES)
    assert final.dataset.synthetic and final.dataset.splits["train"].rows > 500
    assert final.artifacts.model_id.startswith("ft:classifier:local:")
    assert [h.status for h in final.training.history][-1] == "SUCCESS"
    chosen = final.training.metadata["selection"]  # MODFACTORY_LOCAL_GRID=small
    assert set(chosen) == set(final.training.classifier_targets[0]["labels"])
    assert len(final.training.checkpoints) == sum(c["candidates"] for c in chosen.values())
    for key in (  # all there as soon as the run is recorded succeeded: keys under the root
        final.artifacts.distribution_chart,
        final.artifacts.loss_chart,
        final.artifacts.metrics_file,
        final.artifacts.report_html,
        final.artifacts.report_json,
    ):
        assert key.startswith(f"runs/{run.id}/")
        assert (settings.data_dir / key).stat().st_size > 0
    report = json.loads((settings.data_dir / final.artifacts.report_json).read_text())
    assert report["state"] == "succeeded"
    metrics = final.metrics
    assert set(metrics.labels) == set(final.dataset.labels)
    assert 0.5 < metrics.macro.roc_auc <= 1 and metrics.micro.f1 > 0.3
    assert metrics.rows == final.dataset.splits["test"].rows


async def test_a_bad_source_fails_the_run_with_the_reason(redis_db: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for split in ("train", "validation", "test"):
        (source / f"{split}.jsonl").write_text(json.dumps({"text": "hi", "toxicity": 0.9}) + "\n")
    settings = settings_for(redis_db, tmp_path / "data")
    producer = await producer_for(settings)
    run = (await producer.submit(producer.spec(source=str(source)))).run
    with worker_process(settings, tmp_path / "worker.log"):
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
    assert final.state == RunState.FAILED
    assert final.stages["build"].state == "failed"
    assert "'severe_toxicity'" in final.error and "columns found: text, toxicity" in final.error
    assert final.stages["upload"].state == "pending"


async def test_a_killed_worker_is_replaced_and_the_model_not_retrained(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_db, tmp_path / "data", local_grid="off")
    producer = await producer_for(settings)
    run = (await producer.submit(producer.spec(source="synthetic:30000"))).run
    log = tmp_path / "worker.log"
    slow = {PAUSE_ENV: "0.5"}  # a slow trainer: the worker is killed while it trains
    with worker_process(settings, log, **slow) as first:
        training = await wait_until(
            producer.store, run.id, lambda r: len(r.training.checkpoints) >= 2
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert training.state == RunState.RUNNING and training.current_stage == "train"

    with worker_process(settings, log):
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal, timeout=240)
    assert final.state == RunState.SUCCEEDED, final.error
    assert final.stages["evaluate"].state == "succeeded"
    labels = len(final.training.metadata["selection"])  # one candidate each
    assert [c.step for c in final.training.checkpoints] == list(range(1, labels + 1))
    job_id = final.artifacts.training_job_id
    job = await producer.redis.get(f"{settings.queue_name}:local:job:{job_id}")
    assert json.loads(job)["trainer_starts"] == 1  # the trainer outlived its worker
    job_dir = settings.data_dir / "local" / "jobs" / job_id  # the model, in the store
    model_mtime = (job_dir / "model.joblib").stat().st_mtime_ns

    # Queue train and evaluate again for the finished run: nothing is retrained or changed.
    await producer.enqueue("train", run.id)
    await producer.enqueue("evaluate", run.id)
    jobs = [queue.stage_job_id(run.id, stage) for stage in ("train", "evaluate")]
    assert [await queue.job_exists(producer.redis, j) for j in jobs] == [True, True]
    with worker_process(settings, log):
        deadline = time.monotonic() + 60
        while any([await queue.job_exists(producer.redis, j) for j in jobs]):  # until both ran
            assert time.monotonic() < deadline, "the queued stages never ran"
            await asyncio.sleep(0.1)
    assert (job_dir / "model.joblib").stat().st_mtime_ns == model_mtime
    assert (await producer.store.get(run.id)).updated_at == final.updated_at
