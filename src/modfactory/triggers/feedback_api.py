"""``POST /v1/feedback``: a person's correction of what a model answered, kept as training
and test data for the model name's next run.

Body: ``{"model": <name>, "input": <text>, "labels": {<label>: true|false, ...},
"request_id": <the sender's id>, "reviewer": <who>}``; labels not named count as not
flagged, a label the model does not have is refused (422, naming it). Sent again with the
same ``request_id``, it is stored once and answered alike. Bearer MODFACTORY_REVIEW_TOKEN
(or MODFACTORY_WEBHOOK_TOKEN) — never the serve token (403): a scoring client must not be
able to write training data. Bounded as the serving endpoints are (MODFACTORY_SERVE_MAX_BODY,
MODFACTORY_SERVE_MAX_CHARS) and at MODFACTORY_FEEDBACK_RATE corrections per token and
minute (429). Answers 202 with the correction's id.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.store.feedback import Correction, FeedbackLog, RateLimit
from modfactory.triggers.auth import AuthError, check_bearer
from modfactory.triggers.errors import ApiError, field_error, read_body
from modfactory.triggers.feedback import model_labels, retrain_if_due

log = logging.getLogger("modfactory.triggers.feedback")


class FeedbackRequest(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, pattern=r"^[\w][\w.-]*$", max_length=200)
    input: str = Field(min_length=1)
    labels: dict[str, bool]
    request_id: str | None = Field(None, min_length=1, max_length=200)
    reviewer: str | None = Field(None, max_length=200)


def authenticate_reviewer(request: Request) -> str:
    """MODFACTORY_REVIEW_TOKEN or MODFACTORY_WEBHOOK_TOKEN as a bearer token (401), never
    MODFACTORY_SERVE_TOKEN (403); the caller's id for rate limits (a hash of its token)."""
    settings: Settings = request.app.state.settings
    authorization = request.headers.get("authorization", "")
    offered = authorization.partition(" ")[2].strip().encode()
    serve = settings.serve_token
    if serve is not None and hmac.compare_digest(offered, serve.get_secret_value().encode()):
        raise ApiError(
            403,
            "the serve token (MODFACTORY_SERVE_TOKEN) scores texts only; corrections take "
            "MODFACTORY_REVIEW_TOKEN",
        )
    tokens = {
        name: token
        for name, token in (
            ("MODFACTORY_REVIEW_TOKEN", settings.review_token),
            ("MODFACTORY_WEBHOOK_TOKEN", settings.webhook_token),
        )
        if token is not None
    }
    if not tokens:
        raise ApiError(401, "corrections take a bearer token: set MODFACTORY_REVIEW_TOKEN")
    try:
        check_bearer(tokens, authorization)
    except AuthError as exc:
        raise ApiError(401, str(exc)) from None
    return hashlib.sha256(offered).hexdigest()[:16]


def _parsed(request: Request, body: bytes) -> FeedbackRequest:
    settings: Settings = request.app.state.settings
    try:
        wanted = FeedbackRequest.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError(422, f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise field_error(exc) from None
    if len(wanted.input) > settings.serve_max_chars:
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
    caller = authenticate_reviewer(request)
    limit: RateLimit = request.app.state.feedback_rate
    if not await limit.allow(caller):
        raise ApiError(
            429,
            f"more than {settings.feedback_rate} corrections this minute from this token "
            "(MODFACTORY_FEEDBACK_RATE)",
            retry_after=60 - int(time.time()) % 60,
        )
    wanted = _parsed(request, await read_body(request, settings.serve_max_body, "SERVE"))
    producer: Producer = request.app.state.producer
    name = wanted.model or settings.model_name
    labels = await model_labels(producer, name)
    for label in wanted.labels:
        if label not in labels:
            raise ApiError(
                422,
                f"body field 'labels.{label}': model {name!r} has no label {label!r} "
                f"(its labels: {', '.join(labels)})",
                field=f"labels.{label}",
            )
    correction = Correction(
        model_name=name,
        text=wanted.input,
        labels=[label for label, flagged in wanted.labels.items() if flagged],
        reviewer=wanted.reviewer,
        at=datetime.now(UTC),
        request_id=wanted.request_id,
    )
    feedback_id, stored = await FeedbackLog(producer.redis, settings.queue_name).add(correction)
    due = stored and settings.retrain_after_feedback
    return JSONResponse(
        {"id": feedback_id, "model": name, "stored": stored},
        status_code=202,
        background=BackgroundTask(_retrain_if_due, producer, name) if due else None,
    )


async def _retrain_if_due(producer: Producer, name: str) -> None:
    try:
        await retrain_if_due(producer, name)
    except Exception:  # the correction is stored; the worker's round looks again
        log.exception("feedback of %s: could not start a retrain", name)
