"""People with names, against real ``modfactory serve`` processes and Redis: four accounts
(one per role, made with ``modfactory users add``) and the settings' service tokens try
every route of the API; a revoked token is refused by another replica once it reads the
accounts again; a sign-on proxy's header is honoured from the proxy's address only."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from helpers import (
    producer_for,
    serve_process,
    settings_env,
    settings_for,
    wait_until,
    worker_process,
)
from modfactory.roles import NEEDS, Action, Role
from modfactory.settings import Settings
from modfactory.store.run import RunState

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("access")]

WEBHOOK = "access-webhook-token-0123456789abcdef01"
REVIEW = "access-review-token-0123456789abcdef012"
SERVE = "access-serve-token-0123456789abcdef0123"
PROXY_HEADER = "X-Forwarded-Email"
REFRESH = 0.5  # s: MODFACTORY_SERVE_REFRESH_INTERVAL of both replicas
ROLES = {"viewer": Role.VIEWER, "reviewer": Role.REVIEWER, "operator": Role.OPERATOR}
ROLES |= {"admin": Role.ADMIN}
SERVICES = {"webhook": (WEBHOOK, Role.ADMIN), "review": (REVIEW, Role.REVIEWER)}
SERVICES |= {"serve": (SERVE, None)}


@dataclass
class Site:
    settings: Settings
    url: str  # the replica behind the proxy (MODFACTORY_AUTH_PROXY_FROM: loopback)
    other: str  # a replica whose proxy is elsewhere
    runs: list[str]  # two trained runs of MODFACTORY_MODEL_NAME
    logs: list[Path]
    tokens: dict[str, str] = field(default_factory=dict)  # caller -> bearer token
    printed: list[str] = field(default_factory=list)  # every CLI output

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "modfactory", *args],
            env={**os.environ, **settings_env(self.settings)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.printed.append(done.stdout + done.stderr)
        return done

    def add_user(self, name: str, role: str) -> str:
        added = self.cli("users", "add", name, "--role", role, "--json")
        assert added.returncode == 0, added.stderr
        return json.loads(added.stdout)["token"]


async def _train_two(settings: Settings) -> list[str]:
    producer = await producer_for(settings)
    runs = []
    for seed in (1, 2):
        run = (await producer.submit(producer.spec(source="synthetic:2000", seed=seed))).run
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
        assert final.state == RunState.SUCCEEDED, final.error
        runs.append(run.id)
    await producer.redis.aclose()
    return runs


@pytest.fixture(scope="module")
def site(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    url = f"{redis_url}/5"  # this module's own database
    redis.Redis.from_url(url).flushdb()
    work = tmp_path_factory.mktemp("access")
    settings = settings_for(url, work / "data", serve_refresh_interval=REFRESH)
    with worker_process(settings, work / "worker.log"):
        runs = asyncio.run(_train_two(settings))  # then no worker: what is queued stays
    tokens = {
        "MODFACTORY_WEBHOOK_TOKEN": WEBHOOK,
        "MODFACTORY_REVIEW_TOKEN": REVIEW,
        "MODFACTORY_SERVE_TOKEN": SERVE,
        "MODFACTORY_AUTH_PROXY_HEADER": PROXY_HEADER,
    }
    logs = [work / "serve-1.log", work / "serve-2.log"]
    with (
        serve_process(settings, logs[0], **tokens, MODFACTORY_AUTH_PROXY_FROM="127.0.0.1") as (
            _,
            first,
        ),
        serve_process(settings, logs[1], **tokens, MODFACTORY_AUTH_PROXY_FROM="10.99.0.0/16") as (
            _,
            second,
        ),
    ):
        site = Site(settings, first, second, runs, logs)
        for name, role in ROLES.items():
            site.tokens[name] = site.add_user(f"{name}@example.com", role)
        site.tokens |= {name: token for name, (token, _) in SERVICES.items()}
        yield site
    redis.Redis.from_url(url).flushdb()


def role_of(caller: str) -> Role | None:
    return ROLES[caller] if caller in ROLES else SERVICES[caller][1]


async def _scratch_run(settings: Settings, state: str) -> str:
    """A run of a model name of its own, queued (no worker takes it), parked awaiting
    approval, or with its build failed."""
    producer = await producer_for(settings)
    spec = producer.spec(source="synthetic:2000", model_name=f"scratch-{secrets.token_hex(4)}")
    run = await producer.store.create(spec, exclusive=False)
    if state == "awaiting":
        await producer.store.await_approval(run.id, "a quoted cost")
    elif state == "failed":
        await producer.store.fail_stage(run.id, "build", "a failure, for the test")
    await producer.redis.aclose()
    return run.id


Request = tuple[str, str, dict | None]  # method, path, JSON body


def _champion(site: Site) -> str:
    answer = httpx.get(f"{site.url}/v1/models/moderation", headers=bearer(WEBHOOK))
    return answer.json()["champion"]["run_id"]


# Every route of the API: the action the role table names for it (None: any caller may),
# and how to make a request that a caller allowed gets a 2xx for.
ROUTES: dict[str, tuple[Action | None, Callable[[Site, str], Request]]] = {
    "list runs": (Action.READ, lambda s, c: ("GET", "/v1/runs", None)),
    "get a run": (Action.READ, lambda s, c: ("GET", f"/v1/runs/{s.runs[0]}", None)),
    "list models": (Action.READ, lambda s, c: ("GET", "/v1/models", None)),
    "get a model": (Action.READ, lambda s, c: ("GET", "/v1/models/moderation", None)),
    "moderate": (None, lambda s, c: ("POST", "/v1/moderations", {"input": "you idiot"})),
    "classify": (None, lambda s, c: ("POST", "/v1/classifications", {"input": ["a", "b"]})),
    "review queue": (Action.REVIEW, lambda s, c: ("GET", "/v1/review?limit=5", None)),
    "correct": (
        Action.REVIEW,
        lambda s, c: ("POST", "/v1/feedback", {"input": f"by {c}", "labels": {"insult": True}}),
    ),
    "retrain": (Action.RUN, lambda s, c: ("POST", "/v1/retrain", {"model_name": f"m-{c}"})),
    "cancel": (
        Action.RUN,
        lambda s, c: ("POST", f"/v1/runs/{asyncio.run(_scratch_run(s.settings, 'q'))}/cancel", {}),
    ),
    "retry": (
        Action.RUN,
        lambda s, c: (
            "POST",
            f"/v1/runs/{asyncio.run(_scratch_run(s.settings, 'failed'))}/retry",
            {},
        ),
    ),
    "approve": (
        Action.APPROVE,
        lambda s, c: (
            "POST",
            f"/v1/runs/{asyncio.run(_scratch_run(s.settings, 'awaiting'))}/approve",
            {},
        ),
    ),
    "promote": (
        Action.PROMOTE,
        lambda s, c: (
            "POST",
            "/v1/models/moderation/promote",
            {"run_id": next(r for r in s.runs if r != _champion(s)), "force": True},
        ),
    ),
    "roll back": (Action.PROMOTE, lambda s, c: ("POST", "/v1/models/moderation/rollback", {})),
}


def every_value(client: redis.Redis) -> bytes:
    """Every key and value in the database, of whatever type, run together."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        found.append(key)
        if kind == "string":
            found.append(client.get(key) or b"")
        elif kind == "hash":
            found += [k + v for k, v in client.hgetall(key).items()]
        elif kind == "set":
            found += list(client.smembers(key))
        elif kind == "zset":
            found += client.zrange(key, 0, -1)
        elif kind == "list":
            found += client.lrange(key, 0, -1)
        elif kind == "stream":
            found += [json.dumps(e, default=repr).encode() for e in client.xrange(key)]
    return b"\n".join(found)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_with_every_role_allowed_or_403_naming_the_role(site: Site) -> None:
    callers = [*ROLES, *SERVICES]
    outcomes = []
    for route, (action, make) in ROUTES.items():
        for caller in callers:
            role = role_of(caller)
            allowed = action is None or (role is not None and role.may(action))
            method, path, body = make(site, caller)
            answer = httpx.request(
                method, site.url + path, json=body, headers=bearer(site.tokens[caller])
            )
            outcomes.append((route, caller, answer.status_code))
            if allowed:
                assert 200 <= answer.status_code < 300, (route, caller, answer.text)
            else:
                assert answer.status_code == 403, (route, caller, answer.text)
                error = answer.json()["error"]
                assert f"needs the {NEEDS[action]} role" in error, (route, caller, error)
                assert answer.json()["needs"] == NEEDS[action]
    refused = [o for o in outcomes if o[2] == 403]
    assert len(refused) > 20 and len(outcomes) == len(ROUTES) * len(callers)


def test_a_revoked_token_is_refused_by_another_replica_once_it_reads_again(site: Site) -> None:
    token = site.add_user("leaving@example.com", "viewer")
    deadline = time.monotonic() + 30
    while httpx.get(f"{site.other}/v1/runs", headers=bearer(token)).status_code != 200:
        assert time.monotonic() < deadline, "the new account is not known to the replica"
        time.sleep(0.05)
    revoked = site.cli("users", "revoke", "leaving@example.com")
    assert revoked.returncode == 0, revoked.stderr
    at = time.monotonic()
    while (answer := httpx.get(f"{site.other}/v1/runs", headers=bearer(token))).status_code == 200:
        assert time.monotonic() < at + 30, "the revoked token still works"
        time.sleep(0.02)
    print(f"refused {time.monotonic() - at:.2f} s after the revocation (refresh {REFRESH} s)")
    assert answer.status_code == 401 and "unknown or revoked" in answer.json()["error"]
    listed = json.loads(site.cli("users", "list", "--json").stdout)
    assert {a["name"]: a["state"] for a in listed}["leaving@example.com"] == "revoked"


def test_the_proxy_header_is_an_account_from_the_proxy_and_nothing_from_elsewhere(
    site: Site,
) -> None:
    as_operator = {PROXY_HEADER: "Operator@Example.com"}
    assert httpx.get(f"{site.url}/v1/runs", headers=as_operator).status_code == 200
    as_viewer = {PROXY_HEADER: "viewer@example.com"}
    refused = httpx.post(f"{site.url}/v1/models/moderation/rollback", headers=as_viewer)
    assert refused.status_code == 403 and "needs the admin role" in refused.json()["error"]
    stranger = httpx.get(f"{site.url}/v1/runs", headers={PROXY_HEADER: "nobody@example.com"})
    assert stranger.status_code == 403 and "no account named" in stranger.json()["error"]
    elsewhere = httpx.get(f"{site.other}/v1/runs", headers=as_operator)  # not its proxy
    assert elsewhere.status_code == 401, elsewhere.text


def test_account_tokens_are_in_no_log_no_redis_value_and_no_output_but_their_own(
    site: Site,
) -> None:
    tokens = [site.tokens[name] for name in ROLES]
    stored = every_value(redis.Redis.from_url(site.settings.redis_url))
    logs = "".join(log.read_text() for log in site.logs)
    for token in tokens:
        assert token.encode() not in stored
        assert token not in logs
        assert sum(token in printed for printed in site.printed) == 1  # its `users add`
