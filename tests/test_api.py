"""`modfactory serve` under real uvicorn on loopback: signed webhook, runs API, health, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    producer_for,
    serve_process,
    settings_env,
    settings_for,
    wait_until,
    worker_process,
)
from modfactory.settings import Settings
from modfactory.stages.reconciler import JOB_NAME as RECONCILE_JOB
from modfactory.web.auth import sign

pytestmark = pytest.mark.slow  # each test runs `modfactory serve` in a process

SECRET = "whsec-test-0123456789abcdef0123456789"
TOKEN = "bearer-test-token-xyz-0123456789abcdef"


@pytest.fixture
def settings(redis_db: str, tmp_path: Path) -> Settings:
    (tmp_path / "sources").mkdir()
    return settings_for(
        redis_db,
        tmp_path / "data",
        health_check_interval=2,
        queued_alert_after=1,
        reconcile_interval=60,  # no reconcile round waiting in the queue the gauges count
        webhook_sources=("synthetic", str(tmp_path / "sources")),
    )


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    env = {"MODFACTORY_WEBHOOK_SECRET": SECRET, "MODFACTORY_WEBHOOK_TOKEN": TOKEN}
    with serve_process(settings, tmp_path / "serve.log", **env) as (_, url):
        yield url
    log = (tmp_path / "serve.log").read_text()
    assert SECRET not in log and TOKEN not in log  # secrets are never logged


def signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {
        "X-Modfactory-Timestamp": timestamp,
        "X-Modfactory-Signature": sign(secret, timestamp, body),
        "Content-Type": "application/json",
    }


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{url}/v1/retrain", content=body, headers=headers, timeout=30)


async def test_a_signed_trigger_creates_a_queued_run(server: str, settings: Settings) -> None:
    body = json.dumps({"source": "synthetic:2000", "recipe": {"n_train": 500}}).encode()
    answer = post(server, body, signed(body))
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["run_id"]
    assert answer.json()["url"] == f"{server}/v1/runs/{run_id}"
    assert answer.headers["location"] == answer.json()["url"]

    producer = await producer_for(settings)
    run = await producer.store.get(run_id)
    assert run.spec.source == "synthetic:2000" and run.spec.recipe.n_train == 500
    assert run.spec.source_fingerprint == "synthetic:2000"
    queued = await producer.redis.zscore(settings.queue_name, f"{run_id}:build")
    assert queued is not None  # the build stage is on the arq queue

    shown = httpx.get(answer.json()["url"], headers={"Authorization": f"Bearer {TOKEN}"})
    status = subprocess.run(
        [sys.executable, "-m", "modfactory", "status", run_id, "--json"],
        env={**settings_env(settings)},
        capture_output=True,
        text=True,
        check=True,
    )
    same = json.loads(status.stdout)
    assert shown.json() == same
    listed = httpx.get(f"{server}/v1/runs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert [r["id"] for r in listed.json()] == [run_id]


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("no signature", 401, "X-Modfactory-Timestamp and X-Modfactory-Signature"),
        ("wrong secret", 401, "X-Modfactory-Signature does not match"),
        ("body changed after signing", 401, "X-Modfactory-Signature does not match"),
        ("stale timestamp", 401, "s old; at most 300 s allowed (MODFACTORY_WEBHOOK_TOLERANCE"),
        ("future timestamp", 401, "s in the future"),
        ("timestamp not a number", 401, "must be Unix seconds"),
        ("timestamp in superscript digits", 401, "must be Unix seconds (1 to 12 digits 0-9)"),
        ("timestamp of 5,000 digits", 401, "must be Unix seconds (1 to 12 digits 0-9)"),
        ("wrong bearer token", 401, "token is not an account's token or MODFACTORY_WEBHOOK_TOKEN"),
        ("oversized body", 413, "body larger than 65536 bytes (MODFACTORY_WEBHOOK_MAX_BODY)"),
        ("invalid JSON", 422, "body is not valid JSON"),
        ("unknown field", 422, "body field 'modle_name': Extra inputs are not permitted"),
        ("unknown recipe field", 422, "body field 'recipe.n_trian': Extra inputs"),
        ("bad recipe value", 422, "body field 'recipe.n_train': Input should be greater"),
        ("bad source", 422, "body field 'source': source '/nowhere/at/all' is not one a webhook"),
        ("a system directory", 422, "source '/etc' is not one a webhook may choose; allowed: "),
        ("a path climbing out", 422, "is not one a webhook may choose"),
        ("a symlink pointing out", 422, "is not one a webhook may choose"),
        ("an allowed directory without splits", 422, "no train* file"),
        ("a billion synthetic rows", 422, "synthetic takes 10 to 1,000,000 rows"),
        ("a local epoch count", 422, "local backend has no hyperparameter 'epochs'; it takes"),
        ("a seed past 2**32", 422, "hyperparameter seed=4294967296 is out of range: an integer"),
        ("a negative seed", 422, "hyperparameter seed=-1 is out of range"),
        ("an unknown backend", 422, "unknown backend 'nope'; installed: local, mistral"),
        ("a backend name of 1,000 characters", 422, "body field 'backend': String should have"),
    ],
)
def test_a_bad_request_is_refused_with_a_json_reason(
    server: str, settings: Settings, tmp_path: Path, case: str, status: int, message: str
) -> None:
    sources = tmp_path / "sources"
    (sources / "empty").mkdir(exist_ok=True)
    if not (sources / "out").exists():
        (sources / "out").symlink_to("/etc")
    body = b'{"source": "synthetic:2000"}'
    headers = signed(body)
    if case == "no signature":
        headers = {"Content-Type": "application/json"}
    elif case == "wrong secret":
        headers = signed(body, secret="not-the-secret")
    elif case == "body changed after signing":
        body = b'{"source": "synthetic:3000"}'
    elif case == "stale timestamp":
        headers = signed(body, at=time.time() - 400)
    elif case == "future timestamp":
        headers = signed(body, at=time.time() + 400)
    elif case == "timestamp not a number":
        headers["X-Modfactory-Timestamp"] = "yesterday"
    elif case == "timestamp in superscript digits":
        headers["X-Modfactory-Timestamp"] = "²".encode("latin-1")
    elif case == "timestamp of 5,000 digits":
        headers["X-Modfactory-Timestamp"] = "9" * 5000
    elif case == "wrong bearer token":
        headers = {"Authorization": "Bearer nope"}
    elif case == "oversized body":
        body = json.dumps({"source": "x" * 70_000}).encode()
        headers = signed(body)
    elif case == "invalid JSON":
        body = b'{"source": "synthetic:2000",}'
        headers = signed(body)
    else:
        content = {
            "unknown field": {"modle_name": "m"},
            "unknown recipe field": {"recipe": {"n_trian": 5}},
            "bad recipe value": {"recipe": {"n_train": 0}},
            "bad source": {"source": "/nowhere/at/all"},
            "a system directory": {"source": "/etc"},
            "a path climbing out": {"source": f"{sources}/../../../etc"},
            "a symlink pointing out": {"source": f"{sources}/out"},
            "an allowed directory without splits": {"source": f"{sources}/empty"},
            "a billion synthetic rows": {"source": "synthetic:1000000000"},
            "a local epoch count": {"hyperparameters": {"epochs": 8}},
            "a seed past 2**32": {"hyperparameters": {"seed": 2**32}},
            "a negative seed": {"hyperparameters": {"seed": -1}},
            "an unknown backend": {"backend": "nope"},
            "a backend name of 1,000 characters": {"backend": "b" * 1000},
        }[case]
        body = json.dumps(content).encode()
        headers = signed(body)
    answer = post(server, body, headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]
    if status == 401:
        assert "www-authenticate" in answer.headers
    assert SECRET not in answer.text
    assert "passwd" not in answer.text  # nothing of /etc is read or shown


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MODFACTORY_WEBHOOK_SECRET": ""}, "MODFACTORY_WEBHOOK_SECRET is empty"),
        ({"MODFACTORY_WEBHOOK_TOKEN": "short-token-0123"}, "MODFACTORY_WEBHOOK_TOKEN has 16"),
        ({"MODFACTORY_WEBHOOK_SECRET": SECRET, "MODFACTORY_WEBHOOK_TOKEN": SECRET}, "same value"),
        ({"MODFACTORY_SERVE_TOKEN": ""}, "MODFACTORY_SERVE_TOKEN is empty"),
        ({"MODFACTORY_SERVE_TOKEN": "short-token-0123"}, "MODFACTORY_SERVE_TOKEN has 16"),
        (
            {"MODFACTORY_WEBHOOK_SECRET": SECRET, "MODFACTORY_SERVE_TOKEN": SECRET},
            "MODFACTORY_WEBHOOK_SECRET and MODFACTORY_SERVE_TOKEN are the same value",
        ),
        ({}, "set MODFACTORY_WEBHOOK_SECRET (signed requests) or MODFACTORY_WEBHOOK_TOKEN"),
    ],
)
def test_serve_refuses_to_start_with_an_empty_short_or_shared_secret(
    settings: Settings, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modfactory", "serve", "--port", "0"],
        env={**os.environ, **settings_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "short-token-0123" not in done.stderr and SECRET not in done.stderr


def test_the_serve_token_scores_but_cannot_retrain_and_the_webhook_token_does_both(
    settings: Settings, tmp_path: Path
) -> None:
    """MODFACTORY_SERVE_TOKEN is for scoring clients: /v1/retrain and the runs API refuse
    it (403, naming the role they need); the webhook token is accepted by the serving
    endpoints too (no champion yet: 404)."""
    serve_token = "serve-only-token-0123456789abcdef0123"
    env = {"MODFACTORY_WEBHOOK_TOKEN": TOKEN, "MODFACTORY_SERVE_TOKEN": serve_token}
    with serve_process(settings, tmp_path / "serve.log", **env) as (_, url):
        as_scorer = {"Authorization": f"Bearer {serve_token}"}
        refused = httpx.post(f"{url}/v1/retrain", content=b"", headers=as_scorer)
        assert refused.status_code == 403, refused.text
        assert "needs the operator role" in refused.json()["error"]
        assert "MODFACTORY_SERVE_TOKEN" in refused.json()["error"]
        assert httpx.get(f"{url}/v1/runs", headers=as_scorer).status_code == 403
        for token in (serve_token, TOKEN):
            answer = httpx.post(
                f"{url}/v1/moderations",
                json={"input": "hello"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 404 and "has no champion yet" in answer.json()["error"]
        signed_only = httpx.post(f"{url}/v1/moderations", json={"input": "a"}, headers=signed(b""))
        assert signed_only.status_code == 401  # signatures are for webhooks
    log = (tmp_path / "serve.log").read_text()
    assert serve_token not in log and TOKEN not in log


def test_a_replayed_request_is_refused_and_a_bearer_token_works(server: str) -> None:
    body = json.dumps({"source": "synthetic:2000", "model_name": "first"}).encode()
    headers = signed(body)
    assert post(server, body, headers).status_code == 202
    replay = post(server, body, headers)
    assert replay.status_code == 401 and "replayed" in replay.json()["error"]

    other = json.dumps({"source": "synthetic:2000", "model_name": "second"}).encode()
    by_token = post(server, other, {"Authorization": f"Bearer {TOKEN}"})
    assert by_token.status_code == 202, by_token.text

    unsigned_read = httpx.get(f"{server}/v1/runs")
    assert unsigned_read.status_code == 401
    missing = httpx.get(f"{server}/v1/runs/run-nope", headers={"Authorization": f"Bearer {TOKEN}"})
    assert missing.status_code == 404 and missing.json() == {"error": "no run 'run-nope'"}
    assert httpx.get(f"{server}/v2/nothing").json() == {"error": "no route /v2/nothing"}
    assert httpx.get(f"{server}/v1/retrain").status_code == 405


async def _storm(url: str, n: int) -> list[httpx.Response]:
    """``n`` distinct signed triggers at once (a request id each: the same body signed in
    the same second is the same request, and would be refused as a replay)."""
    bodies = [
        json.dumps({"source": "synthetic:2000", "request_id": f"r{i}"}).encode() for i in range(n)
    ]
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(client.post(f"{url}/v1/retrain", content=b, headers=signed(b)) for b in bodies)
        )


async def test_fifty_concurrent_triggers_create_exactly_one_run(
    server: str, settings: Settings
) -> None:
    answers = await _storm(server, 50)
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202] + [409] * 49, statuses
    run_id = next(a.json()["run_id"] for a in answers if a.status_code == 202)
    for conflict in (a for a in answers if a.status_code == 409):
        assert conflict.json()["active_run_id"] == run_id
        assert f"already has an unfinished run: {run_id}" in conflict.json()["error"]
    producer = await producer_for(settings)
    assert [r.id for r in await producer.store.list()] == [run_id]


async def test_coalescing_answers_every_trigger_with_the_unfinished_run(
    settings: Settings, tmp_path: Path
) -> None:
    env = {"MODFACTORY_WEBHOOK_SECRET": SECRET, "MODFACTORY_ACTIVE_RUN_POLICY": "coalesce"}
    with serve_process(settings, tmp_path / "serve.log", **env) as (_, url):
        answers = await _storm(url, 20)
    assert sorted(a.status_code for a in answers) == [200] * 19 + [202]
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert sum(a.json()["created"] for a in answers) == 1


async def test_health_and_metrics_follow_the_worker_and_a_finished_run(
    server: str, settings: Settings, tmp_path: Path
) -> None:
    down = httpx.get(f"{server}/healthz")
    assert down.status_code == 503 and down.json()["redis"] == "ok"
    assert "no worker heartbeat" in down.json()["worker"]

    body = json.dumps({"source": "synthetic:3000"}).encode()
    run_id = post(server, body, signed(body)).json()["run_id"]
    await asyncio.sleep(1.5)  # queued past MODFACTORY_QUEUED_ALERT_AFTER, no worker alive
    stalled = httpx.get(f"{server}/healthz").json()
    assert [r["run_id"] for r in stalled["queued_without_worker"]] == [run_id]
    listed = subprocess.run(
        [sys.executable, "-m", "modfactory", "runs", "--json"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(listed.stdout)[0]["id"] == run_id  # the JSON on stdout is unchanged
    assert f"run {run_id} has been queued for" in listed.stderr
    assert "no worker is alive" in listed.stderr
    producer = await producer_for(settings)
    with worker_process(settings, tmp_path / "worker.log"):
        await wait_until(producer.store, run_id, lambda r: r.state.terminal, timeout=120)
        up = httpx.get(f"{server}/healthz")
        assert up.status_code == 200 and up.json()["ok"] is True, up.text
        assert "queued_without_worker" not in up.json()
        assert "j_complete=" in up.json()["worker"]
        text = httpx.get(f"{server}/metrics").text
        waiting = await producer.redis.zrange(settings.queue_name, 0, -1)

    families = {f.name: f for f in text_string_to_metric_families(text)}
    runs = {s.labels["state"]: s.value for s in families["modfactory_runs"].samples}
    assert runs["succeeded"] == 1 and runs["queued"] == runs["running"] == 0
    counts = {
        s.labels["stage"]: s.value
        for s in families["modfactory_stage_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"build": 1, "upload": 1, "train": 1, "evaluate": 1}
    assert families["modfactory_worker_up"].samples[0].value == 1
    queue = {s.labels["when"]: s.value for s in families["modfactory_queue_jobs"].samples}
    # Nothing left to do; arq queues the reconciler's next round up to a second before its
    # tick, so that one (and only that one) may be seen waiting, deferred.
    assert queue["ready"] == 0 and queue["deferred"] <= 1
    assert all(job.startswith(f"{RECONCILE_JOB}:".encode()) for job in waiting), waiting
    assert "modfactory_backend_api_errors" in families
