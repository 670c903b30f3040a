"""Scoring jobs over HTTP, as ``modfactory score`` / ``scores`` / ``status`` / ``cancel``.

- ``POST /v1/scores`` — operator. JSON body ``ScoreRequest``; the source must be one
  MODFACTORY_SCORE_SOURCES allows (none when unset). 202 with the job; 422 naming the field,
  the file or the column at fault, before anything is queued.
- ``GET /v1/scores`` (``?limit=``, 1-200), ``GET /v1/scores/{id}`` — viewer: the job
  documents, each with its ``progress`` (rows done, rows/s, ETA).
- ``POST /v1/scores/{id}/cancel`` — operator; ``POST /v1/scores/{id}/approve`` (a job
  quoted above MODFACTORY_MAX_COST) — operator, as approving a run's quote.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modfactory.data.archive import allowed_archive
from modfactory.data.recipe import RecipeError
from modfactory.producer import Producer
from modfactory.roles import Action
from modfactory.store.run import RunNotFound, RunStateError
from modfactory.store.score_job import ScoreJob, ScoreJobNotFound, ScoreJobStateError
from modfactory.web.errors import ApiError, field_error
from modfactory.web.identity import actor_of, require
from modfactory.web.request_body import read_body

MAX_TO_REVIEW = 10_000  # most texts one job may offer for review


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=2000)
    model: str | None = Field(None, min_length=1, max_length=200)
    run_id: str | None = Field(None, min_length=1, max_length=200)
    text_column: str | None = Field(None, min_length=1, max_length=200)
    id_column: str | None = Field(None, min_length=1, max_length=200)
    keep_text: bool = False
    to_review: int = Field(0, ge=0, le=MAX_TO_REVIEW)
    batch: bool = True  # through the backend's batch API where it has one


def _producer(request: Request) -> Producer:
    return request.app.state.producer


async def _body(request: Request) -> bytes:
    return await read_body(request, request.app.state.settings.webhook_max_body, "WEBHOOK")


async def job_json(producer: Producer, job: ScoreJob) -> dict[str, Any]:
    """The job document, with its progress now."""
    progress = job.progress(await producer.scores.rows_in_progress(job.id))
    return job.model_dump(mode="json") | {"progress": progress.model_dump()}


async def create_score(request: Request) -> Response:
    """``POST /v1/scores``."""
    body = await _body(request)
    caller = await require(request, Action.SCORE, body, signed=True)
    try:
        wanted = ScoreRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError(422, f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise field_error(exc) from None
    producer = _producer(request)
    try:
        source = allowed_archive(wanted.source, request.app.state.settings.score_sources)
        spec = await producer.score_spec(
            source,
            model_name=wanted.model,
            run_id=wanted.run_id,
            text_column=wanted.text_column,
            id_column=wanted.id_column,
            keep_text=wanted.keep_text,
            to_review=wanted.to_review,
            batch_api=wanted.batch,
        )
    except RecipeError as exc:
        raise ApiError(422, f"body field 'source': {exc}", field="source") from None
    except RunNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except RunStateError as exc:
        raise ApiError(409, str(exc)) from None
    job = await producer.submit_score(spec, by=actor_of(request, caller))
    return JSONResponse(await job_json(producer, job), 202)


async def list_scores(request: Request) -> Response:
    """``GET /v1/scores``."""
    await require(request, Action.READ, signed=True)
    limit = request.query_params.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 200:
        raise ApiError(422, f"query parameter 'limit': {limit[:20]!r} is not a number in 1-200")
    producer = _producer(request)
    jobs = await producer.scores.list(int(limit))
    return JSONResponse([await job_json(producer, job) for job in jobs])


async def get_score(request: Request) -> Response:
    """``GET /v1/scores/{id}``."""
    await require(request, Action.READ, signed=True)
    producer = _producer(request)
    try:
        job = await producer.scores.get(request.path_params["score_id"])
    except ScoreJobNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return JSONResponse(await job_json(producer, job))


async def act_on_score(request: Request) -> Response:
    """``POST /v1/scores/{id}/cancel|approve``: the job after; 409 when it is over already
    (or, to approve, not awaiting approval)."""
    action = request.path_params["action"]
    needed = {"cancel": Action.SCORE, "approve": Action.APPROVE}
    if action not in needed:
        raise ApiError(404, f"no scoring-job action {action[:40]!r}: cancel or approve")
    caller = await require(request, needed[action], await _body(request), signed=True)
    producer = _producer(request)
    act = producer.cancel_score if action == "cancel" else producer.approve_score
    try:
        job = await act(request.path_params["score_id"], by=actor_of(request, caller))
    except ScoreJobNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except ScoreJobStateError as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse(await job_json(producer, job))
