"""The moderation service: ``POST /v1/moderations`` and ``POST /v1/classifications`` in
the shape of Mistral's API, answered by the current champion of the model name asked for.

A request is ``{"model": <model name>, "input": <text or list of texts>}`` (``model``
defaults to MODFACTORY_MODEL_NAME), with a bearer token (MODFACTORY_SERVE_TOKEN, or
MODFACTORY_WEBHOOK_TOKEN). Moderations answer per text ``categories`` (label -> flagged,
at the thresholds tuned on validation, or 0.5: MODFACTORY_SERVE_THRESHOLDS) and
``category_scores`` over the moderation labels; classifications answer the classifier's
own output, ``{<target>: {"scores": {...}}}`` (with ``safe``, when it has that label).
Each moderation result also says ``flagged`` (any label flagged), so that OpenAI's SDK —
``OpenAI(base_url="http://host:8080/v1", api_key=<serve token>)`` — reads the answer as its
``ModerationCreateResponse``; Mistral's SDK ignores the field. With
MODFACTORY_REVIEW_SAMPLE, a sample of the texts joins the review queue unless the request
says ``"store": false`` (``serving.review``). Every
answer names the champion that gave it: the ``champion`` field and the
``X-Modfactory-Champion-Run`` / ``X-Modfactory-Model-Id`` headers. An application written
against Mistral's SDK works unchanged with ``server_url`` pointed here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modfactory.backends import BackendError, BackendUnavailable
from modfactory.serving.champions import ChampionServer, NoChampion, ServedModel
from modfactory.serving.meter import ServeMeter
from modfactory.settings import Settings
from modfactory.web.errors import ApiError, field_error
from modfactory.web.identity import scoring_caller
from modfactory.web.request_body import read_body

Endpoint = Literal["moderations", "classifications"]


class ClassificationRequest(BaseModel):
    """Mistral's ``ClassificationRequest``: ``model``, ``input``, optional ``metadata``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, pattern=r"^[\w.:-]+$", max_length=200)
    input: str | list[str]
    metadata: dict[str, Any] | None = None
    store: bool = True  # false: the texts are never kept for review (Perspective's doNotStore)


def _texts(request: Request, body: bytes) -> tuple[ClassificationRequest, list[str]]:
    """The request and its texts; 422 naming the field or the limit at fault."""
    settings: Settings = request.app.state.settings
    try:
        asked = ClassificationRequest.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise ApiError(422, f"body is not valid JSON: {exc.errors()[0]['msg']}") from None
        raise field_error(exc) from None
    texts = [asked.input] if isinstance(asked.input, str) else asked.input
    if not texts:
        raise ApiError(422, "body field 'input': give at least one text", field="input")
    if len(texts) > settings.serve_max_inputs:
        raise ApiError(
            422,
            f"body field 'input': {len(texts):,} texts; at most {settings.serve_max_inputs:,} "
            "per request (MODFACTORY_SERVE_MAX_INPUTS)",
            field="input",
        )
    for i, text in enumerate(texts):
        if len(text) > settings.serve_max_chars:
            raise ApiError(
                422,
                f"body field 'input.{i}': {len(text):,} characters; at most "
                f"{settings.serve_max_chars:,} (MODFACTORY_SERVE_MAX_CHARS)",
                field=f"input.{i}",
            )
    return asked, texts


async def _champion(request: Request, name: str | None) -> ServedModel:
    settings: Settings = request.app.state.settings
    champions: ChampionServer = request.app.state.champions
    name = name or settings.model_name
    try:
        return await champions.champion(name)
    except NoChampion as exc:
        raise ApiError(404, str(exc)) from None
    except BackendError as exc:  # e.g. a local model's file gone from the data volume
        raise ApiError(503, f"the champion of {name!r} cannot be loaded: {exc}") from None


def _metered(
    endpoint: Endpoint,
) -> Callable[[Callable[[Request], Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """Count the answer (by status) and its latency in the serving meter."""

    def wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[..., Any]:
        async def metered(request: Request) -> Response:
            meter: ServeMeter = request.app.state.serve_meter
            started, status = time.perf_counter(), 500
            try:
                response = await handler(request)
                status = response.status_code
                return response
            except ApiError as exc:
                status = exc.status
                raise
            except (RedisError, ConnectionError):
                status = 503  # what the error handler answers
                raise
            finally:
                meter.requests.labels(endpoint, str(status)).inc()
                meter.latency.labels(endpoint).observe(time.perf_counter() - started)

        metered.__doc__ = handler.__doc__
        return metered

    return wrap


Scored = tuple[ServedModel, list[dict[str, float]], dict[str, Any]]


async def _scored(request: Request, prefix: str) -> Scored:
    """Authenticate, read the texts, score them with the champion: (champion, scores per
    text, the answer's common fields)."""
    await scoring_caller(request)
    settings: Settings = request.app.state.settings
    asked, texts = _texts(request, await read_body(request, settings.serve_max_body, "SERVE"))
    champion = await _champion(request, asked.model)
    try:
        scores = await champion.scores(texts)
    except BackendUnavailable as exc:
        raise ApiError(503, f"the {champion.backend} backend is unreachable: {exc}") from None
    except BackendError as exc:
        raise ApiError(502, f"the {champion.backend} backend failed: {exc}") from None
    meter: ServeMeter = request.app.state.serve_meter
    meter.serving(champion.model_name, champion.run_id, champion.model_id)
    flags = [champion.moderation(s)[0] for s in scores]
    meter.scored(champion.model_name, flags)
    request.app.state.shadow.observe(champion, texts, flags)
    request.app.state.drift.observe(champion, scores, flags)
    answer_id = f"{prefix}-{uuid.uuid4().hex}"
    if asked.store:
        request.app.state.review.offer(champion, answer_id, texts, scores, flags)
    answer = {
        "id": answer_id,
        "model": champion.model_name,
        "champion": {"run_id": champion.run_id, "model_id": champion.model_id},
    }
    return champion, scores, answer


def _answer(champion: ServedModel, body: dict[str, Any]) -> Response:
    headers = {
        "X-Modfactory-Champion-Run": champion.run_id,
        "X-Modfactory-Model-Id": champion.model_id,
    }
    return JSONResponse(body, headers=headers)


@_metered("moderations")
async def moderations(request: Request) -> Response:
    """``POST /v1/moderations``: per text, each label's score and whether it is flagged, and
    ``flagged``: whether any label is (what OpenAI's moderation answers carry too)."""
    champion, scores, answer = await _scored(request, "mod")
    results = []
    for text_scores in scores:
        categories, category_scores = champion.moderation(text_scores)
        flagged = any(categories.values())
        results.append(
            {"flagged": flagged, "categories": categories, "category_scores": category_scores}
        )
    answer["results"] = results
    return _answer(champion, answer)


@_metered("classifications")
async def classifications(request: Request) -> Response:
    """``POST /v1/classifications``: per text, the classifier target's label scores."""
    champion, scores, answer = await _scored(request, "cls")
    answer["results"] = [{champion.target: {"scores": s}} for s in scores]
    return _answer(champion, answer)
