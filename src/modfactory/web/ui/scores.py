"""The scoring pages of ``/ui``: the scoring jobs (newest first), and one job — its
progress while it runs (rows done, rows/s, ETA; refreshed live), then per label the rows
flagged, a histogram of the scores and the highest-scoring texts; its quote; cancel and
approve (operator)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from modfactory.producer import Producer
from modfactory.roles import Action
from modfactory.scoring.report import histogram_svgs
from modfactory.store.score_job import ScoreJob, ScoreJobNotFound, ScoreJobStateError
from modfactory.web.identity import actor_of
from modfactory.web.ui.pages import (
    Refused,
    checked_form,
    guarded,
    message,
    page_headers,
    render,
    signed_in,
)
from modfactory.web.ui.session import Session

JOBS_SHOWN = 50


def _producer(request: Request) -> Producer:
    return request.app.state.producer


async def _job(request: Request, session: Session) -> ScoreJob:
    try:
        return await _producer(request).scores.get(request.path_params["score_id"])
    except ScoreJobNotFound as exc:
        raise Refused(message(request, session, 404, "No such scoring job", str(exc))) from None


@guarded
async def scores_page(request: Request) -> Response:
    """``GET /ui/scores`` (``fragment=1``: the rows alone, for refreshing)."""
    session = await signed_in(request)
    producer = _producer(request)
    jobs = await producer.scores.list(JOBS_SHOWN)
    rows = [(job, job.progress(await producer.scores.rows_in_progress(job.id))) for job in jobs]
    context: dict[str, Any] = {
        "session": session,
        "title": "Scoring",
        "page": "scores",
        "rows": rows,
        "refresh": "/ui/scores?fragment=1",
        "final": all(job.state.terminal for job in jobs),
    }
    fragment = request.query_params.get("fragment") == "1"
    return render(request, "scores_rows.html" if fragment else "scores.html", **context)


@guarded
async def score_page(request: Request) -> Response:
    """``GET /ui/scores/{id}`` (``fragment=1``: the body alone, for refreshing)."""
    session = await signed_in(request)
    job = await _job(request, session)
    progress = job.progress(await _producer(request).scores.rows_in_progress(job.id))
    context = {
        "session": session,
        "title": job.id,
        "page": "scores",
        "job": job,
        "progress": progress,
        "share": progress.rows_done / progress.rows_total if progress.rows_total else 0.0,
        "labels": job.summary.labels if job.summary else {},
        "refresh": f"/ui/scores/{job.id}?fragment=1",
    }
    fragment = request.query_params.get("fragment") == "1"
    return render(request, "score_body.html" if fragment else "score.html", **context)


@guarded
async def score_chart(request: Request) -> Response:
    """``GET /ui/scores/{id}/histogram/{label}``: one label's histogram (SVG)."""
    session = await signed_in(request)
    job = await _job(request, session)
    svgs = await asyncio.to_thread(histogram_svgs, job)
    label = request.path_params["label"]
    if label not in svgs:
        return message(request, session, 404, "No such chart", f"{job.id} has no {label[:80]!r}")
    return Response(svgs[label], media_type="image/svg+xml", headers=page_headers())


@guarded
async def act_on_score(request: Request) -> Response:
    """``POST /ui/scores/{id}/cancel|approve``: then back to the job."""
    action = request.path_params["action"]
    needed = {"cancel": Action.SCORE, "approve": Action.APPROVE}
    if action not in needed:
        return message(request, None, 404, "No such action", "cancel or approve")
    session = await signed_in(request, needed[action])
    await checked_form(request, session, session.csrf)
    job = await _job(request, session)
    producer = _producer(request)
    act = producer.cancel_score if action == "cancel" else producer.approve_score
    try:
        await act(job.id, by=actor_of(request, session.caller))
    except ScoreJobStateError as exc:
        return message(request, session, 409, "Not done", str(exc))
    return RedirectResponse(f"/ui/scores/{job.id}", 303, headers=page_headers())
