"""The mistral backend through the real SDK, over HTTP, against the spec-following emulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from helpers import producer_for, settings_env, settings_for, wait_until, worker_process
from mistral_emulator import MistralEmulator
from modfactory.store.embedded_redis import EmbeddedRedis
from modfactory.store.run import RunState
from modfactory.web.monitoring import prometheus_text

pytestmark = pytest.mark.slow
KEY = "sk-emulated-0123456789abcdef"


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 240):
    return subprocess.run(
        [sys.executable, "-m", "modfactory", *args],
        env={**os.environ, "COLUMNS": "200", **env},
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def mistral_env(emulator: MistralEmulator, data: Path, **more: str) -> dict[str, str]:
    return {
        "MISTRAL_API_KEY": KEY,
        "MODFACTORY_MISTRAL_SERVER_URL": emulator.url,
        "MODFACTORY_DATA_DIR": str(data),
        "MODFACTORY_POLL_INTERVAL": "0.2",
        "MODFACTORY_POLL_MAX_INTERVAL": "1",
        **more,
    }


def test_run_end_to_end_and_the_key_is_never_written(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    env = mistral_env(emulator, tmp_path / "data", MODFACTORY_CLASSIFY_BATCH_SIZE="50")
    done = cli(
        "run", "--backend", "mistral", "--source", "synthetic:3000", "--json", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["state"] == "succeeded" and run["spec"]["backend"] == "mistral"
    assert run["artifacts"]["model_id"].startswith("ft:classifier:ministral-3b-latest:")
    assert run["training"]["metadata"]["cost"] == 6.56
    assert [c["step"] for c in run["training"]["checkpoints"]] == [50, 100, 150, 200]
    assert [h["status"] for h in run["training"]["history"]][-1] == "SUCCESS"
    assert Path(run["artifact_urls"]["loss_chart"]).stat().st_size > 0
    assert run["metrics"]["macro"]["roc_auc"] > 0.6
    rows = [run["dataset"]["splits"][split]["rows"] for split in ("validation", "test")]
    assert emulator.counts["classified_texts"] == sum(rows)  # each text once
    assert emulator.counts["classify_requests"] == sum(-(-n // 50) for n in rows)
    assert run["metrics"]["thresholds_from"] == "validation"
    moderation = run["metrics"]["baselines"]["mistral_moderation"]  # a key is set: compared
    assert moderation["labels"] == ["identity_attack", "sexual_explicit", "threat"]
    assert moderation["macro_roc_auc"] > 0.6
    assert emulator.counts["moderation_requests"] == -(-rows[1] // 50)
    page = Path(run["artifact_urls"]["report_html"]).read_text()  # the baselines in the report
    assert "mistral_moderation <small>(over identity_attack, sexual_explicit, threat)" in page
    assert (
        emulator.counts["uploads"],
        emulator.counts["jobs_created"],
        emulator.counts["starts"],
    ) == (1 + 1, 1, 1)

    # The key is nowhere: not in the output, the logs, the run files, nor Redis's own file.
    written = done.stdout + done.stderr
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and path.suffix not in (".png", ".joblib"):
            written += path.read_bytes().decode(errors="replace")
    assert KEY not in written


def test_a_mistral_run_that_beats_a_local_champion_replaces_it(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    """The champion is measured through its own backend (the local one) on the challenger's
    test file, and the better model wins whatever it was trained on."""
    import numpy as np
    import pyarrow.parquet as pq

    from modfactory.data.synthetic import generate_split

    noise = tmp_path / "noise"  # civil_comments rows whose scores belong to other rows
    noise.mkdir()
    for offset, (split, rows) in enumerate({"train": 3000, "validation": 300, "test": 300}.items()):
        table = generate_split(rows, seed=offset)
        rng = np.random.default_rng(offset)
        for i, name in enumerate(table.column_names):
            if name != "text":
                table = table.set_column(i, name, table.column(name).take(rng.permutation(rows)))
        pq.write_table(table, noise / f"{split}.parquet")
    data = tmp_path / "data"
    local_env = {"MODFACTORY_DATA_DIR": str(data), "MODFACTORY_LOCAL_GRID": "off"}
    first = cli(
        "run", "--backend", "local", "--source", str(noise), "--json", env=local_env, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr
    champion = json.loads(first.stdout)
    assert champion["metrics"]["promotion"]["promoted"] is True  # the first model of its name

    env = mistral_env(emulator, data, MODFACTORY_CLASSIFY_BATCH_SIZE="50")
    done = cli(
        "run", "--backend", "mistral", "--source", "synthetic:3000", "--json", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    decision = run["metrics"]["promotion"]
    assert decision["champion_run"] == champion["id"] and decision["promoted"] is True
    assert decision["champion"] < decision["challenger"]
    assert run["metrics"]["baselines"]["champion"]["run_id"] == champion["id"]
    models = json.loads(cli("models", "--json", env=env, cwd=tmp_path).stdout)
    assert models[0]["champion"]["run_id"] == run["id"]
    assert [p["run_id"] for p in models[0]["history"]] == [champion["id"]]


async def test_chaos_two_killed_workers_one_job_one_start_one_upload_each(
    emulator: MistralEmulator, redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_db, tmp_path / "data", mistral_api_key=KEY, mistral_server_url=emulator.url
    )
    current: dict[str, subprocess.Popen] = {}
    killed: list[str] = []

    def kill(moment: str):
        def hook(payload: dict) -> None:
            if moment not in killed and (moment != "polling" or payload["status"] == "RUNNING"):
                killed.append(moment)
                current["worker"].send_signal(signal.SIGKILL)
                current["worker"].wait(10)

        return hook

    emulator.hooks["create_job"] = kill("created")  # after the job exists, before the answer
    emulator.hooks["get_job"] = kill("polling")
    emulator.timing.checkpoints = 8  # RUNNING long enough to be seen

    producer = await producer_for(settings)
    run = (await producer.submit(producer.spec(source="synthetic:3000", backend="mistral"))).run
    for _ in range(3):  # the first two workers are killed, the third finishes
        with worker_process(settings, tmp_path / "worker.log") as worker:
            current["worker"] = worker
            deadline = time.monotonic() + 120
            while worker.poll() is None and time.monotonic() < deadline:
                if (await producer.store.get(run.id)).state.terminal:
                    break
                await asyncio.sleep(0.2)
        if (await producer.store.get(run.id)).state.terminal:
            break
    final = await producer.store.get(run.id)
    assert final.state == RunState.SUCCEEDED, (final.error, killed)
    assert killed == ["created", "polling"]
    assert emulator.counts["jobs_created"] == 1
    assert emulator.counts["starts"] == 1
    assert emulator.counts[f"upload:{run.id}-train.jsonl"] == 1
    assert emulator.counts[f"upload:{run.id}-validation.jsonl"] == 1
    assert final.stages["train"].attempts >= 2
    # the killed workers' jobs were taken up when their leases ran out, not 25 s later
    assert any("running it was lost" in e.message for e in final.events), final.events


async def test_workers_killed_after_creating_a_batch_job_and_while_following_it_make_one(
    emulator: MistralEmulator, redis_db: str, tmp_path: Path
) -> None:
    """A worker SIGKILLed as the batch job is created (before its answer), another while
    it looks at the running job: one upload, one batch job, the shard scored once."""
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        mistral_api_key=KEY,
        mistral_server_url=emulator.url,
        poll_interval=0.2,
        poll_max_interval=1,
        score_shard_rows=500,
    )
    producer = await producer_for(settings)
    run = (await producer.submit(producer.spec(source="synthetic:3000", backend="mistral"))).run
    with worker_process(settings, tmp_path / "trainer.log"):
        trained = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
    assert trained.state == RunState.SUCCEEDED, trained.error
    current: dict[str, subprocess.Popen] = {}
    killed: list[str] = []

    def kill(moment: str):
        def hook(payload: dict) -> None:
            if moment not in killed and (moment != "looking" or payload["status"] == "RUNNING"):
                killed.append(moment)
                current["worker"].send_signal(signal.SIGKILL)
                current["worker"].wait(10)

        return hook

    emulator.hooks["create_batch"] = kill("created")
    emulator.hooks["get_batch"] = kill("looking")
    emulator.timing.batch_running = 15.0  # RUNNING long enough to be seen after a restart
    job = await producer.submit_score(await producer.score_spec("synthetic:500"))
    for _ in range(3):  # the first two workers are killed, the third finishes
        with worker_process(settings, tmp_path / "worker.log") as worker:
            current["worker"] = worker
            deadline = time.monotonic() + 120
            while worker.poll() is None and time.monotonic() < deadline:
                if (await producer.scores.get(job.id)).state.terminal:
                    break
                await asyncio.sleep(0.2)
        if (await producer.scores.get(job.id)).state.terminal:
            break
    final = await producer.scores.get(job.id)
    assert final.state == "succeeded", (final.error, killed, final.events[-5:])
    assert killed == ["created", "looking"]
    assert emulator.counts["batch_jobs_created"] == 1
    assert emulator.counts[f"upload:{job.id}-00000.jsonl"] == 1
    assert final.summary is not None and final.summary.rows == 500
    await producer.redis.aclose()


@pytest.mark.parametrize("when", ["before", "after"])
def test_transient_faults_are_retried_until_the_run_succeeds(
    emulator: MistralEmulator, tmp_path: Path, when: str
) -> None:
    """30 % of requests fail: refused before they are carried out (429 / 503), or carried
    out and then their answer lost (5xx or a dropped connection). Either way: 2 uploads,
    1 job, 1 start."""
    if when == "before":
        emulator.faults.rate = 0.3
    else:
        emulator.faults.lose_rate = 0.3
    env = mistral_env(emulator, tmp_path / "data", MODFACTORY_MISTRAL_RPS="50")
    done = cli(
        "run", "--backend", "mistral", "--source", "synthetic:2000", "--json", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["state"] == "succeeded"
    failures = emulator.counts["faults" if when == "before" else "answers_lost"]
    assert failures >= 5
    assert emulator.counts["uploads"] == 2
    assert emulator.counts[f"upload:{run['id']}-train.jsonl"] == 1
    assert (emulator.counts["jobs_created"], emulator.counts["starts"]) == (1, 1)

    async def exported_errors() -> dict[str, float]:  # what /metrics serves from this Redis
        with EmbeddedRedis(tmp_path / "data" / "redis") as url:
            redis = Redis.from_url(url)
            text = (await prometheus_text(redis, "modfactory")).decode()
            await redis.aclose()
        family = next(
            f
            for f in text_string_to_metric_families(text)
            if f.name == "modfactory_backend_api_errors"
        )
        return {s.labels["kind"]: s.value for s in family.samples if s.name.endswith("_total")}

    errors = asyncio.run(exported_errors())
    seen = (
        {"429", "503"} if when == "before" else {"500", "502", "503", "504", "RemoteProtocolError"}
    )
    assert set(errors) <= seen and sum(errors.values()) == failures


def test_a_rejected_key_fails_fast_naming_the_setting(
    emulator: MistralEmulator, tmp_path: Path
) -> None:
    env = mistral_env(emulator, tmp_path / "data", MISTRAL_API_KEY="sk-wrong-key-000")
    done = cli(
        "run", "--backend", "mistral", "--source", "synthetic:2000", "--json", env=env, cwd=tmp_path
    )
    assert done.returncode == 1
    run = json.loads(done.stdout)
    assert run["state"] == "failed" and run["stages"]["upload"]["state"] == "failed"
    assert "MISTRAL_API_KEY" in run["error"] and "HTTP 401" in run["error"]
    assert "sk-wrong-key-000" not in done.stdout + done.stderr
    assert emulator.counts["unauthorized"] == 1  # no retry storm…
    assert run["stages"]["upload"]["attempts"] == 1  # …and no second attempt: at once


async def test_cost_guard_waits_for_approval_and_cancel_cancels_remotely(
    emulator: MistralEmulator, redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        mistral_api_key=KEY,
        mistral_server_url=emulator.url,
        max_cost=5.0,
    )
    env = {**settings_env(settings), "MODFACTORY_MAX_COST": "5"}

    producer = await producer_for(settings)
    submitted = [
        await producer.submit(
            producer.spec(source="synthetic:2000", backend="mistral", model_name=name)
        )
        for name in ("approved", "cancelled")  # two model names: one unfinished run each
    ]
    approved, cancelled = (s.run for s in submitted)
    with worker_process(settings, tmp_path / "worker.log"):
        for run in (approved, cancelled):
            parked = await wait_until(
                producer.store, run.id, lambda r: r.state == RunState.AWAITING_APPROVAL
            )
            assert "above MODFACTORY_MAX_COST 5.0" in parked.events[-1].message
        assert emulator.counts["starts"] == 0  # parked, not started
        remote = {j.id: emulator.job_json(j)["status"] for j in emulator.jobs.values()}
        assert sorted(remote.values()) == ["VALIDATED", "VALIDATED"]

        shown = cli("status", approved.id, env=env, cwd=tmp_path)
        assert "awaits approval" in shown.stdout and "6.56 EUR" in shown.stdout
        ok = cli("approve", approved.id, env=env, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        final = await wait_until(producer.store, approved.id, lambda r: r.state.terminal)
        assert final.state == RunState.SUCCEEDED and emulator.counts["starts"] == 1

        gone = cli("cancel", cancelled.id, "--json", env=env, cwd=tmp_path)
        assert gone.returncode == 0, gone.stderr
        assert json.loads(gone.stdout)["state"] == "cancelled"
        job_id = json.loads(gone.stdout)["artifacts"]["training_job_id"]
        assert emulator.job_json(emulator.jobs[job_id])["status"] == "CANCELLED"
        assert emulator.counts["starts"] == 1
        again = cli("approve", cancelled.id, env=env, cwd=tmp_path)
        assert again.returncode == 2 and "is cancelled, not awaiting approval" in again.stderr


@pytest.mark.parametrize(
    ("fault", "message", "status"),
    [
        ("fail_validation", "train.jsonl line 12: unknown label 'spam'", "FAILED_VALIDATION"),
        ("fail_training", "training diverged at step 150", "FAILED"),
    ],
)
def test_a_job_mistral_fails_ends_the_run_with_the_apis_reason(
    emulator: MistralEmulator, tmp_path: Path, fault: str, message: str, status: str
) -> None:
    setattr(emulator.faults, fault, message)
    env = mistral_env(emulator, tmp_path / "data")
    done = cli(
        "run", "--backend", "mistral", "--source", "synthetic:2000", "--json", env=env, cwd=tmp_path
    )
    assert done.returncode == 1
    run = json.loads(done.stdout)
    assert run["state"] == "failed" and run["stages"]["train"]["state"] == "failed"
    assert run["error"] == f"train: {status}: {message}"
    assert run["training"]["events"][-1]["data"] == {"status": status, "error": message}
    assert run["stages"]["evaluate"]["state"] == "pending"
    assert emulator.counts["starts"] == (0 if status == "FAILED_VALIDATION" else 1)


def _parts(job: dict) -> list[list[dict]]:
    import pyarrow.parquet as pq

    return [pq.read_table(url.removeprefix("file://")).to_pylist() for url in job["parts"]]


def test_a_mistral_champion_scores_an_archive_in_one_batch_job_per_shard_whatever_is_lost(
    emulator: MistralEmulator, redis_db: str, tmp_path: Path
) -> None:
    """3 shards through the Batch API at 30 % of answers lost: 3 batch jobs and 3 uploads,
    the scores the emulator's classify gives; --no-batch gets the same per request; a job
    quoted above MODFACTORY_MAX_COST sends nothing until approved."""
    data = tmp_path / "data"
    env = mistral_env(
        emulator,
        data,
        MODFACTORY_CLASSIFY_BATCH_SIZE="50",
        MODFACTORY_REDIS_URL=redis_db,
        MODFACTORY_SCORE_SHARD_ROWS="400",
    )
    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "modfactory", "worker"],
        env={**os.environ, **env},
        cwd=tmp_path,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        _score_through_batch_jobs(emulator, env, tmp_path)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def _score_through_batch_jobs(emulator: MistralEmulator, env: dict[str, str], cwd: Path) -> None:
    trained = cli(
        "run", "--backend", "mistral", "--source", "synthetic:3000", "--json", env=env, cwd=cwd
    )
    assert trained.returncode == 0, trained.stderr
    model_id = json.loads(trained.stdout)["artifacts"]["model_id"]
    uploads, classified = emulator.counts["uploads"], emulator.counts["classify_requests"]
    emulator.faults.lose_rate = 0.3
    done = cli("score", "synthetic:1200", "--keep-text", "--json", env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr + done.stdout
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded" and job["batch"] is True
    assert job["quote"]["basis"] == "0.05 EUR per million tokens in batch jobs"
    assert emulator.counts["answers_lost"] > 0
    assert emulator.counts["batch_jobs_created"] == 3
    assert emulator.counts["uploads"] - uploads == 3
    assert all(emulator.counts[f"upload:{job['id']}-{i:05d}.jsonl"] == 1 for i in range(3))
    assert emulator.counts["classify_requests"] == classified  # nothing per request
    emulator.faults.lose_rate = 0.0
    rows = [row for part in _parts(job) for row in part]
    assert sorted(r["id"] for r in rows) == list(range(1200))
    expected = emulator.classify(model_id, [r["text"] for r in rows])
    labels = job["labels"]
    for row, answer in zip(rows, expected, strict=True):
        scores = answer["moderation"]["scores"]
        assert {label: row[f"{label}_score"] for label in labels} == {
            label: scores.get(label, 0.0) for label in labels
        }
        assert row["model_id"] == model_id

    per_request = cli("score", "synthetic:1200", "--no-batch", "--json", env=env, cwd=cwd)
    assert per_request.returncode == 0, per_request.stderr
    plain = json.loads(per_request.stdout)
    assert plain["batch"] is False and emulator.counts["batch_jobs_created"] == 3
    assert emulator.counts["classify_requests"] - classified == 3 * 8  # 400 rows, 50 a call
    assert plain["summary"]["labels"] == {
        label: {**about, "top": [{**t, "text": None} for t in about["top"]]}
        for label, about in job["summary"]["labels"].items()
    }

    capped_env = {**env, "MODFACTORY_MAX_COST": "0.0000001"}
    capped = cli("score", "synthetic:1200", "--json", env=capped_env, cwd=cwd)
    assert capped.returncode == 3, capped.stderr  # awaiting approval
    waiting = json.loads(capped.stdout)
    assert waiting["state"] == "awaiting_approval" and waiting["quote"]["cost"] > 0
    assert emulator.counts["batch_jobs_created"] == 3 and emulator.counts["uploads"] - uploads == 3
    shown = cli("status", waiting["id"], env=env, cwd=cwd).stdout
    assert f"modfactory approve {waiting['id']}" in shown and "quote:" in shown
    approved = cli("approve", waiting["id"], env=env, cwd=cwd)
    assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr
    deadline = time.monotonic() + 180
    state = "awaiting_approval"
    while state != "succeeded" and time.monotonic() < deadline:
        status = cli("status", waiting["id"], "--json", env=env, cwd=cwd)
        state = json.loads(status.stdout)["state"]
        assert state in ("running", "succeeded"), status.stdout
    assert state == "succeeded", (cwd / "worker.log").read_text()[-3000:]
    assert emulator.counts["batch_jobs_created"] == 6
    audit = cli("audit", "--json", env=env, cwd=cwd)
    assert any(
        e["action"] == "score.approve" and e["target"] == waiting["id"]
        for e in json.loads(audit.stdout)
    ), audit.stdout

    # Cancelled while its batch job runs: the batch job is cancelled at Mistral too.
    emulator.timing.batch_running = 120
    detached = cli("score", "synthetic:400", "--detach", env=env, cwd=cwd)
    score_id = detached.stdout.strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shards = json.loads(cli("status", score_id, "--json", env=env, cwd=cwd).stdout)["shards"]
        if shards and shards[0]["state"] == "remote":
            break
    assert cli("cancel", score_id, env=env, cwd=cwd).returncode == 0
    while emulator.counts["batch_cancels"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert emulator.counts["batch_cancels"] == 1
