"""People with names, against real ``modfactory serve`` processes and Redis: four accounts
(one per role, made with ``modfactory users add``) and the settings' service tokens try
every route of the API; a revoked token is refused by another replica once it reads the
accounts again; a sign-on proxy's header is honoured from the proxy's address only."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
from modfactory.artifacts import ArtifactStore
from modfactory.roles import NEEDS, Action, Role
from modfactory.settings import Settings
from modfactory.store.audit import AuditLog
from modfactory.store.double_review import Dispute, DoubleReviews
from modfactory.store.run import RunState
from modfactory.values import PriceQuote

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
    changes: list[tuple[str, str]] = field(default_factory=list)  # (action, actor) made

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
    for seed in (1, 2):  # one after the other: a model has one unfinished run at a time
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
    settings = settings_for(
        url, work / "data", serve_refresh_interval=REFRESH, score_sources=("synthetic",)
    )
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
        with ThreadPoolExecutor(4) as pool:  # each a CLI process
            added = pool.map(
                lambda item: site.add_user(f"{item[0]}@example.com", item[1]), ROLES.items()
            )
            site.tokens |= dict(zip(ROLES, added, strict=True))
        site.tokens |= {name: token for name, (token, _) in SERVICES.items()}
        yield site
    redis.Redis.from_url(url).flushdb()


def name_of(caller: str) -> str:
    """The name the audit trail gives a caller."""
    return f"{caller}@example.com" if caller in ROLES else caller


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
    "audit": (Action.READ, lambda s, c: ("GET", "/v1/audit?limit=5", None)),
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
    "score": (Action.SCORE, lambda s, c: ("POST", "/v1/scores", {"source": "synthetic:100"})),
    "list scoring jobs": (Action.READ, lambda s, c: ("GET", "/v1/scores?limit=5", None)),
    "get a scoring job": (
        Action.READ,
        lambda s, c: ("GET", f"/v1/scores/{asyncio.run(_scratch_score(s))}", None),
    ),
    "cancel a scoring job": (
        Action.SCORE,
        lambda s, c: ("POST", f"/v1/scores/{asyncio.run(_scratch_score(s))}/cancel", {}),
    ),
    "approve a scoring job": (
        Action.APPROVE,
        lambda s, c: (
            "POST",
            f"/v1/scores/{asyncio.run(_scratch_score(s, awaiting=True))}/approve",
            {},
        ),
    ),
}


async def _scratch_score(site: Site, *, awaiting: bool = False) -> str:
    """A scoring job of a succeeded run's model, queued (no worker takes it) — or planned
    and quoted above its cap, ``awaiting`` approval (by run: other tests of the module roll
    the champion back and prune runs)."""
    producer = await producer_for(site.settings)
    run = next(r for r in await producer.runs() if r.state == RunState.SUCCEEDED)
    spec = await producer.score_spec("synthetic:100", run_id=run.id)
    job = await producer.scores.create(spec.model_copy(update={"max_cost": 0.0}))
    if awaiting:
        quote = PriceQuote(cost=1.0, currency="EUR", tokens=10**6, basis="a test's")
        await producer.scores.plan(job.id, [100], ["insult"], {"insult": 0.5}, quote=quote)
    await producer.redis.aclose()
    return job.id


async def _queued_score(settings: Settings) -> str:
    """A scoring job queued by hand (no run needed: an earlier test emptied Redis)."""
    from modfactory.store.score_job import ScoreSpec
    from modfactory.store.score_jobs import ScoreJobStore

    client = redis.asyncio.Redis.from_url(settings.redis_url)
    spec = ScoreSpec(
        source="synthetic:100",
        model_name="moderation",
        run_id="run-x",
        model_id="x",
        backend="local",
    )
    job = await ScoreJobStore(client, settings.queue_name).create(spec)
    await client.aclose()
    return job.id


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
            found += [repr(entry).encode() for entry in client.xrange(key)]
    return b"\n".join(found)


# The routes that change something, and the audit trail's name for the change.
CHANGES = {
    "correct": "correction.add",
    "retrain": "run.start",
    "cancel": "run.cancel",
    "retry": "run.retry",
    "approve": "run.approve",
    "promote": "model.promote",
    "roll back": "model.rollback",
    "score": "score.start",
    "cancel a scoring job": "score.cancel",
}


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
            if allowed and route in CHANGES:
                site.changes.append((CHANGES[route], name_of(caller)))
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


def _signed_in(site: Site, caller: str) -> tuple[httpx.Client, str]:
    """A browser-like client signed in to /ui as ``caller``, and its session's CSRF token."""
    client = httpx.Client(base_url=site.url)
    form = client.get("/ui/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    signed = client.post("/ui/login", data={"token": site.tokens[caller], "csrf": csrf})
    assert signed.status_code == 303, (caller, signed.text)
    page = client.get("/ui/runs").text
    return client, re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def _ui_change(site: Site, caller: str, what: str) -> tuple[str, str, dict]:
    if what == "cancel":
        return "POST", f"/ui/runs/{asyncio.run(_scratch_run(site.settings, 'q'))}/cancel", {}
    if what == "approve":
        run_id = asyncio.run(_scratch_run(site.settings, "awaiting"))
        return "POST", f"/ui/runs/{run_id}/approve", {}
    if what == "requeue":
        return "POST", f"/ui/runs/{asyncio.run(_scratch_run(site.settings, 'failed'))}/requeue", {}
    if what == "promote":
        other = next(r for r in site.runs if r != _champion(site))
        return "POST", f"/ui/models/moderation/promote?run={other}", {"force": "1"}
    if what == "rollback":
        return "POST", "/ui/models/moderation/rollback", {}
    if what == "settle a dispute":
        item_id = asyncio.run(_dispute(site.settings))
        return "POST", f"/ui/disputes/{item_id}", {"label:insult": "1"}
    if what == "add a user":
        return "POST", "/ui/users", {"name": f"new-{caller}@example.com", "role": "viewer"}
    return "POST", "/ui/review", {"skip": "1"}  # nothing waiting: back to the page


UI_PAGES = {
    "/ui/runs": Action.READ,
    "/ui/models": Action.READ,
    "/ui/schedule": Action.READ,
    "/ui/audit": Action.READ,
    "/ui/reviewers": Action.READ,
    "/ui/disputes": Action.READ,
    "/ui/review": Action.REVIEW,
    "/ui/users": Action.MANAGE_USERS,
    "confirm a promotion": Action.PROMOTE,  # the page before it
}
UI_ACTIONS = {
    "cancel": (Action.RUN, "run.cancel"),
    "requeue": (Action.RUN, "run.retry"),
    "approve": (Action.APPROVE, "run.approve"),
    "promote": (Action.PROMOTE, "model.promote"),
    "rollback": (Action.PROMOTE, "model.rollback"),
    "add a user": (Action.MANAGE_USERS, "user.add"),
    "settle a dispute": (Action.ADJUDICATE, "review.adjudicate"),
    "answer a review": (Action.REVIEW, None),
}


def test_every_page_and_ui_action_with_every_role(site: Site) -> None:
    for caller in [*ROLES, "webhook", "review"]:
        role = role_of(caller)
        assert role is not None
        client, csrf = _signed_in(site, caller)
        page = client.get("/ui/models").text
        for path, action in UI_PAGES.items():
            if path == "confirm a promotion":
                path = f"/ui/models/moderation/promote?run={site.runs[0]}"
            answer = client.get(path)
            expected = 200 if role.may(action) else 403
            assert answer.status_code == expected, (caller, path, answer.text[-300:])
            if expected == 403:
                assert f"needs the {NEEDS[action]} role" in answer.text
        shown = {'href="/ui/users"': Action.MANAGE_USERS, 'href="/ui/review"': Action.REVIEW}
        for link, action in shown.items():  # the role may not: the page does not offer it
            assert (link in page) == role.may(action), (caller, link)
        assert ("Promote…" in page or "Roll back" in page) == role.may(Action.PROMOTE)
        for what, (action, audited) in UI_ACTIONS.items():
            method, path, form = _ui_change(site, caller, what)
            answer = client.request(method, path, data={"csrf": csrf, **form})
            if role.may(action):
                assert answer.status_code in (200, 303), (caller, what, answer.text[-300:])
                if audited:
                    site.changes.append((audited, name_of(caller)))
            else:
                assert answer.status_code == 403, (caller, what, answer.status_code)
        forged = client.post("/ui/models/moderation/rollback", data={"csrf": "made-up"})
        assert forged.status_code == 403
        client.close()
    refused = httpx.Client(base_url=site.url)
    form = refused.get("/ui/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    assert refused.post("/ui/login", data={"token": SERVE, "csrf": csrf}).status_code == 401


def test_the_audit_trail_names_each_change_once_and_outlives_redis(site: Site) -> None:
    """After the role tables: one entry per change allowed, by its caller; none for a
    refused one but refused sign-ins; the same read back from the bucket once Redis lost it.
    (Runs last in this module: it empties the module's database.)"""
    if not site.changes:
        pytest.skip("the role tables did not run first")
    entries = httpx.get(f"{site.url}/v1/audit?limit=1000", headers=bearer(WEBHOOK)).json()
    callers = {name_of(c) for c in [*ROLES, *SERVICES]} | {"unknown"}
    kinds = {action for action, _ in site.changes}
    made = [(e["action"], e["actor"]) for e in entries if e["actor"] in callers]
    assert sorted(m for m in made if m[0] in kinds) == sorted(site.changes)
    for entry in entries:
        if entry["actor"] in callers:  # not the test's own (cli:) changes
            assert entry["request_id"] and entry["client"] == "127.0.0.1", entry
    signs = [e for e in entries if e["action"].startswith("sign-in")]
    assert {e["action"] for e in signs} == {"sign-in", "sign-in.refused"}
    refused_roles = {
        (action, name_of(c))
        for c in ROLES
        for action in ("model.promote", "user.add")
        if not ROLES[c].may(Action.PROMOTE)
    }
    assert not refused_roles & set(made)

    store = ArtifactStore.from_settings(site.settings)
    asyncio.run(_compact_all(site.settings, store))  # what the worker's reconciler has not yet
    redis.Redis.from_url(site.settings.redis_url).flushdb()  # Redis loses everything
    again = httpx.get(f"{site.url}/v1/audit?limit=1000", headers=bearer(WEBHOOK)).json()
    assert [e["id"] for e in again][: len(entries)] == [e["id"] for e in entries]
    for method in ("DELETE", "PUT", "PATCH", "POST"):  # no route changes it
        assert (
            httpx.request(method, f"{site.url}/v1/audit", headers=bearer(WEBHOOK)).status_code
            == 405
        )


async def _dispute(settings: Settings) -> str:
    """A disputed text of MODFACTORY_MODEL_NAME, open, for someone to settle."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    item_id = f"mod-{secrets.token_hex(4)}.0"
    answers = {"ann": ["insult"], "bob": []}
    dispute = Dispute(item_id=item_id, model_name="moderation", text="a text", answers=answers)
    await DoubleReviews(client, settings.queue_name).dispute(dispute)
    await client.aclose()
    return item_id


async def _compact_all(settings: Settings, store: ArtifactStore) -> None:
    """Compact until the stream is empty and no compaction is under way (the worker's
    reconciler may hold the lock, half-way through writing a day)."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    log = AuditLog(client, settings.queue_name)
    deadline = time.monotonic() + 60
    try:
        while await client.xlen(log.key) or await client.exists(f"{log.key}-lock"):
            assert time.monotonic() < deadline, "the audit stream was never compacted"
            await log.compact(store, 30)
            await asyncio.sleep(0.05)  # the other compaction, if one holds the lock
    finally:
        await client.aclose()


def test_the_scoring_api_refuses_what_it_may_not_score_before_queuing_anything(
    site: Site,
) -> None:
    headers = bearer(site.add_user("scorer@example.com", "operator"))  # others get revoked
    client = redis.Redis.from_url(site.settings.redis_url)
    before = client.zcard(f"{site.settings.queue_name}:scores")
    refused = [
        ({"source": "/etc/passwd"}, 422, "not one the API may score; allowed: synthetic"),
        ({"source": "synthetic:100", "to_review": 10**6}, 422, "body field 'to_review'"),
        ({"source": "synthetic:100", "model": "nobody"}, 409, "has no champion"),
        ({"source": "synthetic:100", "run_id": "run-nope"}, 404, "no run 'run-nope'"),
        ({"source": "synthetic:100", "surprise": 1}, 422, "body field 'surprise'"),
    ]
    for body, status, said in refused:
        answer = httpx.post(f"{site.url}/v1/scores", json=body, headers=headers)
        assert answer.status_code == status and said in answer.json()["error"], answer.text
    garbled = httpx.post(f"{site.url}/v1/scores", content=b"{not json", headers=headers)
    assert garbled.status_code == 422 and "not valid JSON" in garbled.json()["error"]
    assert client.zcard(f"{site.settings.queue_name}:scores") == before  # nothing queued
    missing = httpx.get(f"{site.url}/v1/scores/score-nope", headers=headers)
    assert missing.status_code == 404 and "no scoring job" in missing.json()["error"]
    queued = asyncio.run(_queued_score(site.settings))
    early = httpx.post(f"{site.url}/v1/scores/{queued}/approve", headers=headers)
    assert early.status_code == 409 and "only one awaiting approval" in early.json()["error"]
    unknown = httpx.post(f"{site.url}/v1/scores/{queued}/delete", headers=headers)
    assert unknown.status_code == 404 and "cancel or approve" in unknown.json()["error"]
