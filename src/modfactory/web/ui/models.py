"""The models page of ``/ui``: per model name the champion, the candidates and why they
were not promoted, earlier champions, shadow agreement and drift; promote a candidate and
roll back, each after a page that says what will change. And the schedule page: the
cron's next ticks and the recent decisions (the cron's and the corrections')."""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from modfactory.producer import Producer
from modfactory.roles import Action
from modfactory.store.registry import RegistryError
from modfactory.store.run import RunNotFound, RunStateError
from modfactory.web.identity import actor_of
from modfactory.web.ui.pages import (
    checked_form,
    guarded,
    message,
    page_headers,
    render,
    signed_in,
)


@guarded
async def models_page(request: Request) -> Response:
    """``GET /ui/models``."""
    session = await signed_in(request)
    producer: Producer = request.app.state.producer
    drifts = {d.model_name: d for d in await producer.drifts()}
    shadows = await producer.shadows()
    models = [
        {
            "record": record,
            "drift": drifts.get(record.name),
            "shadows": [t for t in shadows if t.model_name == record.name],
        }
        for record in await producer.models()
    ]
    return render(
        request, "models.html", session=session, title="Models", page="models", models=models
    )


@guarded
async def schedule_page(request: Request) -> Response:
    """``GET /ui/schedule``."""
    from datetime import datetime

    from modfactory.crontab import parse_cron
    from modfactory.triggers.schedule import ScheduleLog

    session = await signed_in(request)
    producer: Producer = request.app.state.producer
    cron = producer.settings.retrain_cron
    upcoming = parse_cron(cron).next_times(datetime.now().astimezone(), 5) if cron else []
    decisions = await ScheduleLog(producer.redis, producer.settings.queue_name).recent(30)
    return render(
        request,
        "schedule.html",
        session=session,
        title="Schedule",
        page="schedule",
        cron=cron,
        upcoming=upcoming,
        decisions=decisions,
        after_feedback=producer.settings.retrain_after_feedback,
    )


async def _change(request: Request) -> tuple[str, str, str | None]:
    """(model name, what, run id): what the confirmation page and the change are about."""
    name = request.path_params["name"]
    what = request.path_params["what"]
    run_id = request.query_params.get("run") or None
    return name, what, run_id


async def _what_changes(
    producer: Producer, name: str, what: str, run_id: str | None
) -> tuple[str, bool] | tuple[int, str, str]:
    """(what will change, in words; whether a promotion must be forced), or a refusal's
    (status, title, message)."""
    record = await producer.model(name)
    champion = record.champion.run_id if record.champion else "nobody"
    if what == "rollback":
        if not record.history:
            return 409, "Nothing to roll back to", f"{name!r} has no earlier champion"
        return (
            f"{record.history[-1].run_id} becomes the champion of {name} again; {champion} "
            "becomes a candidate. Every serve process answers with it within a second.",
            False,
        )
    if what != "promote" or not run_id:
        return 404, "No such change", f"{what!r}"
    try:
        run = await producer.run(run_id)
    except RunNotFound as exc:
        return 404, "No such run", str(exc)
    decision = run.metrics.promotion if run.metrics else None
    force = not (decision and decision.promoted)
    why = decision.reason if decision else "not compared"
    change = (
        f"{run_id} replaces {champion} as the champion of {name}; every serve process answers "
        "with it within a second."
    )
    return change + (f" It did not beat the champion ({why}): promoted anyway." * force), force


@guarded
async def confirm_page(request: Request) -> Response:
    """``GET /ui/models/{name}/promote?run=ID`` or ``…/rollback``: what will change."""
    session = await signed_in(request, Action.PROMOTE)
    name, what, run_id = await _change(request)
    found = await _what_changes(request.app.state.producer, name, what, run_id)
    if len(found) == 3:
        return message(request, session, *found)
    change, force = found
    return render(
        request,
        "confirm.html",
        session=session,
        title="Confirm",
        page="models",
        change=change,
        action=f"/ui/models/{quote(name)}/{what}" + (f"?run={quote(run_id)}" if run_id else ""),
        force=force,
    )


@guarded
async def change_model(request: Request) -> Response:
    """``POST /ui/models/{name}/promote?run=ID`` or ``…/rollback``: done, back to the models."""
    session = await signed_in(request, Action.PROMOTE)
    form = await checked_form(request, session, session.csrf)
    name, what, run_id = await _change(request)
    producer: Producer = request.app.state.producer
    by = actor_of(request, session.caller)
    try:
        if what == "rollback":
            await producer.rollback(name, by=by)
        elif what == "promote" and run_id:
            await producer.promote(run_id, force=form.get("force") == "1", by=by)
        else:
            return message(request, session, 404, "No such change", f"{what!r}")
    except (RegistryError, RunStateError, RunNotFound) as exc:
        return message(request, session, 409, "Not done", str(exc))
    return RedirectResponse("/ui/models", 303, headers=page_headers())
