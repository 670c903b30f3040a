"""The value types every wing shares: a training job as a backend reports it, a built
data set's summary, the recipe's numbers, a model's test metrics. Plain pydantic models
with no behaviour beyond their own fields, at the very bottom (below the settings, which
take the recipe's fields from here), so the run store can hold them without importing a
backend, the build code or the evaluation, and the CLI can read them without loading the
settings machinery.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

CIVIL_COMMENTS_LABELS: tuple[str, ...] = (
    "toxicity",
    "severe_toxicity",
    "obscene",
    "threat",
    "insult",
    "identity_attack",
    "sexual_explicit",
)
HeadlineMetric = Literal["macro_pr_auc", "macro_roc_auc", "macro_f1", "macro_tuned_f1", "micro_f1"]
PLAIN_THRESHOLD = 0.5  # a label is flagged above this score unless a tuned threshold says

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


class BatchJob(BaseModel):
    """A backend's view of one batch inference job (the shape of Mistral's Batch API).
    ``status`` is a ``BatchStatus`` name, or one this code does not know yet."""

    id: str
    status: str
    total_requests: int = 0
    completed_requests: int = 0
    failed_requests: int = 0
    output_file: str | None = None
    errors: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in _BATCH_TERMINAL


class BatchStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMEOUT_EXCEEDED = "TIMEOUT_EXCEEDED"
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    CANCELLED = "CANCELLED"


_BATCH_TERMINAL = {
    BatchStatus.SUCCESS,
    BatchStatus.FAILED,
    BatchStatus.TIMEOUT_EXCEEDED,
    BatchStatus.CANCELLED,
}


class PriceQuote(BaseModel):
    """What classifying some texts would cost, as a backend prices it."""

    cost: float
    currency: str
    tokens: int  # estimated
    basis: str  # how it was priced, for people: "0.05 EUR per million tokens (batch)"


# --- data sets ---------------------------------------------------------------------------


class RecipeParams(BaseModel):
    """Every number of the cookbook's recipe (defaults: the cookbook's), declared once: the
    settings (MODFACTORY_N_TRAIN…) and the CLI's options are made from these fields."""

    text_column: str = Field("text", description="Column holding the text.")
    label_columns: tuple[str, ...] = Field(
        CIVIL_COMMENTS_LABELS,
        description="Score columns in [0, 1]: comma-separated, or a JSON list.",
    )
    n_train: int = Field(1_000_000, ge=1, description="Rows taken from the shuffled train split.")
    n_validation: int = Field(50_000, ge=1, description="Rows taken from the validation split.")
    n_test: int = Field(50_000, ge=1, description="Rows taken from the test split.")
    seed: int = Field(42, description="Shuffle seed (datasets' IterableDataset.shuffle).")
    threshold: float = Field(0.5, ge=0, le=1, description="A label is set when score > this.")
    zero_flags_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of unflagged ('safe') rows kept in each split."
    )
    max_label_fraction: float = Field(
        0.2, gt=0, le=1, description="Cap on each label's share of the flagged rows."
    )
    min_label_fraction: float = Field(
        0.01, ge=0, le=1, description="Labels rarer than this over all splits are dropped."
    )

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> RecipeParams:
        """The recipe ``settings`` (a ``Settings``) name, with ``overrides`` given."""
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


class FeedbackUse(BaseModel):
    """The corrections a build added: texts in all, in train, in the live test set; up to
    which number of the model name's log; labels named that the data set does not have."""

    rows: int
    train_rows: int
    live_rows: int
    upto_seq: int
    ignored_labels: list[str] = Field(default_factory=list)


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
    feedback: FeedbackUse | None = None  # corrections added (``live`` split: held out)


# --- test metrics (``evaluation.metrics`` measures them; the run records them) -----------


class _Measured(BaseModel):
    """A record whose JSON holds the keys it was given, and only those: a number that was
    not measured is absent, one that is undefined (no positive to rank) is null."""

    @model_serializer(mode="wrap")
    def _given_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


Interval = tuple[float, float]  # a bootstrap 95 % interval


class DecisionScores(_Measured):
    """One yes/no decision measured: precision / recall / F1 at 0.5 and (``tuned_*``) at
    the thresholds tuned on validation; ROC-AUC and PR-AUC (None when a class is missing)."""

    precision: float
    recall: float
    f1: float
    tuned_precision: float | None = None
    tuned_recall: float | None = None
    tuned_f1: float | None = None
    roc_auc: float | None = None
    roc_auc_ci: Interval | None = None
    pr_auc: float | None = None
    pr_auc_ci: Interval | None = None


class Confusion(_Measured):
    tp: int
    fp: int
    fn: int
    tn: int


class FlaggedScores(DecisionScores):
    """Flagged (any label) vs safe; also the base of one label's numbers."""

    support: int
    prevalence: float


class LabelMetrics(FlaggedScores):
    tuned_threshold: float | None = None
    confusion: Confusion | None = None  # at the tuned thresholds (0.5 without)


HEADLINE_METRICS: dict[HeadlineMetric, tuple[Literal["macro", "micro"], str]] = {
    name: (name.split("_", 1)[0], name.split("_", 1)[1])  # type: ignore[misc]
    for name in get_args(HeadlineMetric)
}


class Headline(_Measured):
    """The numbers a comparison table shows for one model (``run_id``: a champion's run;
    ``labels``: the labels a baseline is measured on, when not all of them)."""

    run_id: str | None = None
    labels: list[str] | None = None
    macro_pr_auc: float | None = None
    macro_roc_auc: float | None = None
    macro_f1: float | None = None
    macro_tuned_f1: float | None = None
    micro_f1: float | None = None

    def value(self, name: HeadlineMetric) -> float | None:
        return getattr(self, name)


class PromotionDecision(_Measured):
    """Whether a run's model replaces its name's champion, and on what evidence (recorded
    with the run's metrics and, in the same transaction, in the model registry)."""

    model_name: str
    metric: HeadlineMetric
    margin: float
    challenger: float | None
    champion_run: str | None
    champion: float | None = None  # its value of ``metric`` on this test file
    promoted: bool
    reason: str
    model_id: str | None = None  # the challenger's model, the champion's if promoted
    live_challenger: float | None = None  # ``metric`` on the live test set, when there was one
    live_champion: float | None = None


class SplitMetrics(_Measured):
    """A model measured on one split: per label, micro and macro averages, subset accuracy,
    flagged vs safe; for a finished run also the baselines beside it and the promotion."""

    rows: int
    threshold: float
    thresholds_from: Literal["validation"] | None
    labels: dict[str, LabelMetrics]
    micro: DecisionScores
    macro: DecisionScores
    subset_accuracy: float
    tuned_subset_accuracy: float | None = None
    flagged: FlaggedScores | None = None  # absent from runs measured before it was
    baselines: dict[str, Headline] = Field(default_factory=dict)
    promotion: PromotionDecision | None = None
    live: SplitMetrics | None = None  # the live test set (corrections held out), measured alike

    def value(self, name: HeadlineMetric) -> float | None:
        group, key = HEADLINE_METRICS[name]
        return getattr(getattr(self, group), key)

    def headline(self, **about: Any) -> Headline:
        return Headline(**about, **{name: self.value(name) for name in HEADLINE_METRICS})
