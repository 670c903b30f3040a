"""A run: one pydantic document — what was asked (``spec``), each stage's state, the
training job's history, artifacts, metrics, events — and the rules of every change of its
state, as methods that edit the document and say whether it changed. They know no Redis:
``runs.RunStore`` applies each one atomically and keeps the indexes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from modfactory.store.run_parts import (
    FILE_ARTIFACTS,
    Artifacts,
    Event,
    Progress,
    RunSpec,
    RunState,
    StageState,
    StageStatus,
    StatusChange,
    Training,
)
from modfactory.store.stage_names import STAGES, StageName
from modfactory.values import DatasetSummary, SplitMetrics, TrainingJob

log = logging.getLogger("modfactory.store.run")
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
MAX_EVENTS = 500
GivesUp = Callable[[StageState], str | None]  # why a stage is not attempted again, if it is not


def now() -> datetime:
    return datetime.now(UTC)


class Run(BaseModel):
    id: str
    state: RunState = RunState.QUEUED
    spec: RunSpec
    stages: dict[str, StageState] = Field(default_factory=lambda: {s: StageState() for s in STAGES})
    artifacts: Artifacts = Field(default_factory=Artifacts)
    dataset: DatasetSummary | None = None
    training: Training = Field(default_factory=Training)
    metrics: SplitMetrics | None = None
    progress: Progress | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None
    events: list[Event] = Field(default_factory=list)
    _unlogged: list[Event] = PrivateAttr(default_factory=list)

    @property
    def current_stage(self) -> str | None:
        """The first stage not yet succeeded (None once all have)."""
        return next((s for s in STAGES if self.stages[s].state != StageStatus.SUCCEEDED), None)

    @property
    def live_remote_job(self) -> str | None:
        """The id of a training job that may still be running at the backend."""
        job_id = self.artifacts.training_job_id
        return job_id if job_id and not self.training.job_over else None

    def stage_lines(self) -> list[tuple[str, StageState, str, str]]:
        """Per stage, as the CLI and ``/ui`` show it: (name, state, time taken, detail — the
        error, the attempt being retried, the training job's status and loss, the rows
        built, or the running stage's progress)."""
        lines = []
        for name in STAGES:
            stage = self.stages[name]
            took = ""
            if stage.started_at:
                end = stage.finished_at or self.updated_at
                took = f"{(end - stage.started_at).total_seconds():.1f} s"
            detail = stage.error or ""
            if stage.state == "running" and stage.last_error:
                detail = f"retrying (attempt {stage.attempts} ended: {stage.last_error})"
            if name == "train" and self.training.status and not stage.error:
                last = self.training.checkpoints[-1] if self.training.checkpoints else None
                detail = self.training.status
                if last and last.train_loss is not None:
                    detail += f" · step {last.step} train loss {last.train_loss:.4f}"
                if last and last.valid_loss is not None:
                    detail += f" valid loss {last.valid_loss:.4f}"
            if name == "build" and self.dataset:
                detail = ", ".join(f"{s} {v.rows:,}" for s, v in self.dataset.splits.items())
                detail += " (synthetic)" if self.dataset.synthetic else ""
            if self.progress and self.progress.stage == name and stage.state == "running":
                p = self.progress
                detail = f"{p.what}: {p.done:,} of {p.total:,}"
            lines.append((name, stage, took, detail))
        return lines

    def to_json_dict(self, url_of: Callable[[str], str] | None = None) -> dict[str, Any]:
        """The document ``status --json`` and ``run --json`` print; with ``url_of`` (the
        artifact store's), ``artifact_urls``: where each artifact is, by its field."""
        document = self.model_dump(mode="json")
        if url_of is not None:
            keys = {name: getattr(self.artifacts, name) for name in FILE_ARTIFACTS}
            document["artifact_urls"] = {name: url_of(key) for name, key in keys.items() if key}
        return document

    # --- state changes: each one rule; True when the run changed (then it is stored) -----
    def start_stage(self, stage: StageName, gives_up: GivesUp | None = None) -> bool:
        """``stage`` runs for one more attempt, unless it is done or the run is over. The
        attempt before, if it ended without moving the stage further (no file uploaded, no
        batch classified, no new training status or checkpoint, no further in its rows),
        counts as stalled if it ran (``mark_ran``, or it ended of itself), as cut short if
        it was lost before; the stage fails instead when ``gives_up`` (the failure
        policy's) says why it should. Attempts that made progress never count."""
        state = self.stages[stage]
        if self.state.terminal or state.state in (StageStatus.SUCCEEDED, StageStatus.FAILED):
            return False
        if state.attempts and not state.moved:
            if state.ran:
                state.stalled += 1
            else:
                state.cut_short += 1
        reason = gives_up(state) if gives_up else None
        if reason:
            self._fail(stage, reason)
            return True
        state.state = StageStatus.RUNNING
        state.started_at = state.started_at or now()
        state.attempts += 1
        state.moved = state.ran = False
        self.state = RunState.RUNNING
        self._event(
            "started" if state.attempts == 1 else f"resumed (attempt {state.attempts})", stage
        )
        return True

    def mark_ran(self, stage: StageName, attempt: int) -> bool:
        """Attempt ``attempt`` of ``stage`` has run long enough to count if it stalls."""
        state = self.stages[stage]
        if state.state != StageStatus.RUNNING or state.attempts != attempt or state.ran:
            return False
        state.ran = True
        return True

    def interrupt_stage(self, stage: StageName, error: str) -> bool:
        """The attempt ended without a result for a reason that may pass: the stage stays
        running, to be attempted again."""
        state = self.stages[stage]
        if self.state.terminal or state.state != StageStatus.RUNNING:
            return False
        state.last_error = error
        state.ran = True  # it ended of itself: whatever its length, it was a real attempt
        self.progress = None
        self._event(f"attempt {state.attempts} did not finish: {error}; trying again", stage)
        return True

    def finish_stage(
        self,
        stage: str,
        artifacts: dict[str, Any] | None = None,
        dataset: DatasetSummary | None = None,
        metrics: SplitMetrics | None = None,
        message: str = "succeeded",
    ) -> bool:
        """``stage`` succeeded with what it produced (the last stage ends the run); not
        when it had already, or the run is over (cancelled meanwhile)."""
        state = self.stages[stage]
        if state.state == StageStatus.SUCCEEDED or self.state.terminal:
            return False
        state.state, state.finished_at, state.error = StageStatus.SUCCEEDED, now(), None
        self.progress = None
        self.artifacts = self.artifacts.model_copy(update=artifacts or {})
        self.dataset = dataset or self.dataset
        self.metrics = metrics or self.metrics
        self._event(message, stage)
        if self.current_stage is None:
            self.state, self.finished_at = RunState.SUCCEEDED, now()
            self._event("run succeeded")
        return True

    def fail_stage(self, stage: StageName, error: str) -> bool:
        """``stage`` and the run end failed with ``error`` (not a run that is over)."""
        if self.state.terminal:
            return False
        self._fail(stage, error)
        return True

    def reopen_stage(self, stage: StageName) -> bool:
        """A failed ``stage`` may run again, with a fresh budget of attempts; a finished
        run is reopened for it. A training job is kept."""
        if self.stages[stage].state != StageStatus.FAILED:
            return False
        self.stages[stage] = StageState()
        self.state, self.error, self.finished_at = RunState.QUEUED, None, None
        self._event("queued again", stage)
        return True

    def new_training_generation(self) -> bool:
        """Set the ended training job aside, so that the train stage creates another (with
        a new suffix); RunStateError while the job may still be alive."""
        job_id = self.artifacts.training_job_id
        if job_id is None:
            return False
        if self.live_remote_job:
            raise RunStateError(f"training job {job_id} of run {self.id} may still be running")
        previous, ended = [*self.training.previous_jobs, job_id], self.training.status
        self.training = Training(
            generation=self.training.generation + 1,
            poll_seq=self.training.poll_seq,  # looks keep counting: old ids stay unique
            approved=False,
            previous_jobs=previous,
        )
        self.artifacts.training_job_id = None
        self._event(f"job {job_id} ended {ended}: training with a new job", "train")
        return True

    def note(self, message: str, stage: str | None) -> bool:
        """An event: what is about to be done (an intent), or why nothing was."""
        self._event(message, stage)
        return True

    def record_artifacts(self, message: str | None = None, **artifacts: Any) -> bool:
        """Outputs, as soon as they exist (an uploaded file id, a job id): progress."""
        self.artifacts = self.artifacts.model_copy(update=artifacts)
        stage = self.current_stage
        if stage is not None:
            self.stages[stage].moved = True
        if message:
            self._event(message, stage)
        return True

    def record_training(self, job: TrainingJob, advance_poll_from: int | None = None) -> bool:
        """A look at the training job: status changes and new checkpoints, once each; the
        looks in a row that saw nothing new (for the poll backoff); with
        ``advance_poll_from=n``, the poll sequence moves from n to n + 1."""
        training, changed = self.training, False
        if job.status != training.status:
            training.status = job.status
            training.history.append(StatusChange(status=job.status, at=now()))
            self._event(f"job {job.id} is {job.status}", "train")
            changed = True
        seen = {c.step for c in training.checkpoints}
        fresh = sorted((c for c in job.checkpoints if c.step not in seen), key=lambda c: c.step)
        if fresh:
            training.checkpoints.extend(fresh)
            training.checkpoints.sort(key=lambda c: c.step)
            changed = True
        if job.metadata and job.metadata != training.metadata:
            training.metadata = job.metadata
            changed = True
        targets = [t.model_dump() for t in job.classifier_targets]
        if targets and targets != training.classifier_targets:
            training.classifier_targets = targets
        if job.events and job.events != training.events:
            training.events = job.events
        training.quiet_looks = 0 if changed else training.quiet_looks + 1
        self.stages["train"].moved |= changed
        if advance_poll_from is not None and training.poll_seq == advance_poll_from:
            training.poll_seq += 1
        return True

    def await_approval(self, reason: str) -> bool:
        """Parked until approved (or cancelled): nothing is started meanwhile."""
        if self.state.terminal or self.training.approved:
            return False
        self.state = RunState.AWAITING_APPROVAL
        self._event(f"awaiting approval: {reason}", "train")
        return True

    def approve(self) -> bool:
        """The quoted cost is approved; RunStateError unless the run awaits approval."""
        if self.state != RunState.AWAITING_APPROVAL:
            raise RunStateError(f"run {self.id} is {self.state}, not awaiting approval")
        self.training.approved = True
        self.state = RunState.RUNNING
        self._event("cost approved", "train")
        return True

    def cancel(self, reason: str, *, strict: bool = True) -> bool:
        """The run ends cancelled, its current stage too. A run over already raises
        RunStateError (``strict=False``: is left as it is)."""
        if self.state.terminal:
            if not strict:
                return False
            raise RunStateError(f"run {self.id} is {self.state} already")
        stage = self.current_stage
        if stage is not None:
            state = self.stages[stage]
            state.state, state.finished_at, state.error = StageStatus.CANCELLED, now(), reason
        self.state, self.finished_at, self.error, self.progress = (
            RunState.CANCELLED,
            now(),
            reason,
            None,
        )
        self._event(f"cancelled: {reason}", stage)
        return True

    def record_progress(self, stage: StageName, what: str, done: int, total: int) -> bool:
        """How far a running stage is (no event: progress is not history); further than
        any attempt got before, the attempt moved the stage."""
        state = self.stages[stage]
        if state.state != StageStatus.RUNNING:
            return False
        self.progress = Progress(stage=stage, what=what, done=done, total=total, at=now())
        if done > state.reached.get(what, 0):
            state.reached[what] = done
            state.moved = True
        return True

    def advance_poll(self, seq: int) -> bool:
        """The poll sequence moves from ``seq`` to ``seq + 1``; not if it has already."""
        if self.training.poll_seq != seq:
            return False
        self.training.poll_seq = seq + 1
        return True

    def _fail(self, stage: str, error: str) -> None:
        state = self.stages[stage]
        state.state, state.finished_at, state.error = StageStatus.FAILED, now(), error
        self.progress = None
        self.state, self.finished_at, self.error = RunState.FAILED, now(), f"{stage}: {error}"
        self._event(f"failed: {error}", stage)

    def _event(self, message: str, stage: str | None = None) -> None:
        event = Event(at=now(), stage=stage, message=message)
        self.events.append(event)
        self._unlogged.append(event)
        del self.events[:-MAX_EVENTS]

    def _log_events(self) -> None:
        """One log line per event, once it is stored."""
        for event in self._unlogged:
            log.info(event.message, extra={"run_id": self.id, "stage": event.stage})
        self._unlogged.clear()


class RunStateError(ValueError):
    """The run is not in a state where that can be done; the message says which it is in."""


class ActiveRunExists(RunStateError):
    """Another run of the same model name is unfinished; only one runs at a time."""

    def __init__(self, run: Run) -> None:
        self.run = run
        where = f" at {run.current_stage}" if run.current_stage else ""
        super().__init__(
            f"model {run.spec.model_name!r} already has an unfinished run: {run.id} "
            f"({run.state}{where}); follow it with `modfactory status {run.id}` "
            f"or stop it with `modfactory cancel {run.id}`"
        )


class ChampionChanged(RunStateError):
    """The champion is no longer the one the challenger was measured against."""


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r}")


def new_run_id() -> str:
    """Sortable by creation time, unique, safe in file names and arq job ids."""
    return f"run-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
