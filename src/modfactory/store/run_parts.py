"""The parts of a run document: its state and each stage's, what was asked (``spec``),
where its outputs are, what was seen of the training job, the running stage's progress.
Plain fields; the rules that change them are ``run.Run``'s methods.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from modfactory.values import Checkpoint, RecipeParams


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class StageStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StageState(BaseModel):
    state: StageStatus = StageStatus.PENDING
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    attempts: int = 0
    last_error: str | None = None  # why the latest attempt ended without a result
    stalled: int = 0  # attempts that ran and moved the stage no further (max attempts counts)
    cut_short: int = 0  # attempts lost before they ran (a killed worker): counted apart
    moved: bool = False  # the current attempt moved the stage further
    ran: bool = False  # the current attempt ran: for MODFACTORY_STAGE_MIN_ATTEMPT, or to an end
    reached: dict[str, int] = Field(default_factory=dict)  # the furthest each progress got


class Event(BaseModel):
    at: datetime
    stage: str | None = None
    message: str


class RunSpec(BaseModel):
    """What to build and train; fixed when the run is created."""

    source: str
    backend: str  # a name in modfactory.plugins, checked when the run is created
    recipe: RecipeParams
    hyperparameters: dict[str, float | int] = Field(default_factory=dict)
    model_name: str = "moderation"
    max_cost: float | None = None  # a quote above it waits for approval
    source_fingerprint: str | None = None  # what the source was when the run was created


class Artifacts(BaseModel):
    """Where a run's outputs are: keys in the artifact store (an absolute path in a run of
    an earlier version) and ids at the backend."""

    dataset_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    live_file: str | None = None  # the corrections held out (when there were any)
    distribution_chart: str | None = None
    train_file_id: str | None = None
    validation_file_id: str | None = None
    training_job_id: str | None = None
    model_id: str | None = None
    loss_chart: str | None = None
    metrics_file: str | None = None
    pr_chart: str | None = None
    report_html: str | None = None
    report_json: str | None = None


FILE_ARTIFACTS = (
    "dataset_dir",
    "train_file",
    "validation_file",
    "test_file",
    "live_file",
    "distribution_chart",
    "loss_chart",
    "metrics_file",
    "pr_chart",
    "report_html",
    "report_json",
)  # the fields of ``Artifacts`` that are artifact keys


class StatusChange(BaseModel):
    status: str
    at: datetime


class Training(BaseModel):
    """What the train stage has seen of the backend's job."""

    status: str | None = None
    history: list[StatusChange] = Field(default_factory=list)
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    classifier_targets: list[dict[str, Any]] = Field(default_factory=list)
    poll_seq: int = 0
    generation: int = 0  # bumped when a failed training is tried again with a new job
    quiet_looks: int = 0  # looks in a row that saw nothing new (the poll interval backs off)
    approved: bool = False  # the quoted cost was approved by `modfactory approve`
    events: list[dict[str, Any]] = Field(default_factory=list)  # the backend job's own events
    previous_jobs: list[str] = Field(default_factory=list)  # ended jobs of earlier generations

    @property
    def job_over(self) -> bool:
        """The job was last seen in a final status (which never changes again)."""
        return self.status in _JOB_OVER

    def job_suffix(self, run_id: str, prefix: str) -> str:
        """Tags the backend job with the run (18 characters at most, the API's limit)."""
        digest = hashlib.sha256(f"{run_id}/{self.generation}".encode()).hexdigest()
        return f"{prefix}{digest[: 18 - len(prefix)]}"


_JOB_OVER = {"SUCCESS", "FAILED", "FAILED_VALIDATION", "CANCELLED"}


class Progress(BaseModel):
    """How far the running stage is through its long work (rows streamed, texts classified)."""

    stage: str
    what: str
    done: int
    total: int
    at: datetime
