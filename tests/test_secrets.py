"""No secret in any output: every secret a deployment holds, grepped for in everything it
writes or answers — logs, errors, run documents, Redis, reports, files, ``--json``, HTTP.

One deployment (a password-protected redis-server, a worker and ``modfactory serve`` as
processes, the Mistral emulator, its artifacts in moto's S3 server reached with
credentials from both the options setting and the environment) is driven through a
successful run and through failures whose texts would carry a secret if nothing took it
out: an API error page that quotes
the request (its Authorization header, the W&B key in the body), a job that fails with a
message naming the keys, a wrong key, a wrong Redis password, settings refused at start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis as sync_redis

from helpers import (
    producer_for,
    serve_process,
    settings_env,
    settings_for,
    wait_until,
    worker_process,
)
from mistral_emulator import MistralEmulator
from modfactory.settings import Settings
from modfactory.store.embedded_redis import free_port
from modfactory.store.run import RunState
from modfactory.web.auth import sign
from redis_process import RedisProcess
from s3_server import CREDENTIALS, S3Server

pytestmark = pytest.mark.slow  # a whole deployment in processes

API_KEY = "sk-mistral-live-" + "a1b2" * 6
KEY = API_KEY  # what the emulator fixture accepts
WANDB_KEY = "wandbkey" + "c3d4" * 8  # 40 characters, as W&B keys are
WEBHOOK_SECRET = "whsec-live-" + "e5f6" * 8
WEBHOOK_TOKEN = "tok-live-" + "g7h8" * 8
REDIS_PASSWORD = "redis-pw-" + "i9j0" * 6
SERVE_TOKEN = "serve-live-" + "u1v2" * 8
REVIEW_TOKEN = "review-live-" + "y5z6" * 8
S3_SECRET = "s3-secret-live-" + "w3x4" * 6  # in MODFACTORY_ARTIFACTS_OPTIONS
# Wrong or refused values: an error about them must not repeat them either.
WRONG_API_KEY = "sk-mistral-wrong-" + "k1l2" * 6
WRONG_REDIS_PASSWORD = "redis-pw-wrong-" + "m3n4" * 5
WRONG_TOKEN = "tok-wrong-" + "o5p6" * 8
WRONG_ACCOUNT_TOKEN = "mf_" + "wrongaccount" * 3 + "q1w2e3r"  # shaped like an account's
SHORT_SECRET = "whsec-short-q7r8"
BAD_WANDB_KEY = "wandb-bad-length-s9t0"
SECRETS = {
    "Mistral API key": API_KEY,
    "W&B key": WANDB_KEY,
    "webhook secret": WEBHOOK_SECRET,
    "webhook token": WEBHOOK_TOKEN,
    "Redis password": REDIS_PASSWORD,
    "serve token": SERVE_TOKEN,
    "review token": REVIEW_TOKEN,
    "S3 secret (options)": S3_SECRET,
    "S3 secret (environment)": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    "wrong Mistral API key": WRONG_API_KEY,
    "wrong Redis password": WRONG_REDIS_PASSWORD,
    "wrong webhook token": WRONG_TOKEN,
    "wrong account token": WRONG_ACCOUNT_TOKEN,
    "too short webhook secret": SHORT_SECRET,
    "malformed W&B key": BAD_WANDB_KEY,
}


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", password=REDIS_PASSWORD)
    server.start()
    yield server
    server.stop()


class Outputs:
    """Everything the deployment wrote or answered, by where it came from."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.secrets = dict(SECRETS)  # and those made during the run (an account's token)

    def add(self, where: str, text: str | bytes) -> str:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        self.texts[where] = text
        return text

    def cli(self, where: str, *args: str, env: dict[str, str], cwd: Path) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "modfactory", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=240,
        )
        self.add(f"{where} (stderr)", done.stderr)
        return self.add(f"{where} (stdout)", done.stdout)

    def clis(self, calls: list[tuple[str, tuple[str, ...], dict[str, str]]], cwd: Path) -> None:
        """Several CLI calls ``(where, args, env)`` at once (each its own process)."""
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda call: self.cli(call[0], *call[1], env=call[2], cwd=cwd), calls))

    def http(self, where: str, answer: httpx.Response) -> httpx.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
        self.add(where, f"{answer.status_code}\n{headers}\n\n{answer.text}")
        return answer

    def files(self, root: Path) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.add(f"file {path.relative_to(root.parent)}", path.read_bytes())

    def bucket(self, server: S3Server, bucket: str) -> None:
        client = server.client()
        for key in server.keys(bucket):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            self.add(f"object {key}", body)

    def redis(self, url: str) -> None:
        client = sync_redis.Redis.from_url(url)
        read = {
            "string": client.get,
            "hash": client.hgetall,
            "list": lambda key: client.lrange(key, 0, -1),
            "set": client.smembers,
            "zset": lambda key: client.zrange(key, 0, -1, withscores=True),
            "stream": client.xrange,
        }
        for key in client.scan_iter(count=1000):
            value = read[client.type(key).decode()](key)
            self.add(f"redis key {key.decode(errors='replace')}", f"{key!r} {value!r}")

    def leaks(self) -> list[str]:
        return [
            f"{name} in {where}"
            for where, text in self.texts.items()
            for name, secret in self.secrets.items()
            if secret in text
        ]


def signed(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "X-Modfactory-Timestamp": timestamp,
        "X-Modfactory-Signature": sign(WEBHOOK_SECRET, timestamp, body),
        "Content-Type": "application/json",
    }


async def test_no_secret_appears_in_any_output(
    guarded_redis: RedisProcess,
    emulator: MistralEmulator,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    settings = settings_for(
        guarded_redis.url,
        tmp_path / "data",
        mistral_api_key=API_KEY,
        mistral_server_url=emulator.url,
        wandb_project="moderation",
        wandb_api_key=WANDB_KEY,
        webhook_secret=WEBHOOK_SECRET,
        webhook_token=WEBHOOK_TOKEN,
        serve_token=SERVE_TOKEN,
        review_token=REVIEW_TOKEN,
        webhook_sources=("synthetic",),
        backend="mistral",
        mistral_training_steps=5,
        artifacts_url=f"{s3_bucket}/m",
        artifacts_options=json.dumps({"key": "AKIDLIVE", "secret": S3_SECRET}),
    )
    env = {**os.environ, **settings_env(settings)}
    out = Outputs()
    bearer = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
    recipe = {"n_train": 300, "n_validation": 100, "n_test": 100}
    producer = await producer_for(settings)
    worker_log, serve_log = tmp_path / "worker.log", tmp_path / "serve.log"
    users_add = ["users", "add", "ops@example.com", "--role", "admin", "--json"]
    added = subprocess.run(  # its one output that may show the token: not kept in ``out``
        [sys.executable, "-m", "modfactory", *users_add],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out.secrets["account token"] = account_token = json.loads(added.stdout)["token"]
    assert account_token not in added.stderr
    as_account = {"Authorization": f"Bearer {account_token}"}
    with (
        worker_process(settings, worker_log),
        serve_process(settings, serve_log) as (_, url),
    ):
        # 1. a run that succeeds, triggered by a signed webhook
        body = json.dumps({"source": "synthetic:1000", "recipe": recipe}).encode()
        answer = out.http(
            "POST /v1/retrain", httpx.post(f"{url}/v1/retrain", content=body, headers=signed(body))
        )
        assert answer.status_code == 202, answer.text
        good = await wait_until(
            producer.store, answer.json()["run_id"], lambda r: r.state.terminal, timeout=240
        )
        assert good.state == RunState.SUCCEEDED, good.error

        # 2. Mistral answers the job creation with an error page quoting the request
        emulator.faults.echo_next["create_job"] = 1
        body = json.dumps(
            {"source": "synthetic:1000", "model_name": "quoted", "recipe": recipe}
        ).encode()
        answer = out.http(
            "POST /v1/retrain (bearer)",
            httpx.post(f"{url}/v1/retrain", content=body, headers=bearer),
        )
        assert answer.status_code == 202, answer.text
        quoted = await wait_until(
            producer.store, answer.json()["run_id"], lambda r: r.state.terminal, timeout=240
        )
        assert quoted.state == RunState.FAILED
        assert "HTTP 400" in quoted.error and "Bearer ***" in quoted.error  # it was there

        # 3. the training job fails with a message that names both keys
        emulator.faults.fail_training = f"W&B refused key {WANDB_KEY} (API key {API_KEY})"
        body = json.dumps(
            {"source": "synthetic:1000", "model_name": "failing", "recipe": recipe}
        ).encode()
        answer = httpx.post(f"{url}/v1/retrain", content=body, headers=bearer)
        failing = await wait_until(
            producer.store, answer.json()["run_id"], lambda r: r.state.terminal, timeout=240
        )
        assert failing.state == RunState.FAILED and "W&B refused key ***" in failing.error
        emulator.faults.fail_training = None

        # refused requests, and every read the API offers
        for where, headers in (
            ("wrong bearer", {"Authorization": f"Bearer {WRONG_TOKEN}"}),
            (
                "token as a signature",
                {
                    "X-Modfactory-Timestamp": str(int(time.time())),
                    "X-Modfactory-Signature": f"sha256={WEBHOOK_TOKEN}",
                },
            ),
        ):
            refused = out.http(
                where, httpx.post(f"{url}/v1/retrain", content=b"{}", headers=headers)
            )
            assert refused.status_code == 401
        out.http(
            "bad body",
            httpx.post(f"{url}/v1/retrain", content=b'{"source": "/etc"}', headers=bearer),
        )
        out.http("GET /v1/runs", httpx.get(f"{url}/v1/runs", headers=bearer))
        for run in (good, quoted, failing):
            out.http(f"GET /v1/runs/{run.id}", httpx.get(f"{url}/v1/runs/{run.id}", headers=bearer))
        # the champion served (a Mistral model: the emulator answers), and refused
        scoring = {"Authorization": f"Bearer {SERVE_TOKEN}"}
        for route in ("/v1/moderations", "/v1/classifications"):
            answer = out.http(
                f"POST {route}", httpx.post(f"{url}{route}", json={"input": "hi"}, headers=scoring)
            )
            assert answer.status_code == 200, answer.text
        wrong = {"Authorization": f"Bearer {WRONG_TOKEN}"}
        refused = httpx.post(f"{url}/v1/moderations", json={"input": "hi"}, headers=wrong)
        assert out.http("POST /v1/moderations (wrong token)", refused).status_code == 401
        # a correction, the review queue, and a correction refused
        reviewing = {"Authorization": f"Bearer {REVIEW_TOKEN}"}
        correction = {"input": "hi there", "labels": {"toxicity": True}}
        answer = httpx.post(f"{url}/v1/feedback", json=correction, headers=reviewing)
        assert out.http("POST /v1/feedback", answer).status_code == 202, answer.text
        out.http("GET /v1/review", httpx.get(f"{url}/v1/review", headers=reviewing))
        refused = httpx.post(f"{url}/v1/feedback", json=correction, headers=wrong)
        assert out.http("POST /v1/feedback (wrong token)", refused).status_code == 401
        # an account: the API, a sign-in to /ui and a refused one, the audit trail
        out.http("GET /v1/runs (account)", httpx.get(f"{url}/v1/runs", headers=as_account))
        out.http("GET /v1/audit", httpx.get(f"{url}/v1/audit", headers=as_account))
        for where, token in (("account", account_token), ("wrong account", WRONG_ACCOUNT_TOKEN)):
            with httpx.Client(base_url=url) as browser:
                form = browser.get("/ui/login").text
                csrf = form.split('name="csrf" value="')[1].split('"')[0]
                signed_in = browser.post("/ui/login", data={"token": token, "csrf": csrf})
                out.http(f"POST /ui/login ({where})", signed_in)
                out.add(f"cookies ({where})", repr(dict(browser.cookies)))
                out.http(f"GET /ui/audit ({where})", browser.get("/ui/audit"))
                out.http(f"GET /ui/users ({where})", browser.get("/ui/users"))
        refused = httpx.get(
            f"{url}/v1/runs", headers={"Authorization": f"Bearer {WRONG_ACCOUNT_TOKEN}"}
        )
        assert out.http("GET /v1/runs (wrong account token)", refused).status_code == 401
        out.http("GET /metrics", httpx.get(f"{url}/metrics"))
        out.http("GET /healthz", httpx.get(f"{url}/healthz"))

        # the CLI, human and --json
        commands = (
            ("status", good.id),
            ("status", quoted.id, "--json"),
            ("status", failing.id),
            ("runs",),
            ("runs", "--json"),
            ("models",),
            ("models", "--json"),
            ("schedule", "--json"),
            ("users", "list"),
            ("users", "list", "--json"),
            ("audit",),
            ("audit", "--json"),
            ("users", "set-role", "ops@example.com", "operator"),
            ("feedback", "list", "--json"),
            ("prune", "--dry-run", "--json"),
            ("report", good.id),
            ("classify", "some text", "--json"),
            ("classify", "some text"),
        )
        out.clis([(" ".join(args), args, env) for args in commands], cwd=tmp_path)
    out.add("worker log", worker_log.read_bytes())
    out.add("serve log", serve_log.read_bytes())
    out.redis(guarded_redis.url)
    out.files(tmp_path / "data")
    out.bucket(s3_server, s3_bucket.removeprefix("s3://"))
    assert any(where.endswith("report.html") for where in out.texts)  # the bucket was read
    out.add("settings repr", f"{settings!r} {settings}")
    await producer.redis.aclose()

    # errors about wrong or refused values
    port = guarded_redis.port
    wrong_redis = {
        **env,
        "MODFACTORY_REDIS_URL": f"redis://:{WRONG_REDIS_PASSWORD}@127.0.0.1:{port}/0",
    }
    no_redis = {
        **env,
        "MODFACTORY_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0",
    }
    s3_away = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    embedded = {k: v for k, v in env.items() if k != "MODFACTORY_REDIS_URL"}
    embedded |= {"MISTRAL_API_KEY": WRONG_API_KEY, "MODFACTORY_DATA_DIR": str(tmp_path / "e")}
    refused_settings = [
        ("wrong Redis password", ("runs", "--json"), wrong_redis),
        ("Redis away", ("runs",), no_redis),
        ("S3 away", ("worker",), s3_away),
        (
            "short secret",
            ("serve", "--port", "0"),
            {**env, "MODFACTORY_WEBHOOK_SECRET": SHORT_SECRET},
        ),
        ("bad W&B key", ("runs",), {**env, "MODFACTORY_WANDB_API_KEY": BAD_WANDB_KEY}),
        ("embedded run, wrong key", ("run", "--source", "synthetic:300", "--json"), embedded),
    ]
    out.clis(refused_settings, cwd=tmp_path)
    assert "MODFACTORY_ARTIFACTS_URL" in out.texts["S3 away (stderr)"]
    shown = out.texts["embedded run, wrong key (stdout)"]
    assert "check MISTRAL_API_KEY" in json.loads(shown)["error"]
    out.files(tmp_path / "e")

    # the secrets were in play: sent where they belong, and the scrubbing had work to do
    assert any(WANDB_KEY in json.dumps(job.body) for job in emulator.jobs.values())
    assert emulator.counts["unauthorized"] >= 1  # the wrong key reached the API
    for where in (
        "wrong Redis password (stderr)",
        "Redis away (stderr)",
        "short secret (stderr)",
        "bad W&B key (stderr)",
    ):
        assert out.texts[where].startswith("error: "), (where, out.texts[where])
    assert sum(good.id in text for text in out.texts.values()) > 10
    assert out.leaks() == []


def test_redaction_takes_every_configured_secret_out_of_a_text() -> None:
    from modfactory.settings import redact

    settings = Settings(
        redis_url=f"redis://user:{REDIS_PASSWORD}@cache:6379/0",
        mistral_api_key=API_KEY,
        wandb_api_key=WANDB_KEY,
        webhook_secret=WEBHOOK_SECRET,
        webhook_token=WEBHOOK_TOKEN,
        serve_token=SERVE_TOKEN,
        review_token=REVIEW_TOKEN,
        webhook_sources=("synthetic",),
    )
    keys = (API_KEY, WANDB_KEY, WEBHOOK_SECRET, WEBHOOK_TOKEN, SERVE_TOKEN, REVIEW_TOKEN)
    keys += (REDIS_PASSWORD,)
    assert redact(" / ".join(keys), settings.secret_values()) == " / ".join(["***"] * 7)
    assert Settings(redis_url="redis://cache:6379/0").secret_values() == ()
