"""``/ui``: the dashboard on ``modfactory serve`` — server-rendered pages (Jinja2, texts
escaped everywhere), a little plain JavaScript that refreshes the live parts, every asset
served from the package (no network needed). Sign-in, sessions and CSRF: ``ui_session``.

Pages: runs (newest first, filters, updating themselves), a run (stages, metrics, charts,
dataset, events; cancel, approve, re-queue a failed stage), models (``ui_models``: promote,
roll back), review (``ui_review``), scoring jobs (``ui_scores``), the audit trail and the
accounts (``ui_people``). Each page and action asks the role table; a page shows only what
the role may do. Shared parts: ``ui_pages``.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from modfactory import charts
from modfactory.artifacts import ArtifactError, ArtifactStore
from modfactory.evaluation import tables
from modfactory.producer import Producer
from modfactory.roles import Action, Role
from modfactory.store.audit import Actor, AuditAction
from modfactory.store.run import Run, RunNotFound, RunState, RunStateError
from modfactory.web.identity import actor_of, request_id
from modfactory.web.ui import models as ui_models
from modfactory.web.ui import people as ui_people
from modfactory.web.ui import review as ui_review
from modfactory.web.ui import scores as ui_scores
from modfactory.web.ui.pages import (
    REPORT_CSP,
    Refused,
    checked_form,
    guarded,
    message,
    page_headers,
    posted,
    render,
    signed_in,
)
from modfactory.web.ui.run import CHART_NAMES, run_context
from modfactory.web.ui.session import (
    LOGIN_COOKIE,
    Session,
    caller_of_token,
    csrf_ok,
    end_session,
    login_csrf,
    session_of,
    start_session,
)

WRONG_TOKEN_DELAY = 1.0  # seconds before a refused sign-in is answered
RUNS_SHOWN = 50


def routes() -> list[BaseRoute]:
    return [
        Route("/ui", home, methods=["GET"]),
        Route("/ui/login", login_page, methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/runs", runs_page, methods=["GET"]),
        Route("/ui/runs/{run_id}", run_page, methods=["GET"]),
        Route("/ui/runs/{run_id}/files/{name}", run_file, methods=["GET"]),
        Route("/ui/runs/{run_id}/{action}", run_action, methods=["POST"]),
        Route("/ui/models", ui_models.models_page, methods=["GET"]),
        Route("/ui/schedule", ui_models.schedule_page, methods=["GET"]),
        Route("/ui/review", ui_review.review_page, methods=["GET"]),
        Route("/ui/review", ui_review.review_answer, methods=["POST"]),
        Route("/ui/reviewers", ui_review.reviewers_page, methods=["GET"]),
        Route("/ui/disputes", ui_review.disputes_page, methods=["GET"]),
        Route("/ui/disputes/{item}", ui_review.settle, methods=["POST"]),
        Route("/ui/models/{name}/{what}", ui_models.confirm_page, methods=["GET"]),
        Route("/ui/models/{name}/{what}", ui_models.change_model, methods=["POST"]),
        Route("/ui/scores", ui_scores.scores_page, methods=["GET"]),
        Route("/ui/scores/{score_id}", ui_scores.score_page, methods=["GET"]),
        Route("/ui/scores/{score_id}/histogram/{label}", ui_scores.score_chart, methods=["GET"]),
        Route("/ui/scores/{score_id}/{action}", ui_scores.act_on_score, methods=["POST"]),
        Route("/ui/audit", ui_people.audit_page, methods=["GET"]),
        Route("/ui/users", ui_people.users_page, methods=["GET"]),
        Route("/ui/users", ui_people.change_users, methods=["POST"]),
        Route("/ui/users/{name}/{what}", ui_people.change_users, methods=["POST"]),
        Mount(
            "/ui/static",
            StaticFiles(packages=[("modfactory.web.ui", "static")]),
            name="ui-static",
        ),
    ]


# --- signing in --------------------------------------------------------------------------------
def landing(role: Role | None) -> str:
    """Where a role starts: a reviewer at the review queue, the others at the runs."""
    return "/ui/review" if role == Role.REVIEWER else "/ui/runs"


async def home(request: Request) -> Response:
    """``GET /ui``: to the role's first page (or sign-in)."""
    session = await session_of(request)
    target = landing(session.role if session else None)
    return RedirectResponse(target, 303, headers=page_headers())


def _next(nxt: str, role: Role | None = None) -> str:
    """Where to go after signing in: the page asked for, if it is one of /ui's (the
    sign-in form's default, the runs, is the role's first page)."""
    if not nxt.startswith("/ui/") or nxt.startswith("//") or nxt == "/ui/runs":
        return landing(role)
    return nxt


async def login_page(
    request: Request, error: str | None = None, status: int = 200, nxt: str | None = None
) -> Response:
    """``GET /ui/login``: a token field (``next``: where to go once signed in)."""
    nxt = nxt or request.query_params.get("next", "/ui/runs")
    csrf = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status,
        session=None,
        title="Sign in",
        error=error,
        csrf=csrf,
        next=_next(nxt),
    )
    login_csrf(request, response, csrf)
    return response


async def login(request: Request) -> Response:
    """``POST /ui/login``: an account's token (or a service's that may sign in) starts a
    session; any other is refused, late. Both are in the audit trail."""
    form = await posted(request)
    nxt = str(form.get("next", ""))
    if not csrf_ok(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf")):
        return await login_page(request, "The sign-in form expired: try again.", 403, nxt)
    caller = await caller_of_token(request, str(form.get("token", "")))
    producer: Producer = request.app.state.producer
    if caller is None:
        client = request.client.host if request.client else None
        nobody = Actor(name="unknown", client=client, request_id=request_id(request))
        await producer.record(AuditAction.SIGN_IN_REFUSED, "/ui", "a token not accepted", by=nobody)
        await asyncio.sleep(WRONG_TOKEN_DELAY)
        return await login_page(request, "That token is not accepted here.", 401, nxt)
    await producer.record(AuditAction.SIGN_IN, "/ui", by=actor_of(request, caller))
    response = RedirectResponse(_next(nxt, caller.role), 303, headers=page_headers())
    await start_session(request, response, caller)
    return response


@guarded
async def logout(request: Request) -> Response:
    """``POST /ui/logout``."""
    session = await signed_in(request)
    await checked_form(request, session, session.csrf)
    response = RedirectResponse("/ui/login", 303, headers=page_headers())
    end_session(request, response)
    return response


# --- runs ---------------------------------------------------------------------------------------
def _age(at: datetime) -> str:
    seconds = (datetime.now(UTC) - at).total_seconds()
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _progress(run: Run) -> str:
    if run.progress and run.stages[run.progress.stage].state == "running":
        p = run.progress
        return f"{p.what}: {p.done:,} of {p.total:,}"
    if run.state == RunState.RUNNING and run.training.status and run.current_stage == "train":
        last = run.training.checkpoints[-1] if run.training.checkpoints else None
        return run.training.status + (f" · step {last.step}" if last else "")
    return ""


def run_row(run: Run, metric: str) -> dict[str, Any]:
    value = run.metrics.value(metric) if run.metrics else None  # type: ignore[arg-type]
    return {
        "id": run.id,
        "model": run.spec.model_name,
        "state": run.state.value,
        "stage": run.current_stage or "",
        "progress": _progress(run),
        "source": run.spec.source,
        "backend": run.spec.backend,
        "metric": tables.number(value) if value is not None else "",
        "age": _age(run.created_at),
    }


@guarded
async def runs_page(request: Request) -> Response:
    """``GET /ui/runs?state=…&model=…`` (``fragment=1``: the table alone, for refreshing)."""
    session = await signed_in(request)
    state = request.query_params.get("state", "")
    model = request.query_params.get("model", "").strip()[:200]
    producer: Producer = request.app.state.producer
    if state and state not in {s.value for s in RunState}:
        state = ""
    wanted = await producer.store.find(RUNS_SHOWN, state, model)
    metric = request.app.state.settings.promotion_metric
    query = urlencode({"state": state, "model": model, "fragment": 1})
    context = {
        "session": session,
        "title": "Runs",
        "page": "runs",
        "rows": [run_row(r, metric) for r in wanted],
        "metric": metric,
        "state": state,
        "model": model,
        "states": [s.value for s in RunState],
        "refresh": f"/ui/runs?{query}",
    }
    fragment = request.query_params.get("fragment") == "1"
    return render(request, "runs_rows.html" if fragment else "runs.html", **context)


async def _run(request: Request, session: Session) -> Run:
    try:
        return await request.app.state.producer.run(request.path_params["run_id"])
    except RunNotFound as exc:
        raise Refused(message(request, session, 404, "No such run", str(exc))) from None


@guarded
async def run_page(request: Request) -> Response:
    """``GET /ui/runs/{id}`` (``fragment=1``: the body alone, for refreshing)."""
    session = await signed_in(request)
    run = await _run(request, session)
    context = run_context(run, session, request.app.state.settings.promotion_metric)
    fragment = request.query_params.get("fragment") == "1"
    return render(request, "run_body.html" if fragment else "run.html", **context)


@guarded
async def run_file(request: Request) -> Response:
    """``GET /ui/runs/{id}/files/{chart or report}``: from the artifact store."""
    session = await signed_in(request)
    run = await _run(request, session)
    name = request.path_params["name"]
    fields = {chart: field for chart, field, _ in CHART_NAMES}
    field = "report_html" if name == "report" else fields.get(name)
    key = getattr(run.artifacts, field, None) if field else None
    if not key:
        return message(request, session, 404, "No such file", f"run {run.id} has no {name}")
    store: ArtifactStore = request.app.state.artifacts
    try:
        data = await asyncio.to_thread(store.load, key)
    except ArtifactError as exc:
        return message(request, session, 503, "Not available", str(exc))
    if name == "report":
        return HTMLResponse(data, headers=page_headers(REPORT_CSP))
    media_type = "image/png" if key.endswith(".png") else charts.MEDIA_TYPE  # PNG: older runs
    return Response(data, media_type=media_type, headers=page_headers())


@guarded
async def run_action(request: Request) -> Response:
    """``POST /ui/runs/{id}/cancel|approve|requeue``: then back to the run."""
    action = request.path_params["action"]
    needed = {"cancel": Action.RUN, "requeue": Action.RUN, "approve": Action.APPROVE}
    session = await signed_in(request, needed.get(action, Action.RUN))
    await checked_form(request, session, session.csrf)
    run = await _run(request, session)
    producer: Producer = request.app.state.producer
    by = actor_of(request, session.caller)
    try:
        if action == "cancel":
            await producer.cancel(run.id, by=by)
        elif action == "approve":
            await producer.approve(run.id, by=by)
        elif action == "requeue":
            await producer.retry(run.id, by=by)
        else:
            return message(request, session, 404, "No such action", f"{action!r}")
    except RunStateError as exc:
        return message(request, session, 409, "Not done", str(exc))
    return RedirectResponse(f"/ui/runs/{run.id}", 303, headers=page_headers())
