"""Where runs begin and what people do to them: create and queue a run — the CLI, the
webhook and the cron schedule all come through here, so one unfinished run per model name
holds for all of them —, queue one stage again, approve, cancel, promote, roll back,
prune, correct; start or cancel a scoring job over an archive. Each change is recorded in
the audit trail with who did it (``by``: else the producer's own actor,
``cli:<user>@<host>`` for a command run by hand). Each next stage is queued by the one
before (``stages.pipeline``) or, when that was lost, by the reconciler."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio.client import Pipeline

from modfactory.artifacts import ArtifactStore
from modfactory.backends import get_backend, job_data
from modfactory.data.archive import SYNTHETIC_ARCHIVE, open_archive
from modfactory.data.exports import check_output
from modfactory.data.sources import fingerprint, parse_source
from modfactory.evaluation.drift import Drift, champion_drifts
from modfactory.settings import Settings
from modfactory.stages.context import StageContext, cancel_remote_job
from modfactory.store import queue
from modfactory.store.audit import Actor, AuditAction, AuditLog, process_actor
from modfactory.store.double_review import Dispute, DoubleReviews, Pair
from modfactory.store.feedback import Correction, FeedbackLog
from modfactory.store.registry import ModelRecord, ModelRegistry
from modfactory.store.retention import prune_runs
from modfactory.store.review import Answered, ReviewQueue
from modfactory.store.run import STAGES, ActiveRunExists, Run, RunSpec, RunState, RunStateError
from modfactory.store.runs import RunStore
from modfactory.store.score_job import ScoreJob, ScoreSpec
from modfactory.store.score_jobs import ScoreJobStore, scoring_model
from modfactory.store.shadow import ShadowLog, ShadowTally
from modfactory.values import RecipeParams


@dataclass(frozen=True)
class Submission:
    """What a trigger got: a new run, or (coalescing) the model's unfinished run."""

    run: Run
    created: bool


class Producer:
    """Creates runs in the run store and puts their jobs on the arq queue."""

    def __init__(self, redis: ArqRedis, settings: Settings, actor: Actor | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.store = RunStore(redis, settings.queue_name)
        self.registry = ModelRegistry(redis, settings.queue_name)
        self.audit = AuditLog(redis, settings.queue_name)
        self.actor = actor or process_actor()

    async def record(
        self, action: AuditAction, target: str, detail: str = "", *, by: Actor | None = None
    ) -> None:
        """Append a change made elsewhere (an account's, an import's) to the audit trail."""
        await self.audit.record(by or self.actor, action, target, detail)

    # --- reads ----------------------------------------------------------------------------
    async def run(self, run_id: str) -> Run:
        """One run (RunNotFound if there is none)."""
        return await self.store.get(run_id)

    async def runs(self, limit: int = 50) -> list[Run]:
        """The newest runs first."""
        return await self.store.list(limit)

    async def active_run(self, model_name: str) -> Run | None:
        """The unfinished run of ``model_name``, if there is one."""
        return await self.store.active_run(model_name)

    async def model(self, name: str) -> ModelRecord:
        """``name``'s record (empty if it has none yet)."""
        return await self.registry.get(name)

    async def models(self) -> list[ModelRecord]:
        """Every model name's record: champion, earlier champions, candidates."""
        return [await self.registry.get(name) for name in await self.registry.names()]

    async def shadows(self) -> list[ShadowTally]:
        """How candidates shadowing their champion on served traffic agreed with it."""
        return await ShadowLog(self.redis, self.settings.queue_name).tallies()

    async def drifts(self) -> list[Drift]:
        """How each champion's served scores moved since its first window of serving."""
        s = self.settings
        return await champion_drifts(self.redis, s.queue_name, s.drift_window, s.drift_alert)

    # --- changes ----------------------------------------------------------------------------
    def spec(
        self,
        *,
        source: str | None = None,
        backend: str | None = None,
        hyperparameters: dict[str, float | int] | None = None,
        model_name: str | None = None,
        **recipe: Any,
    ) -> RunSpec:
        """A validated run spec: settings, then these overrides. Fails before anything is queued."""
        name = backend or self.settings.default_backend
        parsed = parse_source(source or self.settings.source)
        return RunSpec(
            source=str(parsed) if parsed.kind != "dir" else parsed.location,
            backend=name,
            recipe=RecipeParams.from_settings(self.settings, **recipe),
            hyperparameters=get_backend(name, self.settings).hyperparameters(hyperparameters or {}),
            model_name=model_name or self.settings.model_name,
            max_cost=self.settings.max_cost,
        )

    async def submit(self, spec: RunSpec, *, by: Actor | None = None) -> Submission:
        """Create the run and queue its first stage, unless its model name has an unfinished
        run: then ActiveRunExists, or that run with MODFACTORY_ACTIVE_RUN_POLICY=coalesce."""
        active = await self.store.active_run(spec.model_name)  # cheap early answer
        if active is None:
            if spec.source_fingerprint is None:
                fingerprint = await self.source_fingerprint(spec.source, spec.model_name)
                spec = spec.model_copy(update={"source_fingerprint": fingerprint})
            try:
                run = await self.store.create(spec)  # the atomic check
            except ActiveRunExists as exc:
                active = exc.run
            else:
                await queue.enqueue_stage(self.redis, self.settings.queue_name, "build", run.id)
                detail = f"{spec.model_name}: source {spec.source}, backend {spec.backend}"
                await self.record(AuditAction.RUN_START, run.id, detail, by=by)
                return Submission(run, created=True)
        if self.settings.active_run_policy == "coalesce":
            return Submission(active, created=False)
        raise ActiveRunExists(active)

    async def source_fingerprint(self, source: str, model_name: str | None = None) -> str | None:
        """The source's current fingerprint (see ``sources.fingerprint``), and how many
        corrections ``model_name`` has (a new one is a change the schedule sees)."""
        cache = self.settings.data_dir / "cache"
        found = await asyncio.to_thread(fingerprint, parse_source(source), cache)
        if found is not None and model_name:
            corrections = await FeedbackLog(self.redis, self.settings.queue_name).count(model_name)
            found += f"+feedback:{corrections}" if corrections else ""
        return found

    async def enqueue(self, stage: str, run_id: str, *, by: Actor | None = None) -> Run:
        """Queue one stage of an existing run again (a failed stage is reset to pending)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        run = await self.store.reopen_stage(run_id, stage)
        await queue.enqueue_stage(self.redis, self.settings.queue_name, stage, run_id)
        await self.record(AuditAction.RUN_RETRY, run_id, f"stage {stage}", by=by)
        return run

    async def retry(self, run_id: str, *, by: Actor | None = None) -> Run:
        """Queue a run's failed stage again, the run going on from it (else RunStateError)."""
        run = await self.store.get(run_id)
        failed = next((s for s in STAGES if run.stages[s].state == "failed"), None)
        if failed is None:
            raise RunStateError(f"run {run_id} has no failed stage to queue again")
        return await self.enqueue(failed, run_id, by=by)

    async def approve(self, run_id: str, *, by: Actor | None = None) -> Run:
        """Approve the quoted cost of a run awaiting approval; its training job starts."""
        run = await self.store.approve(run_id)
        await queue.enqueue_poll(
            self.redis, self.settings.queue_name, run_id, run.training.poll_seq, 0
        )
        cost = run.training.metadata.get("cost")
        await self.record(AuditAction.RUN_APPROVE, run_id, f"quoted cost {cost}", by=by)
        return run

    async def cancel(self, run_id: str, *, by: Actor | None = None) -> Run:
        """Cancel a run, then its training job at the backend if one may be running (if
        the backend cannot be reached now, the reconciler cancels the job later)."""
        who = (by or self.actor).name
        await self.store.cancel(run_id, f"cancelled by {who}")
        await self.record(AuditAction.RUN_CANCEL, run_id, by=by)
        context = StageContext(self.settings, self.store, self.redis)
        try:
            await cancel_remote_job(context, run_id)
        finally:
            await context.close()
        return await self.store.get(run_id)

    # --- scoring jobs: a model applied to an archive ---------------------------------------
    @property
    def scores(self) -> ScoreJobStore:
        return ScoreJobStore(self.redis, self.settings.queue_name)

    async def score_spec(
        self,
        source: str,
        *,
        model_name: str | None = None,
        run_id: str | None = None,
        text_column: str | None = None,
        id_column: str | None = None,
        **options: Any,
    ) -> ScoreSpec:
        """A validated scoring spec: the model (``run_id``'s, else ``model_name``'s
        champion), the source's columns and the output checked before anything is queued
        (RunStateError or RecipeError naming what is wrong)."""
        name = model_name or self.settings.model_name
        run, model_id = await scoring_model(self.store, self.registry, name, run_id)
        column = text_column or self.settings.text_column
        if not SYNTHETIC_ARCHIVE.match(source.strip()):
            data_dir = self.settings.data_dir
            await asyncio.to_thread(open_archive, source, column, id_column, data_dir)
        if options.get("output"):
            await asyncio.to_thread(check_output, options["output"])
        return ScoreSpec(
            source=source.strip(),
            text_column=column,
            id_column=id_column or None,
            model_name=run.spec.model_name,
            run_id=run.id,
            model_id=model_id,
            backend=run.spec.backend,
            thresholds=self.settings.serve_thresholds,
            shard_rows=self.settings.score_shard_rows,
            max_cost=self.settings.max_cost,
            **options,
        )

    async def submit_score(self, spec: ScoreSpec, *, by: Actor | None = None) -> ScoreJob:
        """Create a scoring job and queue its plan."""
        job = await self.scores.create(spec)
        await queue.enqueue_score_plan(self.redis, self.settings.queue_name, job.id)
        detail = f"{spec.source} scored by {spec.model_name} ({spec.run_id})"
        await self.record(AuditAction.SCORE_START, job.id, detail, by=by)
        return job

    async def approve_score(self, score_id: str, *, by: Actor | None = None) -> ScoreJob:
        """Approve a scoring job's quoted cost; its shards are sent (else ScoreJobStateError)."""
        job = await self.scores.approve(score_id)
        await queue.enqueue_score_plan(self.redis, self.settings.queue_name, job.id)
        quote = f"quoted {job.quote.cost:g} {job.quote.currency}" if job.quote else ""
        await self.record(AuditAction.SCORE_APPROVE, score_id, quote, by=by)
        return job

    async def cancel_score(self, score_id: str, *, by: Actor | None = None) -> ScoreJob:
        """Cancel a scoring job (parts done are kept; batch jobs cancelled at their next look)."""
        job = await self.scores.cancel(score_id, f"cancelled by {(by or self.actor).name}")
        await self.record(AuditAction.SCORE_CANCEL, score_id, by=by)
        return job

    async def promote(
        self, run_id: str, force: bool = False, *, by: Actor | None = None
    ) -> ModelRecord:
        """Make a finished run's model the champion: if it beat the champion it was
        measured against, and that is still the champion (or there was none), or with
        ``force``. Checked in the transaction that promotes it."""
        run = await self.store.get(run_id)
        if run.state != RunState.SUCCEEDED or not run.artifacts.model_id:
            raise RunStateError(f"run {run_id} is {run.state}; only a succeeded run has a model")
        decision = run.metrics.promotion if run.metrics else None
        if not force and not (decision and decision.promoted):
            why = decision.reason if decision else "not compared"
            raise RunStateError(
                f"run {run_id} did not beat the champion ({why}); use --force to promote it anyway"
            )

        async def still_valid(pipe: Pipeline, champion_before: str | None) -> None:
            await self.store.watch_succeeded(pipe, run_id)
            measured = decision.champion_run if decision else None
            if not force and champion_before not in (measured, run_id):
                raise RunStateError(
                    f"run {run_id} was measured against champion {measured}, but the champion "
                    f"is now {champion_before}; use --force to promote it anyway"
                )

        who = (by or self.actor).name
        reason = f"promoted by {who}" + (" (forced)" if force else "")
        record = await self.registry.promote(
            run.spec.model_name, run_id, run.artifacts.model_id, reason, guard=still_valid
        )
        detail = f"{run.spec.model_name}" + (" (forced)" if force else "")
        await self.record(AuditAction.MODEL_PROMOTE, run_id, detail, by=by)
        return record

    async def prune(self, dry_run: bool = False) -> list[str]:
        """Delete the finished runs beyond MODFACTORY_KEEP_RUNS / MODFACTORY_KEEP_DAYS —
        document, index entries, run directory, the backend's files for its training job —
        except champions and the runs a rollback needs; returns their ids (with
        ``dry_run``: what would go)."""
        return await prune_runs(
            self.store,
            self.registry,
            self.settings,
            ArtifactStore.from_settings(self.settings),
            functools.partial(job_data, self.settings),
            dry_run=dry_run,
        )

    async def rollback(
        self, model_name: str | None = None, *, by: Actor | None = None
    ) -> ModelRecord:
        """Restore the previous champion of ``model_name`` (default: MODFACTORY_MODEL_NAME)."""
        name = model_name or self.settings.model_name
        record = await self.registry.rollback(name)
        champion = record.champion.run_id if record.champion else "nobody"
        await self.record(AuditAction.MODEL_ROLLBACK, name, f"champion again: {champion}", by=by)
        return record

    def review_queue(self) -> ReviewQueue:
        s = self.settings
        return ReviewQueue(
            self.redis, s.queue_name, s.review_queue_max, s.review_max_age, s.review_overlap
        )

    async def answer_review(
        self,
        name: str,
        item_id: str,
        labels: list[str],
        *,
        reviewer: str,
        request_id: str | None = None,
        by: Actor | None = None,
    ) -> tuple[Answered, str] | None:
        """``reviewer``'s labels for a text of the review queue: stored as a correction
        (None: the item is gone — answered meanwhile, or too old). A text for two people is
        held out of training from its first answer; the second either agrees (the hold is
        lifted) or disputes it (the text waits for an operator to settle it)."""
        answered = await self.review_queue().answer(name, item_id, reviewer, labels)
        if answered is None:
            return None
        reviews, text = DoubleReviews(self.redis, self.settings.queue_name), answered.item.text
        if answered.kind == "first":
            await reviews.hold(name, text)  # before the correction: no build takes it alone
        correction = Correction(
            model_name=name,
            text=text,
            labels=labels,
            reviewer=reviewer,
            at=datetime.now(UTC),
            request_id=request_id or f"review:{item_id}:{reviewer}",
            via="review",
        )
        found, _ = await self.correct(correction, by=by, answer=True)
        await reviews.answered(name, reviewer)
        if answered.other is not None:
            both = Pair(
                item_id=item_id,
                first=answered.other,
                first_labels=list(answered.their),
                second=reviewer,
                second_labels=sorted(labels),
            )
            await reviews.pair(name, both)
        if answered.kind == "agreed":
            await reviews.release(name, text)
        elif answered.kind == "disputed":
            answers = {answered.other or "": list(answered.their), reviewer: sorted(labels)}
            await reviews.dispute(
                Dispute(item_id=item_id, model_name=name, text=text, answers=answers)
            )
        return answered, found

    async def settle_dispute(
        self, name: str, item_id: str, labels: list[str], *, by: Actor | None = None
    ) -> Dispute:
        """Settle a disputed text: ``labels`` become its correction (the training label),
        and it is no longer held out (DisputeSettled if it is not open)."""
        who = by or self.actor
        reviews = DoubleReviews(self.redis, self.settings.queue_name)
        dispute = await reviews.settle(name, item_id, who.name, labels)
        correction = Correction(
            model_name=name,
            text=dispute.text,
            labels=sorted(labels),
            reviewer=who.name,
            at=datetime.now(UTC),
            request_id=f"adjudication:{item_id}",
            via="adjudication",
        )
        await FeedbackLog(self.redis, self.settings.queue_name).add(correction)
        await reviews.release(name, dispute.text)
        flagged = ", ".join(sorted(labels)) or "none flagged"
        await self.record(AuditAction.ADJUDICATION, item_id, f"{name}: {flagged}", by=by)
        return dispute

    async def correct(
        self, correction: Correction, *, by: Actor | None = None, answer: bool = False
    ) -> tuple[str, bool]:
        """Store a moderator's correction (once per request id): (its id, whether it was new);
        ``answer``: it answers a text of the review queue."""
        feedback = FeedbackLog(self.redis, self.settings.queue_name)
        found, stored = await feedback.add(correction)
        if stored:
            action = AuditAction.REVIEW_ANSWER if answer else AuditAction.CORRECTION
            flagged = ", ".join(correction.labels) or "none flagged"
            await self.record(action, found, f"{correction.model_name}: {flagged}", by=by)
        return found, stored
