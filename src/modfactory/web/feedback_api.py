"""``POST /v1/feedback``: a person's correction of what a model answered, kept as training
and test data for the model name's next run; ``GET /v1/review``: the texts waiting for one.

Body: ``{"model": <name>, "input": <text>, "labels": {<label>: true|false, ...},
"request_id": <the sender's id>, "reviewer": <who>}`` — or, for a text of the review queue,
``"answer_id"`` and ``"index"`` of the served answer instead of ``input``. Labels not named
count as not flagged, a label the model does not have is refused (422, naming it). Sent
again with the same ``request_id``, it is stored once and answered alike. Bearer
MODFACTORY_REVIEW_TOKEN
(or MODFACTORY_WEBHOOK_TOKEN) — never the serve token (403): a scoring client must not be
able to write training data. Bounded as the serving endpoints are (MODFACTORY_SERVE_MAX_BODY,
MODFACTORY_SERVE_MAX_CHARS) and at MODFACTORY_FEEDBACK_RATE corrections per token and
minute (429). Answers 202 with the correction's id.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modfactory.producer import Producer
from modfactory.roles import Action
from modfactory.settings import Settings
from modfactory.store.feedback import Correction, RateLimit
from modfactory.triggers.feedback import UnknownModel, model_labels, retrain_if_due
from modfactory.web.errors import ApiError, field_error
from modfactory.web.identity import Caller, actor_of, rate_key, require
from modfactory.web.request_body import read_body

log = logging.getLogger("modfactory.triggers.feedback")
REVIEW_LEASE = 600  # seconds a reviewer holds the texts handed out


class FeedbackRequest(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, pattern=r"^[\w][\w.-]*$", max_length=200)
    input: str | None = Field(None, min_length=1)
    answer_id: str | None = Field(None, pattern=r"^[\w-]{1,80}$")  # a served answer's text…
    index: int = Field(0, ge=0, le=10_000)  # …the index-th of its input (kept for review)
    labels: dict[str, bool]
    request_id: str | None = Field(None, min_length=1, max_length=200)
    reviewer: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_text(self) -> FeedbackRequest:
        if (self.input is None) == (self.answer_id is None):
            raise ValueError("give the text as 'input', or a served answer's 'answer_id'")
        return self


def reviewer_of(caller: Caller, given: str | None) -> str:
    """Who answered: the signed-in account, never a free-text field; a service token may
    name the person it speaks for (``reviewer``), else it is the service's name."""
    if not caller.account:
        return given or caller.name
    if given is not None and given.strip().lower() != caller.name:
        raise ApiError(
            422,
            f"body field 'reviewer': {given[:80]!r}, but the account signed in is "
            f"{caller.name!r}: leave it out",
            field="reviewer",
        )
    return caller.name


def _parsed(request: Request, body: bytes) -> FeedbackRequest:
    settings: Settings = request.app.state.settings
    try:
        wanted = FeedbackRequest.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError(422, f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise field_error(exc) from None
    if wanted.input is not None and len(wanted.input) > settings.serve_max_chars:
        raise ApiError(
            422,
            f"body field 'input': {len(wanted.input):,} characters; at most "
            f"{settings.serve_max_chars:,} (MODFACTORY_SERVE_MAX_CHARS)",
            field="input",
        )
    return wanted


async def feedback(request: Request) -> Response:
    """``POST /v1/feedback``: 202 with the correction's id (the first one's, for a retry)."""
    settings: Settings = request.app.state.settings
    caller = await require(request, Action.REVIEW)
    limit: RateLimit = request.app.state.feedback_rate
    if not await limit.allow(rate_key(caller)):
        raise ApiError(
            429,
            f"more than {settings.feedback_rate} corrections this minute from {caller.name} "
            "(MODFACTORY_FEEDBACK_RATE)",
            retry_after=60 - int(time.time()) % 60,
        )
    wanted = _parsed(request, await read_body(request, settings.serve_max_body, "SERVE"))
    producer: Producer = request.app.state.producer
    name = wanted.model or settings.model_name
    labels = await _labels(producer, name)
    for label in wanted.labels:
        if label not in labels:
            raise ApiError(
                422,
                f"body field 'labels.{label}': model {name!r} has no label {label!r} "
                f"(its labels: {', '.join(labels)})",
                field=f"labels.{label}",
            )
    flagged = [label for label, on in wanted.labels.items() if on]
    reviewer, by, shown = reviewer_of(caller, wanted.reviewer), actor_of(request, caller), {}
    if wanted.answer_id is not None:
        item_id = f"{wanted.answer_id}.{wanted.index}"
        done = await producer.answer_review(
            name, item_id, flagged, reviewer=reviewer, request_id=wanted.request_id, by=by
        )
        if done is None:
            raise ApiError(
                404,
                f"answer {wanted.answer_id} text {wanted.index} of model {name!r} is not kept: "
                "only texts sampled for review are (MODFACTORY_REVIEW_SAMPLE), until they are "
                "answered or MODFACTORY_REVIEW_MAX_AGE passes; send the text as 'input'",
            )
        (answered, feedback_id), stored = done, True
        shown = {"review": answered.kind}  # single, first (of two), agreed, disputed
    else:
        correction = Correction(
            model_name=name,
            text=wanted.input or "",
            labels=flagged,
            reviewer=reviewer,
            at=datetime.now(UTC),
            request_id=wanted.request_id,
        )
        feedback_id, stored = await producer.correct(correction, by=by)
    due = stored and settings.retrain_after_feedback
    return JSONResponse(
        {"id": feedback_id, "model": name, "stored": stored, **shown},
        status_code=202,
        background=BackgroundTask(_retrain_if_due, producer, name) if due else None,
    )


async def _retrain_if_due(producer: Producer, name: str) -> None:
    try:
        await retrain_if_due(producer, name)
    except Exception:  # the correction is stored; the worker's round looks again
        log.exception("feedback of %s: could not start a retrain", name)


async def _labels(producer: Producer, name: str) -> tuple[str, ...]:
    try:
        return await model_labels(producer, name)
    except UnknownModel as exc:
        raise ApiError(404, str(exc)) from None


async def review(request: Request) -> Response:
    """``GET /v1/review?model=NAME&limit=N``: up to N texts to review (default 10, at most
    100), most uncertain first, each leased to this caller for REVIEW_LEASE seconds —
    answer one with ``POST /v1/feedback`` and its ``answer_id`` and ``index``."""
    settings: Settings = request.app.state.settings
    caller = await require(request, Action.REVIEW)
    name = request.query_params.get("model") or settings.model_name
    if not re.fullmatch(r"[\w][\w.-]{0,199}", name):
        raise ApiError(422, f"query parameter 'model': {name[:80]!r} is not a model name")
    limit = request.query_params.get("limit", "10")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise ApiError(422, f"query parameter 'limit': {limit[:20]!r} is not a number in 1-100")
    producer: Producer = request.app.state.producer
    queue = producer.review_queue()
    items = await queue.lease(name, int(limit), REVIEW_LEASE, reviewer=caller.name)
    shown = []
    for item in items:
        answer_id, _, index = item.id.rpartition(".")
        shown.append({**item.model_dump(mode="json"), "answer_id": answer_id, "index": int(index)})
    waiting = await queue.size(name)
    return JSONResponse(
        {
            "model": name,
            "labels": list(await model_labels(producer, name)),
            "waiting": waiting,
            "items": shown,
        }
    )
