"""The value types every wing shares: a training job as a backend reports it, a built
data set's summary, the recipe's numbers. Plain pydantic models with no behaviour beyond
their own fields, at the bottom with the settings, so the run store can hold them without
importing a backend or the build code.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from modfactory.settings import CIVIL_COMMENTS_LABELS, Settings

# --- training jobs (the shape of Mistral's fine-tuning API) ---------------------------


class JobStatus(StrEnum):
    """Fine-tuning job statuses, as the Mistral API names them."""

    QUEUED = "QUEUED"
    STARTED = "STARTED"
    VALIDATING = "VALIDATING"
    VALIDATED = "VALIDATED"
    RUNNING = "RUNNING"
    FAILED_VALIDATION = "FAILED_VALIDATION"
    FAILED = "FAILED"
    SUCCESS = "SUCCESS"
    CANCELLED = "CANCELLED"
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.FAILED_VALIDATION, JobStatus.CANCELLED}


class Checkpoint(BaseModel):
    """Training metrics at one step."""

    step: int
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    created_at: datetime | None = None


class ClassifierTarget(BaseModel):
    name: str
    labels: list[str]


class TrainingJob(BaseModel):
    """A backend's view of one fine-tuning job. ``status`` is a ``JobStatus`` name, or a
    status this code does not know yet (recorded as it is, and looked at again)."""

    id: str
    status: str
    model: str
    fine_tuned_model: str | None = None
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    classifier_targets: list[ClassifierTarget] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """The job is over: it succeeded, failed or was cancelled."""
        return self.status in _TERMINAL

    @property
    def known(self) -> bool:
        return self.status in JobStatus.__members__


class UploadedFile(BaseModel):
    id: str
    filename: str
    bytes: int


# --- data sets ---------------------------------------------------------------------------


class RecipeParams(BaseModel):
    """Every number of the cookbook's recipe (defaults: the cookbook's)."""

    text_column: str = "text"
    label_columns: tuple[str, ...] = CIVIL_COMMENTS_LABELS
    n_train: int = Field(1_000_000, ge=1)
    n_validation: int = Field(50_000, ge=1)
    n_test: int = Field(50_000, ge=1)
    seed: int = 42
    threshold: float = Field(0.5, ge=0, le=1)
    zero_flags_fraction: float = Field(0.1, ge=0, lt=1)
    max_label_fraction: float = Field(0.2, gt=0, le=1)
    min_label_fraction: float = Field(0.01, ge=0, le=1)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RecipeParams:
        values = {name: getattr(settings, name) for name in cls.model_fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def take(self, split: str) -> int:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}[split]


class SplitSummary(BaseModel):
    rows: int
    safe: int
    labels: dict[str, int]
    file: str


class DatasetSummary(BaseModel):
    """What a build produced; recorded with the run and saved as ``dataset.json``."""

    source: str
    synthetic: bool
    labels: list[str]
    dropped_labels: list[str]
    splits: dict[str, SplitSummary]
    chart: str | None = None
    engine: Literal["fast", "stream"] = "stream"
    engine_note: str | None = None  # why ``auto`` streamed
