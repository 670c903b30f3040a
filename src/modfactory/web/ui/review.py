"""The review page of ``/ui``: the review queue one text at a time — the text, how the
champion scored it, a checkbox per label (checked as the champion flagged), submit and
next, or skip; keyboard: 1-9 toggle a label, Enter submits, s skips. A reviewer (or any
role above) may use it; each answer is a correction in the signed-in account's name, as
``POST /v1/feedback`` stores it. Also the reviewers' agreement and the disputes of double
review (MODFACTORY_REVIEW_OVERLAP), which an operator or admin settles."""

from __future__ import annotations

import re

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from modfactory.evaluation.agreement import MIN_OVERLAPS, reviewer_stats
from modfactory.producer import Producer
from modfactory.roles import Action
from modfactory.store.double_review import DisputeSettled, DoubleReviews
from modfactory.triggers.feedback import UnknownModel, model_labels, retrain_if_due
from modfactory.web.feedback_api import REVIEW_LEASE
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
    queue = producer.review_queue()
    items = await queue.lease(name, 1, REVIEW_LEASE, reviewer=session.name)
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
    queue = producer.review_queue()
    item = await queue.get(name, form.get("item", ""))
    back = RedirectResponse(request.url.path + f"?model={name}", 303, headers=page_headers())
    if item is None:
        return back  # answered by someone else meanwhile (its lease lapsed): the next one
    if form.get("skip"):
        await queue.release(name, item.id)
        return back
    labels = [label for label in await model_labels(producer, name) if form.get(f"label:{label}")]
    by = actor_of(request, session.caller)
    await producer.answer_review(name, item.id, labels, reviewer=session.name, by=by)
    if producer.settings.retrain_after_feedback:
        back.background = BackgroundTask(retrain_if_due, producer, name)
    return back


async def _model_and_labels(request: Request, session: Session) -> tuple[str, list[str]]:
    """The model name asked for and its labels; a 404 page for a name with no labels."""
    name = _model(request, session)
    try:
        return name, list(await model_labels(request.app.state.producer, name))
    except UnknownModel as exc:
        raise Refused(message(request, session, 404, "No such model", str(exc))) from None


@guarded
async def reviewers_page(request: Request) -> Response:
    """``GET /ui/reviewers?model=NAME``: per reviewer, texts answered and agreement."""
    session = await signed_in(request)
    producer: Producer = request.app.state.producer
    name, labels = await _model_and_labels(request, session)
    reviews = DoubleReviews(producer.redis, producer.settings.queue_name)
    stats = reviewer_stats(await reviews.pairs(name), await reviews.counts(name), labels)
    return render(
        request,
        "reviewers.html",
        session=session,
        title="Reviewers",
        page="reviewers",
        model=name,
        labels=labels,
        stats=stats,
        min_overlaps=MIN_OVERLAPS,
        overlap=producer.settings.review_overlap,
        open_disputes=sum(d.open for d in await reviews.disputes(name)),
    )


@guarded
async def disputes_page(request: Request) -> Response:
    """``GET /ui/disputes?model=NAME``: disputed texts, open ones first; an operator or
    admin settles each (the labels chosen become its training label)."""
    session = await signed_in(request)
    producer: Producer = request.app.state.producer
    name, labels = await _model_and_labels(request, session)
    disputes = await DoubleReviews(producer.redis, producer.settings.queue_name).disputes(name)
    return render(
        request,
        "disputes.html",
        session=session,
        title="Disputes",
        page="disputes",
        model=name,
        labels=labels,
        disputes=disputes[:200],
    )


@guarded
async def settle(request: Request) -> Response:
    """``POST /ui/disputes/{item}?model=NAME``: the labels checked settle the dispute."""
    session = await signed_in(request, Action.ADJUDICATE)
    form = await checked_form(request, session, session.csrf)
    producer: Producer = request.app.state.producer
    name = _model(request, session)
    labels = [label for label in await model_labels(producer, name) if form.get(f"label:{label}")]
    try:
        await producer.settle_dispute(
            name, request.path_params["item"], labels, by=actor_of(request, session.caller)
        )
    except DisputeSettled as exc:
        return message(request, session, 409, "Not done", str(exc))
    back = f"/ui/disputes?model={name}"
    return RedirectResponse(back, 303, headers=page_headers())
