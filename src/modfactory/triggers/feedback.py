"""Retrains started by corrections (MODFACTORY_RETRAIN_AFTER_FEEDBACK=N): once N corrections
of a model name arrived since its champion's data was built (and since the last run this
trigger started), a run of that name starts through the producer — the champion's own
source, recipe, backend and hyperparameters, or the settings' when there is no champion —,
one unfinished run per name as for every trigger. Looked at after every correction
(``POST /v1/feedback``, ``modfactory feedback import``) and, on one worker, every
MODFACTORY_RECONCILE_INTERVAL seconds (corrections that came while a run was unfinished).
Each start, and each run that held one back, is a decision in the schedule's log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from arq.cron import CronJob

from modfactory.data.recipe import RecipeError
from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.store import queue
from modfactory.store.audit import trigger
from modfactory.store.feedback import FeedbackLog
from modfactory.store.registry import RegistryError
from modfactory.store.run import ActiveRunExists, RunNotFound, RunSpec
from modfactory.triggers.schedule import Decision, ScheduleLog

log = logging.getLogger("modfactory.triggers.feedback")
JOB_NAME = "feedback_retrain"


async def corrections_since(producer: Producer, name: str) -> tuple[int, RunSpec | None]:
    """(corrections of ``name`` since its champion's data was built and since the last
    run this trigger started; the champion's spec, if there is one)."""
    prefix = producer.settings.queue_name
    total = await FeedbackLog(producer.redis, prefix).count(name)
    started_at = int(await producer.redis.get(f"{prefix}:feedback-retrained:{name}") or 0)
    used, spec = 0, None
    champion = (await producer.model(name)).champion
    if champion is not None:
        try:
            run = await producer.run(champion.run_id)
        except RunNotFound:
            run = None
        if run is not None:
            spec = run.spec
            feedback = run.dataset.feedback if run.dataset else None
            used = feedback.upto_seq if feedback else 0
    return total - max(used, started_at), spec


class UnknownModel(RegistryError):
    """Corrections of a model name that has no champion (and is not the settings' own)."""


async def model_labels(producer: Producer, name: str) -> tuple[str, ...]:
    """The labels a correction of ``name`` may name: those its champion's recipe asks for
    (the settings' for MODFACTORY_MODEL_NAME before its first champion). UnknownModel for
    any other name without a champion: corrections never make up a model name."""
    champion = (await producer.model(name)).champion
    if champion is not None:
        try:
            return (await producer.run(champion.run_id)).spec.recipe.label_columns
        except RunNotFound:
            pass
    if name != producer.settings.model_name:
        raise UnknownModel(
            f"model {name!r} has no champion: corrections are for a model that exists "
            f"(or for MODFACTORY_MODEL_NAME={producer.settings.model_name!r})"
        )
    return producer.settings.label_columns


async def retrain_if_due(producer: Producer, name: str) -> Decision | None:
    """Start a run of ``name`` if enough corrections came (recorded and logged); None when
    not due, or when a skip for the same unfinished run was recorded already."""
    due = producer.settings.retrain_after_feedback
    if not due:
        return None
    since, spec = await corrections_since(producer, name)
    if since < due:
        return None
    why = f"{since} corrections of {name!r} (MODFACTORY_RETRAIN_AFTER_FEEDBACK={due})"
    prefix, redis = producer.settings.queue_name, producer.redis
    active = await producer.active_run(name)  # the cheap answer, while a run is under way
    try:
        if active is not None:
            raise ActiveRunExists(active)
        wanted = spec.model_copy(update={"source_fingerprint": None}) if spec else None
        wanted = wanted or producer.spec(model_name=name)
        submission = await producer.submit(wanted, by=trigger("corrections"))
    except ActiveRunExists as exc:
        held_back = f"{prefix}:feedback-skip:{name}:{exc.run.id}"
        if not await redis.set(held_back, 1, nx=True, ex=86_400):
            return None  # recorded once per unfinished run
        decision = _decision("skipped", f"{why}; run {exc.run.id} is unfinished ({exc.run.state})")
    except (RecipeError, ValueError) as exc:
        decision = _decision("skipped", f"{why}; the settings do not make a run: {exc}")
    else:
        run = submission.run
        if not submission.created:
            decision = _decision("skipped", f"{why}; coalesced into unfinished run {run.id}")
        else:
            total = await FeedbackLog(redis, prefix).count(name)
            await redis.set(f"{prefix}:feedback-retrained:{name}", total)
            decision = _decision("started", why, run.id)
    await ScheduleLog(redis, prefix).record(decision)
    log.info(
        "feedback retrain %s: %s",
        decision.action,
        decision.reason,
        extra={"run_id": decision.run_id} if decision.run_id else None,
    )
    return decision


def _decision(action: Any, reason: str, run_id: str | None = None) -> Decision:
    return Decision(
        at=datetime.now(UTC), action=action, reason=reason, run_id=run_id, trigger="feedback"
    )


async def feedback_retrain(ctx: dict[str, Any]) -> None:
    """The arq cron job: every model name with corrections, looked at once per tick."""
    from modfactory.stages.context import StageContext

    sc = StageContext.of(ctx)
    producer = Producer(sc.redis, sc.settings)
    for name in await FeedbackLog(sc.redis, sc.settings.queue_name).model_names():
        await retrain_if_due(producer, name)


def feedback_cron_jobs(settings: Settings) -> list[CronJob]:
    """The cron job that looks for due retrains (none without MODFACTORY_RETRAIN_AFTER_FEEDBACK)."""
    if not settings.retrain_after_feedback:
        return []
    every = queue.every(settings.reconcile_interval)
    return [
        queue.once_per_tick(
            feedback_retrain, JOB_NAME, every, settings.job_timeout, settings.reconcile_interval
        )
    ]
