"""End to end through a real redis-server and real arq worker processes (local backend)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from arq.connections import create_pool
from redis.asyncio import Redis

from modfactory import jobs
from modfactory.producer import Producer
from modfactory.runs import STAGES, Run, RunState, RunStore
from modfactory.settings import Settings

pytestmark = pytest.mark.slow


def settings_for(redis_url: str, data_dir: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=data_dir, poll_interval=0.3, job_timeout=15)


@contextmanager
def worker_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        "MODFACTORY_REDIS_URL": settings.redis_url,
        "MODFACTORY_DATA_DIR": str(settings.data_dir),
        "MODFACTORY_POLL_INTERVAL": str(settings.poll_interval),
        "MODFACTORY_JOB_TIMEOUT": str(settings.job_timeout),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modfactory", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


async def wait_until(store: RunStore, run_id: str, condition, timeout: float = 180) -> Run:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await store.get(run_id)
        if condition(run):
            return run
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(
                f"run {run_id} stuck: {run.state} at {run.current_stage}: {run.events[-3:]}"
            )
        await asyncio.sleep(0.2)


async def producer_for(settings: Settings) -> Producer:
    pool = await create_pool(
        jobs.redis_settings(settings.redis_url),
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        default_queue_name=settings.queue_name,
    )
    return Producer(pool, settings)


async def test_a_run_goes_through_all_four_stages(redis_db: str, tmp_path: Path) -> None:
    settings = settings_for(redis_db, tmp_path / "data")
    producer = await producer_for(settings)
    run = await producer.submit(producer.spec(source="synthetic:3000"))

    # The queued job is JSON, not pickle.
    raw = await Redis.from_url(redis_db).get(f"arq:job:{run.id}:build")
    assert json.loads(raw)["f"] == "build" and json.loads(raw)["a"] == [run.id]

    with worker_process(settings, tmp_path / "worker.log"):
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
    assert final.state == RunState.SUCCEEDED, final.error
    assert all(final.stages[s].state == "succeeded" for s in STAGES)
    assert final.dataset.synthetic and final.dataset.splits["train"].rows > 500
    assert final.artifacts.model_id.startswith("ft:classifier:local:")
    assert [h.status for h in final.training.history][-1] == "SUCCESS"
    assert len(final.training.checkpoints) == settings.local_epochs
    for path in (
        final.artifacts.distribution_chart,
        final.artifacts.loss_chart,
        final.artifacts.metrics_file,
    ):
        assert Path(path).stat().st_size > 0
    metrics = final.metrics
    assert set(metrics["labels"]) == set(final.dataset.labels)
    assert 0.5 < metrics["macro"]["roc_auc"] <= 1 and metrics["micro"]["f1"] > 0.3
    assert metrics["rows"] == final.dataset.splits["test"].rows


async def test_a_bad_source_fails_the_run_with_the_reason(redis_db: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for split in ("train", "validation", "test"):
        (source / f"{split}.jsonl").write_text(json.dumps({"text": "hi", "toxicity": 0.9}) + "\n")
    settings = settings_for(redis_db, tmp_path / "data")
    producer = await producer_for(settings)
    run = await producer.submit(producer.spec(source=str(source)))
    with worker_process(settings, tmp_path / "worker.log"):
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
    assert final.state == RunState.FAILED
    assert final.stages["build"].state == "failed"
    assert "'severe_toxicity'" in final.error and "columns found: text, toxicity" in final.error
    assert final.stages["upload"].state == "pending"


async def test_a_killed_worker_is_replaced_and_the_model_not_retrained(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_db, tmp_path / "data")
    producer = await producer_for(settings)
    run = await producer.submit(
        producer.spec(source="synthetic:30000", hyperparameters={"epochs": 40})
    )
    log = tmp_path / "worker.log"
    with worker_process(settings, log) as first:
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
    assert [c.step for c in final.training.checkpoints] == list(range(1, 41))
    job_dir = settings.data_dir / "local" / "jobs" / final.artifacts.training_job_id
    assert json.loads((job_dir / "job.json").read_text())["trainer_starts"] == 1
    model_mtime = (job_dir / "model.joblib").stat().st_mtime_ns

    # Queue train and evaluate again for the finished run: nothing is retrained or changed.
    await producer.enqueue("train", run.id)
    await producer.enqueue("evaluate", run.id)
    with worker_process(settings, log):
        await asyncio.sleep(3)
    assert (job_dir / "model.joblib").stat().st_mtime_ns == model_mtime
    assert (await producer.store.get(run.id)).updated_at == final.updated_at
