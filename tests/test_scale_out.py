"""Many machines sharing only Redis and a bucket (moto's S3 server, over HTTP): a worker's
machine is lost mid-run and another finishes the run from its own empty disk; a server on a
third machine answers from the champion in the bucket; a fourth writes the report; the S3
endpoint goes away and comes back under a stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from helpers import producer_for, serve_process, settings_for, wait_until, worker_process
from modfactory.artifacts import ArtifactStore
from modfactory.backends.local.trainer import PAUSE_ENV
from modfactory.store.run import RunState
from s3_server import S3Server

pytestmark = pytest.mark.slow  # workers, trainers, a server and an S3 server

TOKEN = "scale-out-serve-token-0123456789abcdef"
ADMIN = "scale-out-webhook-token-0123456789abcdef"


def machine(root: Path, name: str) -> Path:
    """A machine's own disk: an empty data dir nobody else sees."""
    directory = root / name
    directory.mkdir()
    return directory


def cli(*args: str, data_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modfactory", *args],
        env={**os.environ, **env, "MODFACTORY_DATA_DIR": str(data_dir), "COLUMNS": "200"},
        cwd=data_dir,
        text=True,
        capture_output=True,
        timeout=300,
    )


def trainer_log_says(data_dir: Path, text: str) -> bool:
    return any(text in log.read_text() for log in (data_dir / "logs").glob("local-trainer-*"))


async def test_a_lost_machine_s_run_is_finished_served_and_reported_from_other_machines(
    redis_db: str, s3_bucket: str, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = f"{s3_bucket}/modfactory"
    first = settings_for(redis_db, machine(tmp_path, "one"), artifacts_url=bucket, local_grid="off")
    producer = await producer_for(first)
    run = (await producer.submit(producer.spec(source="synthetic:10000"))).run
    slow = {PAUSE_ENV: "0.8"}  # a slow trainer (6 candidates, 5 s): lost while it trains

    # Machine one builds, uploads and starts training; then it is lost, disk and all.
    with worker_process(first, tmp_path / "one.log", machine=True, **slow) as one:
        training = await wait_until(
            producer.store, run.id, lambda r: len(r.training.checkpoints) >= 1
        )
        os.killpg(one.pid, signal.SIGKILL)  # the worker and its trainer
        one.wait(10)
    shutil.rmtree(first.data_dir)
    assert training.stages["build"].state == "succeeded" and training.current_stage == "train"
    assert training.artifacts.train_file == f"runs/{run.id}/dataset/train.jsonl"

    # Machine two, from an empty disk: its trainer starts once the lost one's lease lapsed;
    # the S3 endpoint goes away while it trains and comes back.
    second = first.model_copy(update={"data_dir": machine(tmp_path, "two")})
    with worker_process(second, tmp_path / "two.log", machine=True, **slow):
        record = f"{first.queue_name}:local:job:{training.artifacts.training_job_id}"
        r = redis.Redis.from_url(redis_db)
        await wait_until(
            producer.store, run.id, lambda _: json.loads(r.get(record))["trainer_starts"] == 2
        )
        with s3_server.outage():
            await wait_until(
                producer.store,
                run.id,
                lambda _: trainer_log_says(second.data_dir, "artifact store unreachable"),
            )
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal, timeout=240)
    assert final.state == RunState.SUCCEEDED, final.error
    assert json.loads(r.get(record))["trainer_starts"] == 2  # one trainer per machine, no more

    # Everything the run made is in the bucket, under its keys.
    keys = set(s3_server.keys(bucket.removeprefix("s3://").split("/")[0]))
    for key in ("dataset/train.jsonl", "dataset/distribution.svg", "loss.svg", "report.html"):
        assert f"modfactory/runs/{run.id}/{key}" in keys
    assert f"modfactory/local/jobs/{final.artifacts.training_job_id}/model.joblib" in keys
    assert not any(p.name.endswith(".jsonl") for p in second.data_dir.rglob("*"))  # no copies

    # Machine three serves the champion, loaded from the bucket.
    third = first.model_copy(update={"data_dir": machine(tmp_path, "three")})
    tokens = {"MODFACTORY_SERVE_TOKEN": TOKEN, "MODFACTORY_WEBHOOK_TOKEN": ADMIN}
    with serve_process(third, tmp_path / "serve.log", **tokens) as (_, url):
        answer = httpx.post(
            f"{url}/v1/moderations",
            json={"model": "moderation", "input": ["you stupid idiot", "the council met"]},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        shown = httpx.get(f"{url}/v1/runs/{run.id}", headers={"Authorization": f"Bearer {ADMIN}"})
    urls = shown.json()["artifact_urls"]  # the runs API says where the files are
    assert urls["report_html"] == f"{bucket}/runs/{run.id}/report.html"
    assert urls["train_file"] == f"{bucket}/runs/{run.id}/dataset/train.jsonl"
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert results[0]["categories"]["insult"] and not results[1]["categories"]["insult"]

    # Machine four reports, shows and classifies with the run, from the same settings.
    fourth = machine(tmp_path, "four")
    env = {"MODFACTORY_REDIS_URL": redis_db, "MODFACTORY_ARTIFACTS_URL": bucket}
    report = cli("report", run.id, data_dir=fourth, env=env)
    assert report.returncode == 0, report.stderr
    assert f"report: {bucket}/runs/{run.id}/report.html" in report.stdout
    status = json.loads(cli("status", run.id, "--json", data_dir=fourth, env=env).stdout)
    assert status["artifact_urls"]["report_html"] == f"{bucket}/runs/{run.id}/report.html"
    classified = cli("classify", "you idiot", "--run", run.id, "--json", data_dir=fourth, env=env)
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)["results"][0]["categories"]["insult"] is True
    page = ArtifactStore(bucket).load_text(f"runs/{run.id}/report.html")
    assert page.count('src="data:image/svg+xml;base64,') == 3  # its charts, read from the bucket
