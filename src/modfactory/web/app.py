"""``modfactory serve``'s application: the webhook's route (what it starts is
``triggers.webhook``'s), the runs API, health, metrics, and the other wings' routes.

Routes (every answer is JSON but ``/metrics``; every error is ``{"error": "<message>"}``):

- ``POST /v1/retrain`` — operator, or signed (see ``auth``); optional JSON body
  (``RetrainRequest``); 202 with the new run, 409 while the model name has an unfinished
  run (200 with that run when MODFACTORY_ACTIVE_RUN_POLICY=coalesce).
- ``GET /v1/runs``, ``GET /v1/runs/{id}`` — the documents ``modfactory runs --json`` /
  ``status --json`` print; the run actions and the models API are ``actions_api``'s.
  Who may call what is the role table's (``roles``), asked through ``identity``.
- ``/v1/scores`` — scoring jobs over an archive (``scores_api``): operator to start or
  cancel one, viewer to read.
- ``POST /v1/moderations``, ``POST /v1/classifications`` — the champion's answers, in the
  shape of Mistral's API (see ``moderation_api``); any bearer token (the serve token too).
- ``POST /v1/feedback``, ``GET /v1/review`` — a moderator's correction, the next run's
  data, and the queue of served texts to review (``feedback_api``); reviewer.
- ``GET /healthz`` — Redis reachable and a worker heartbeat seen recently (200, else 503).
- ``/ui`` — the dashboard (``ui``): sign-in with a token, a session cookie, CSRF.
- ``GET /metrics`` — Prometheus text (see ``monitoring``; the serving counters of this
  process after them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modfactory.artifacts import ArtifactStore
from modfactory.backends import Backend, BackendError, cached_backend
from modfactory.data.recipe import RecipeError
from modfactory.producer import Producer
from modfactory.redis_connections import redacted
from modfactory.roles import Action
from modfactory.serving.champions import ChampionServer
from modfactory.serving.drift import DriftMeter
from modfactory.serving.meter import ServeMeter
from modfactory.serving.review import ReviewSampler
from modfactory.serving.shadow import Shadow
from modfactory.settings import Settings
from modfactory.store import queue
from modfactory.store.accounts import AccountStore
from modfactory.store.drift import DriftLog
from modfactory.store.feedback import RateLimit
from modfactory.store.health import queued_without_worker, worker_heartbeat
from modfactory.store.run import ActiveRunExists, RunNotFound, RunSpec
from modfactory.store.shadow import ShadowLog
from modfactory.triggers.webhook import (
    RetrainRequest,
    SourceRefused,
    log_retrain,
    retrain_spec,
)
from modfactory.web import actions_api, audit_api, scores_api
from modfactory.web.auth import ReplayGuard, check_proxy, check_secrets
from modfactory.web.errors import (
    ApiError,
    api_error,
    field_error,
    http_error,
    redis_down,
    unexpected,
)
from modfactory.web.feedback_api import feedback, review
from modfactory.web.identity import Accounts, actor_of, require
from modfactory.web.moderation_api import classifications, moderations
from modfactory.web.monitoring import prometheus_text
from modfactory.web.request_body import read_body
from modfactory.web.ui import pages as ui_pages
from modfactory.web.ui import routes as ui

log = logging.getLogger("modfactory.web")
STARTUP_PATIENCE = 5.0  # s serve waits for Redis as it starts
SERVE_PATIENCE = 2.0  # s a request waits for Redis (a failover): then 503, never a lost 202


def create_app(settings: Settings) -> Starlette:
    """The ASGI app; it connects to MODFACTORY_REDIS_URL when it starts. Refused (ValueError,
    one line naming the setting) without a shared Redis or with a weak secret or token."""
    if not settings.redis_url:
        raise ValueError("modfactory serve needs a shared Redis: set MODFACTORY_REDIS_URL")
    check_secrets(
        settings.webhook_secret, settings.webhook_token, settings.serve_token, settings.review_token
    )
    check_proxy(settings.auth_proxy_header, settings.auth_proxy_from)
    app = Starlette(
        routes=[
            Route("/v1/retrain", retrain, methods=["POST"]),
            Route("/v1/runs", list_runs, methods=["GET"]),
            Route("/v1/runs/{run_id}", get_run, methods=["GET"]),
            Route("/v1/runs/{run_id}/{action}", actions_api.run_action, methods=["POST"]),
            Route("/v1/models", actions_api.list_models, methods=["GET"]),
            Route("/v1/audit", audit_api.audit, methods=["GET"]),
            Route("/v1/models/{name}", actions_api.get_model, methods=["GET"]),
            Route("/v1/models/{name}/{what}", actions_api.model_action, methods=["POST"]),
            Route("/v1/scores", scores_api.create_score, methods=["POST"]),
            Route("/v1/scores", scores_api.list_scores, methods=["GET"]),
            Route("/v1/scores/{score_id}", scores_api.get_score, methods=["GET"]),
            Route("/v1/scores/{score_id}/{action}", scores_api.act_on_score, methods=["POST"]),
            Route("/v1/moderations", moderations, methods=["POST"]),
            Route("/v1/classifications", classifications, methods=["POST"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/v1/review", review, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *ui.routes(),
        ],
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            RedisError: redis_down,
            ConnectionError: redis_down,
            Exception: unexpected,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.artifacts = ArtifactStore.from_settings(settings)
    app.state.ui_templates = ui_pages.templates()
    return app


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open the Redis pool: the producer and the replay guard work on it."""
    settings: Settings = app.state.settings
    url = settings.redis_url or ""
    try:
        pool = await queue.open_pool(
            url,
            settings.queue_name,
            ca_file=settings.redis_ca_file,
            patience=SERVE_PATIENCE,
            min_replicas=settings.redis_min_replicas,
            first_answer_within=STARTUP_PATIENCE,
        )
    except (RedisError, OSError) as exc:
        log.error("cannot reach Redis at %s (MODFACTORY_REDIS_URL): %s", redacted(url), exc)
        raise
    app.state.producer = Producer(pool, settings)
    app.state.replays = ReplayGuard(pool, settings.queue_name, settings.webhook_tolerance)
    app.state.accounts = accounts = Accounts(AccountStore(pool, settings.queue_name))
    await accounts.reload()
    app.state.feedback_rate = RateLimit(
        pool, settings.queue_name, "feedback", settings.feedback_rate
    )
    backends: dict[str, Backend] = {}

    def backend(name: str) -> Backend:
        return cached_backend(backends, name, settings, pool)

    app.state.serve_meter = meter = ServeMeter()
    app.state.champions = champions = ChampionServer(
        pool,
        settings.queue_name,
        backend,
        settings.serve_thresholds,
        settings.serve_max_batch,
        settings.shadowed,
        on_call=meter.batch.observe,
    )
    app.state.shadow = Shadow(champions, ShadowLog(pool, settings.queue_name))
    app.state.review = ReviewSampler(app.state.producer.review_queue(), settings.review_sample)
    app.state.drift = DriftMeter(DriftLog(pool, settings.queue_name, settings.drift_window))
    refreshing = asyncio.create_task(champions.refresh_forever(settings.serve_refresh_interval))
    counting = asyncio.create_task(app.state.drift.flush_forever(settings.serve_refresh_interval))
    rereading = asyncio.create_task(accounts.refresh_forever(settings.serve_refresh_interval))
    try:
        yield
    finally:
        refreshing.cancel()
        counting.cancel()
        rereading.cancel()
        await app.state.drift.flush()
        await app.state.shadow.drain()
        await app.state.review.drain()
        for each in backends.values():
            await each.close()
        await pool.aclose()


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _producer(request: Request) -> Producer:
    return request.app.state.producer


# --- requests --------------------------------------------------------------------------
async def _body(request: Request) -> bytes:
    return await read_body(request, _settings(request).webhook_max_body, "WEBHOOK")


def run_url(request: Request, run_id: str) -> str:
    base = _settings(request).public_url or str(request.base_url)
    return f"{base.rstrip('/')}/v1/runs/{run_id}"


def parse_retrain_request(body: bytes) -> RetrainRequest:
    """The body as a RetrainRequest (empty: all defaults); 422 naming the field at fault."""
    try:
        return RetrainRequest.model_validate_json(body) if body.strip() else RetrainRequest()
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError(422, f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise field_error(exc) from None


def spec_of(request: Request, wanted: RetrainRequest) -> RunSpec:
    """The run ``wanted`` asks for (``triggers.webhook``), checked before anything is
    created; else 422 naming what is at fault."""
    try:
        return retrain_spec(_producer(request), _settings(request), wanted)
    except SourceRefused as exc:
        raise ApiError(422, f"body field 'source': {exc}", field="source") from None
    except ValidationError as exc:
        raise field_error(exc, "recipe.") from None
    except (RecipeError, BackendError) as exc:
        raise ApiError(422, str(exc)) from None


# --- routes ------------------------------------------------------------------------------
async def retrain(request: Request) -> Response:
    """``POST /v1/retrain``: 202 with the new run; 409 (or 200, coalescing) while the model
    name has an unfinished run."""
    body = await _body(request)
    caller = await require(request, Action.RUN, body, signed=True)
    wanted = parse_retrain_request(body)
    spec = spec_of(request, wanted)
    try:
        submission = await _producer(request).submit(spec, by=actor_of(request, caller))
    except RecipeError as exc:  # e.g. the source directory has no split files
        raise ApiError(422, str(exc)) from None
    except ActiveRunExists as exc:
        url = run_url(request, exc.run.id)
        raise ApiError(409, str(exc), active_run_id=exc.run.id, url=url) from None
    run = submission.run
    url = run_url(request, run.id)
    log_retrain(wanted, submission)
    return JSONResponse(
        {"run_id": run.id, "url": url, "state": run.state, "created": submission.created},
        status_code=202 if submission.created else 200,
        headers={"Location": url},
    )


async def list_runs(request: Request) -> Response:
    """``GET /v1/runs?limit=N``: the newest runs, as ``modfactory runs --json``."""
    await require(request, Action.READ, await _body(request), signed=True)
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise ApiError(422, f"query parameter 'limit': {limit!r} is not a number in 1-1000")
    runs = await _producer(request).runs(int(limit))
    url_of = request.app.state.artifacts.url_of
    return JSONResponse([r.to_json_dict(url_of) for r in runs])


async def get_run(request: Request) -> Response:
    """``GET /v1/runs/{id}``: one run, as ``modfactory status --json``."""
    await require(request, Action.READ, await _body(request), signed=True)
    run_id = request.path_params["run_id"]
    try:
        run = await _producer(request).run(run_id)
    except RunNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return JSONResponse(run.to_json_dict(request.app.state.artifacts.url_of))


async def healthz(request: Request) -> Response:
    """``GET /healthz``: 200 with Redis reachable and a worker heartbeat, else 503 (naming
    the runs queued with no worker alive)."""
    settings, redis = _settings(request), _producer(request).redis
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        return JSONResponse(
            {"ok": False, "redis": f"unreachable: {type(exc).__name__}", "worker": None},
            status_code=503,
        )
    heartbeat = await worker_heartbeat(redis, settings.queue_name)
    ok = heartbeat is not None
    body: dict[str, Any] = {
        "ok": ok,
        "redis": "ok",
        "worker": heartbeat
        or f"no worker heartbeat in the last {settings.health_check_interval + 1} s",
    }
    if not ok:
        waiting = await queued_without_worker(
            redis, settings.queue_name, settings.queued_alert_after
        )
        body["queued_without_worker"] = [
            {"run_id": run_id, "queued_seconds": round(seconds)} for run_id, seconds in waiting
        ]
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text."""
    settings = _settings(request)
    text = await prometheus_text(
        _producer(request).redis, settings.queue_name, settings.drift_window, settings.drift_alert
    )
    text += request.app.state.serve_meter.exposition()
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
