"""The review page of ``/ui``: the review queue one text at a time — the text, how the
champion scored it, a checkbox per label (checked as the champion flagged), submit and
next, or skip; keyboard: 1-9 toggle a label, Enter submits, s skips. A reviewer (or any
role above) may use it; each answer is a correction in the signed-in account's name, as
``POST /v1/feedback`` stores it."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from modfactory.producer import Producer
from modfactory.roles import Action
from modfactory.store.feedback import Correction
from modfactory.triggers.feedback import UnknownModel, model_labels, retrain_if_due
from modfactory.web.feedback_api import REVIEW_LEASE, review_queue
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


def _model(request: Request, session: Session) -> str:
    """The model name asked for (the settings' by default); a malformed one is refused."""
    name = request.query_params.get("model") or request.app.state.settings.model_name
    if not re.fullmatch(r"[\w][\w.-]{0,199}", name):
        raise Refused(message(request, session, 404, "No such model", "not a model name"))
    return name


@guarded
async def review_page(request: Request) -> Response:
    """``GET /ui/review?model=NAME``: the next text no one else holds, leased to this page."""
    session = await signed_in(request, Action.REVIEW)
    producer: Producer = request.app.state.producer
    name = _model(request, session)
    try:
        labels = list(await model_labels(producer, name))
    except UnknownModel as exc:
        return message(request, session, 404, "No such model", str(exc))
    queue = review_queue(producer.redis, producer.settings)
    items = await queue.lease(name, 1, REVIEW_LEASE)
    return render(
        request,
        "review.html",
        session=session,
        title="Review",
        page="review",
        model=name,
        labels=labels,
        item=items[0] if items else None,
        waiting=await queue.size(name),
    )


@guarded
async def review_answer(request: Request) -> Response:
    """``POST /ui/review?model=NAME``: the labels checked (or a skip), then the next text."""
    session = await signed_in(request, Action.REVIEW)
    form = await checked_form(request, session, session.csrf)
    producer: Producer = request.app.state.producer
    name = _model(request, session)
    queue = review_queue(producer.redis, producer.settings)
    item = await queue.get(name, form.get("item", ""))
    back = RedirectResponse(request.url.path + f"?model={name}", 303, headers=page_headers())
    if item is None:
        return back  # answered by someone else meanwhile (its lease lapsed): the next one
    if form.get("skip"):
        await queue.release(name, item.id)
        return back
    labels = [label for label in await model_labels(producer, name) if form.get(f"label:{label}")]
    correction = Correction(
        model_name=name,
        text=item.text,
        labels=labels,
        reviewer=session.name,
        at=datetime.now(UTC),
        request_id=f"review:{item.id}",
        via="review",
    )
    await producer.correct(correction, by=actor_of(request, session.caller), answer=True)
    await queue.remove(name, item.id)
    if producer.settings.retrain_after_feedback:
        back.background = BackgroundTask(retrain_if_due, producer, name)
    return back
