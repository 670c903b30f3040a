"""Scheduled retrains (MODFACTORY_RETRAIN_CRON): each tick starts a run or records why not.

Every worker evaluates the schedule; arq's ``unique`` cron job id, plus a per-tick marker
here, make one decision per tick however many workers run. Decisions are kept in Redis
(``<prefix>:schedule``, newest first) for ``modfactory schedule`` and ``/metrics``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal

from arq.cron import CronJob
from pydantic import BaseModel
from redis.asyncio import Redis

from modfactory.crontab import parse_cron
from modfactory.data.recipe import RecipeError
from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.store import queue
from modfactory.store.audit import trigger
from modfactory.store.run import ActiveRunExists, RunNotFound, RunSpec

log = logging.getLogger("modfactory.triggers.schedule")
DECISIONS_KEPT = 200
CANDIDATES_CHECKED = 20  # the most recent candidates a tick compares its source with
JOB_NAME = "scheduled_retrain"


class Decision(BaseModel):
    """What one tick did."""

    at: datetime
    action: Literal["started", "skipped"]
    reason: str
    run_id: str | None = None
    tick: str | None = None  # the arq cron job id: one decision per tick
    trigger: Literal["cron", "feedback"] = "cron"  # the schedule, or corrections (``feedback``)


class ScheduleLog:
    """The recent decisions and a count per action."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}:schedule"
        self.counts_key = f"{prefix}:schedule-counts"
        self.tick_prefix = f"{prefix}:schedule-tick:"

    async def first_for_tick(self, tick: str) -> bool:
        """True for the first caller of ``tick`` (a second worker's duplicate gets False)."""
        return bool(await self.redis.set(self.tick_prefix + tick, 1, nx=True, ex=86_400))

    async def record(self, decision: Decision) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key, decision.model_dump_json())
            pipe.ltrim(self.key, 0, DECISIONS_KEPT - 1)
            pipe.hincrby(self.counts_key, decision.action, 1)
            await pipe.execute()

    async def recent(self, limit: int = 20) -> list[Decision]:
        return [
            Decision.model_validate_json(r) for r in await self.redis.lrange(self.key, 0, limit - 1)
        ]

    async def counts(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.counts_key)
        return {k.decode(): int(v) for k, v in raw.items()}


def _unchanged(spec: RunSpec, champion: RunSpec) -> bool:
    """Would this run train on what the champion trained on (source, recipe, backend…)?"""
    ignored = {"max_cost"}
    return spec.model_dump(exclude=ignored) == champion.model_dump(exclude=ignored)


async def decide_tick(producer: Producer) -> Decision:
    """Start a retrain of MODFACTORY_MODEL_NAME from the settings, or say why not."""
    model = producer.settings.model_name

    def skipped(reason: str) -> Decision:
        return Decision(at=datetime.now(UTC), action="skipped", reason=reason)

    active = await producer.active_run(model)
    if active is not None:
        return skipped(f"run {active.id} of model {model!r} is unfinished ({active.state})")
    try:
        spec = producer.spec()
    except (RecipeError, ValueError) as exc:
        return skipped(f"the settings do not make a run: {exc}")
    spec.source_fingerprint = await producer.source_fingerprint(spec.source, model)
    record = await producer.model(model)
    if record.champion is None:
        why = "no champion yet"
    elif spec.source_fingerprint is None:
        why = "the source's fingerprint is unknown"
    else:
        # Trained on this already? The champion, or a recent run kept as a candidate (else
        # a challenger that did not win would be trained again on every tick).
        trained = [(record.champion.run_id, "champion")]
        trained += [
            (run_id, "candidate") for run_id in list(record.candidates)[-CANDIDATES_CHECKED:]
        ]
        for run_id, role in trained:
            try:
                earlier = (await producer.run(run_id)).spec
            except RunNotFound:
                continue
            if _unchanged(spec, earlier):
                return skipped(
                    f"source and recipe unchanged since {role} {run_id} was trained on them "
                    f"({spec.source_fingerprint})"
                )
        why = f"source or recipe changed since champion {record.champion.run_id}"
    try:
        submission = await producer.submit(spec, by=trigger("cron"))
    except ActiveRunExists as exc:
        return skipped(f"run {exc.run.id} of model {model!r} is unfinished ({exc.run.state})")
    if not submission.created:
        return skipped(f"coalesced into unfinished run {submission.run.id}")
    return Decision(at=datetime.now(UTC), action="started", reason=why, run_id=submission.run.id)


async def scheduled_retrain(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """The arq cron job: one decision per tick, recorded and logged."""
    from modfactory.stages.context import StageContext

    sc = StageContext.of(ctx)
    schedule_log = ScheduleLog(sc.redis, sc.settings.queue_name)
    tick = str(ctx.get("job_id") or ctx["enqueue_time"])
    if not await schedule_log.first_for_tick(tick):
        return None
    decision = await decide_tick(Producer(sc.redis, sc.settings))
    decision.tick = tick
    await schedule_log.record(decision)
    log.info(
        "scheduled retrain %s: %s",
        decision.action,
        decision.reason,
        extra={"run_id": decision.run_id} if decision.run_id else None,
    )
    return decision.model_dump(mode="json")


def retrain_cron_jobs(settings: Settings) -> list[CronJob]:
    """The arq cron job of MODFACTORY_RETRAIN_CRON for a worker to run (none when unset)."""
    if not settings.retrain_cron:
        return []
    fields = parse_cron(settings.retrain_cron).arq_fields()
    return [queue.once_per_tick(scheduled_retrain, JOB_NAME, fields, settings.job_timeout, 3600)]
