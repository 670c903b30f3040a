"""The run store: every change of a run's state is applied here, atomically.

A run is one JSON document in Redis (``<prefix>:run:<id>``), listed newest first in a
sorted set (``<prefix>:runs``). Each change is one of ``Run``'s methods (``run.py``),
applied inside a WATCH/MULTI transaction retried on conflict (``redis_json``), so
concurrent workers never lose an update. The store knows nothing of arq or of the
backends' clients.

One run at a time per model name: ``<prefix>:active:<model>`` names the run holding the
model's slot, claimed in the same transaction that creates (or reopens) a run, so two
triggers racing each other can never both start a retrain. The same transactions keep
small indexes: each run's state and its stages' durations (what ``/metrics`` reads), the
set of unfinished runs (what the reconciler walks), and the runs that ended failed or
cancelled while their remote training job may still be running (whose jobs the
reconciler cancels).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from modfactory.redis_json import update_document
from modfactory.redis_replication import note_history, replicated
from modfactory.store.registry import ModelRecord, load_record
from modfactory.store.run import (
    ChampionChanged,
    GivesUp,
    Run,
    RunNotFound,
    RunSpec,
    RunState,
    RunStateError,
    StageName,
    StageStatus,
    new_run_id,
    now,
)
from modfactory.store.run_queries import RunQueries
from modfactory.values import DatasetSummary, PromotionDecision, SplitMetrics, TrainingJob


class RunStore(RunQueries):
    """Every atomic write of a run (its reads: ``RunQueries``)."""

    # --- writes ----------------------------------------------------------------------
    async def create(self, spec: RunSpec, *, exclusive: bool = True) -> Run:
        """Store a new queued run. ``exclusive``: claim its model name's slot in the same
        transaction, raising ActiveRunExists while another run of that name is unfinished."""
        run = Run(id=new_run_id(), spec=spec)
        run._event(f"created: source {spec.source}, backend {spec.backend}")
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    if exclusive:
                        await self._check_slot(pipe, spec.model_name, run.id)
                    pipe.multi()
                    pipe.set(self._key(run.id), run.model_dump_json())
                    pipe.zadd(self._index, {run.id: run.created_at.timestamp()})
                    self._index_writes(pipe, run)
                    pipe.hincrby(self.state_counts_key, str(run.state), 1)
                    if exclusive:
                        pipe.set(self._slot(spec.model_name), run.id)
                    noted = note_history(pipe, self.redis)
                    answers = await pipe.execute()
                    history = answers[-1] if noted else None
                    break
                except WatchError:
                    continue
        await replicated(self.redis, f"the creation of run {run.id}", history)
        run._log_events()
        return run

    async def _update(
        self,
        run_id: str,
        change: Callable[[Run], bool],
        *,
        claim: bool = False,
        guard: Callable[[Pipeline, Run], Awaitable[None]] | None = None,
        also: Callable[[Pipeline, Run], None] | None = None,
    ) -> tuple[Run, bool]:
        """Apply ``change`` atomically; it returns False to leave the run untouched.
        ``claim``: the run takes its model name's slot (ActiveRunExists if it is held);
        ``guard`` / ``also``: more keys checked / written in the same transaction."""

        def load(raw: bytes | None) -> Run:
            if raw is None:
                raise RunNotFound(run_id)
            return Run.model_validate_json(raw)

        before: list[RunState] = []

        def stamped(run: Run) -> bool:
            before[:] = [run.state]
            if not change(run):
                return False
            run.updated_at = now()
            return True

        async def checks(pipe: Pipeline, run: Run) -> None:
            if claim:
                await self._check_slot(pipe, run.spec.model_name, run.id)
            if guard is not None:
                await guard(pipe, run)

        def writes(pipe: Pipeline, run: Run) -> None:
            self._index_writes(pipe, run)
            if run.state != before[0]:
                pipe.hincrby(self.state_counts_key, str(before[0]), -1)
                pipe.hincrby(self.state_counts_key, str(run.state), 1)
            if claim:
                pipe.set(self._slot(run.spec.model_name), run.id)
            if also is not None:
                also(pipe, run)

        run, changed = await update_document(
            self.redis, self._key(run_id), load, stamped, guard=checks, also=writes
        )
        if changed:
            run._log_events()
        return run, changed

    async def start_stage(
        self, run_id: str, stage: StageName, gives_up: GivesUp | None = None
    ) -> Run | None:
        """``Run.start_stage``: the run, or None when the stage must not run (done
        already, the run over, or given up — then it failed)."""
        run, changed = await self._update(run_id, lambda r: r.start_stage(stage, gives_up))
        return run if changed and run.stages[stage].state == StageStatus.RUNNING else None

    async def mark_ran(self, run_id: str, stage: StageName, attempt: int) -> None:
        """``Run.mark_ran``."""
        await self._update(run_id, lambda r: r.mark_ran(stage, attempt))

    async def interrupt_stage(self, run_id: str, stage: StageName, error: str) -> Run:
        """``Run.interrupt_stage`` (the reconciler queues the stage again)."""
        return (await self._update(run_id, lambda r: r.interrupt_stage(stage, error)))[0]

    async def finish_stage(
        self,
        run_id: str,
        stage: StageName,
        *,
        artifacts: dict[str, Any] | None = None,
        dataset: DatasetSummary | None = None,
        metrics: SplitMetrics | None = None,
        message: str = "succeeded",
    ) -> Run:
        """``Run.finish_stage``, counting the stage's duration."""

        def change(run: Run) -> bool:
            return run.finish_stage(stage, artifacts, dataset, metrics, message)

        def counted(pipe: Pipeline, run: Run) -> None:
            self._count_duration(pipe, run, stage)

        return (await self._update(run_id, change, also=counted))[0]

    async def finish_evaluation(
        self,
        run_id: str,
        decision: PromotionDecision,
        registry_key: str,
        *,
        metrics: SplitMetrics,
        artifacts: dict[str, Any],
        message: str,
    ) -> Run:
        """Finish the last stage and record the promotion verdict in the model registry,
        in one transaction: a run over meanwhile (cancelled, failed) changes nothing and is
        never promoted; a champion other than the one measured against raises
        ChampionChanged (measure again)."""
        decided: list[ModelRecord] = []

        def change(run: Run) -> bool:
            return run.finish_stage("evaluate", artifacts, None, metrics, message)

        async def champion_unchanged(pipe: Pipeline, run: Run) -> None:
            await pipe.watch(registry_key)
            record = load_record(run.spec.model_name, await pipe.get(registry_key))
            if record.champion_run not in (decision.champion_run, run.id):
                raise ChampionChanged(
                    f"the champion of {run.spec.model_name!r} is now {record.champion_run}, "
                    f"not {decision.champion_run}"
                )
            if decision.promoted and decision.model_id:
                record.promote(run.id, decision.model_id, decision.reason)
            else:
                record.keep_as_candidate(run.id, decision.reason)
            decided[:] = [record]

        def record_verdict(pipe: Pipeline, run: Run) -> None:
            pipe.set(registry_key, decided[0].model_dump_json())
            self._count_duration(pipe, run, "evaluate")

        run, _ = await self._update(run_id, change, guard=champion_unchanged, also=record_verdict)
        return run

    async def watch_succeeded(self, pipe: Pipeline, run_id: str) -> Run:
        """WATCH the run in ``pipe`` and return it; RunStateError unless it succeeded."""
        await pipe.watch(self._key(run_id))
        raw = await pipe.get(self._key(run_id))
        if raw is None:
            raise RunNotFound(run_id)
        run = Run.model_validate_json(raw)
        if run.state != RunState.SUCCEEDED:
            raise RunStateError(f"run {run_id} is {run.state}; only a succeeded run has a model")
        return run

    async def reopen_stage(self, run_id: str, stage: StageName) -> Run:
        """``Run.reopen_stage``; the run takes its model name's slot again
        (ActiveRunExists if another run holds it)."""
        return (await self._update(run_id, lambda r: r.reopen_stage(stage), claim=True))[0]

    async def new_training_generation(self, run_id: str) -> Run:
        """``Run.new_training_generation``."""
        return (await self._update(run_id, Run.new_training_generation))[0]

    async def fail_stage(self, run_id: str, stage: StageName, error: str) -> Run:
        """``Run.fail_stage``."""
        return (await self._update(run_id, lambda r: r.fail_stage(stage, error)))[0]

    async def note(self, run_id: str, stage: StageName, message: str) -> None:
        """``Run.note``."""
        await self._update(run_id, lambda r: r.note(message, stage))

    async def record_artifacts(
        self, run_id: str, message: str | None = None, **artifacts: Any
    ) -> Run:
        """``Run.record_artifacts``."""
        return (await self._update(run_id, lambda r: r.record_artifacts(message, **artifacts)))[0]

    async def record_training(
        self, run_id: str, job: TrainingJob, advance_poll_from: int | None = None
    ) -> Run:
        """``Run.record_training`` (see ``advance_poll``)."""
        return (await self._update(run_id, lambda r: r.record_training(job, advance_poll_from)))[0]

    async def await_approval(self, run_id: str, reason: str) -> Run:
        """``Run.await_approval``."""
        return (await self._update(run_id, lambda r: r.await_approval(reason)))[0]

    async def approve(self, run_id: str) -> Run:
        """``Run.approve``."""
        return (await self._update(run_id, Run.approve))[0]

    async def cancel(self, run_id: str, reason: str, *, strict: bool = True) -> Run:
        """``Run.cancel``."""
        return (await self._update(run_id, lambda r: r.cancel(reason, strict=strict)))[0]

    async def record_progress(
        self, run_id: str, stage: StageName, what: str, done: int, total: int
    ) -> None:
        """``Run.record_progress``."""
        await self._update(run_id, lambda r: r.record_progress(stage, what, done, total))

    async def advance_poll(self, run_id: str, seq: int) -> bool:
        """``Run.advance_poll``: False if the sequence had moved already."""
        return (await self._update(run_id, lambda r: r.advance_poll(seq)))[1]
