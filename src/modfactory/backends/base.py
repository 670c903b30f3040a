"""The one interface every training backend offers, shaped like Mistral's fine-tuning API.

Stages talk to this interface only, so they never know whether a model is trained on
this machine or by Mistral's Classifier Factory.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel

from modfactory.values import (
    BatchJob,
    PriceQuote,
    TrainingJob,
    UploadedFile,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from modfactory.settings import Settings


class JobRequest(BaseModel):
    """What the train stage asks for; ``suffix`` carries the run id to find the job again."""

    model: str
    training_file_id: str
    validation_file_ids: list[str]
    hyperparameters: dict[str, float | int]
    suffix: str


TargetScores = dict[str, dict[str, dict[str, float]]]
"""One classify result: ``{target: {"scores": {label: probability}}}``."""

Scorer = Callable[[list[str]], Awaitable[list[TargetScores]]]
"""Classifies with one model, again and again: one result per input, in input order."""


class BackendError(Exception):
    """A backend refused or failed; the message says what to fix and is safe to store."""


class BackendUnavailable(BackendError):
    """The backend could not be reached after retries; trying again later may work."""


HyperRanges = dict[str, tuple[type, float, float]]  # name -> (int or float, low, high)


def checked_hyperparameters(
    backend: str, overrides: dict[str, float | int], ranges: HyperRanges
) -> dict[str, float | int]:
    """``overrides`` with each value converted to its kind; BackendError naming the first
    unknown name or the first value that is not a finite number within its range."""
    checked: dict[str, float | int] = {}
    for name, value in overrides.items():
        if name not in ranges:
            raise BackendError(
                f"the {backend} backend has no hyperparameter {name!r}; "
                f"it takes {', '.join(sorted(ranges))}"
            )
        kind, low, high = ranges[name]
        fits = isinstance(value, int | float) and not isinstance(value, bool)
        fits = fits and low <= value <= high and (kind is float or value == int(value))
        if not fits:
            bounds = f"[{low:,}, {high:,}]" if kind is int else f"[{low:g}, {high:g}]"
            raise BackendError(
                f"hyperparameter {name}={value} is out of range: "
                f"{'an integer' if kind is int else 'a number'} in {bounds}"
            )
        checked[name] = kind(value)
    return checked


class Backend(ABC):
    """Upload files, run a classifier fine-tuning job, classify with the result.

    A backend is found by its ``name`` in ``modfactory.plugins`` (a plugin package declares
    it under the entry-point group ``modfactory.backends``) and made by ``from_settings``;
    what differs from one backend to another is said here, by methods and attributes, and
    nowhere else.
    """

    name: str
    base_model: str
    suffix_prefix: str = "mf"  # starts each job's suffix; the rest identifies the run
    moderation_model: str | None = None  # a general moderation model runs are compared with
    moderation_labels: ClassVar[dict[str, str]] = {}  # its categories -> our labels
    look_every: float | None = None  # longest useful wait between looks (None: the setting)
    max_batch: int | None = None  # most texts one classify call should carry (None: any)
    batch_api: bool = False  # it takes batch inference jobs (``submit_batch``...)
    error_counter: Callable[[str, str], Awaitable[None]] | None = None  # (backend, kind)

    @classmethod
    def from_settings(cls, settings: Settings) -> Backend:
        """The backend configured from ``settings`` (here: ``cls(settings)``); raises
        BackendError naming a missing or wrong setting."""
        return cls(settings)  # type: ignore[call-arg]

    def connect(self, redis: Redis, settings: Settings) -> None:
        """Share what must be shared with every process on this Redis (here: the count of
        failed API requests, by backend and kind)."""
        from modfactory.backends.api_errors import ApiErrorCounter

        self.error_counter = ApiErrorCounter(redis, settings.queue_name)

    @classmethod
    def job_files(cls, settings: Settings, job_id: str) -> list[str]:
        """Artifact keys (files, or prefixes of many) this backend keeps for one training
        job, deleted when its run is pruned (here: none, the job lives at the backend)."""
        return []

    @classmethod
    def job_records(cls, settings: Settings, job_id: str) -> list[str]:
        """Redis keys this backend keeps for one training job, deleted with its run."""
        return []

    async def count_api_error(self, kind: str) -> None:
        """Count one failed API request (``kind``: an HTTP status or an error name)."""
        if self.error_counter is not None:
            with contextlib.suppress(Exception):  # counting never fails the caller
                await self.error_counter(self.name, kind)

    @abstractmethod
    def hyperparameters(self, overrides: dict[str, float | int]) -> dict[str, float | int]:
        """The full hyperparameters for a run; raises BackendError naming an unknown one."""

    @abstractmethod
    async def upload_file(self, path: Path, tag: str) -> UploadedFile:
        """Give a JSONL file to the backend (idempotent for the same ``tag`` and content)."""

    @abstractmethod
    async def create_job(self, request: JobRequest) -> TrainingJob:
        """Create a job that waits to be started (``auto_start=False``)."""

    @abstractmethod
    async def get_job(self, job_id: str) -> TrainingJob: ...

    @abstractmethod
    async def start_job(self, job_id: str) -> TrainingJob:
        """Start a VALIDATED job; starting a running or finished job changes nothing."""

    @abstractmethod
    async def cancel_job(self, job_id: str) -> TrainingJob:
        """Cancel a job; cancelling a job that is over already changes nothing."""

    @abstractmethod
    async def classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        """One result per input, in input order."""

    async def scorer(self, model: str) -> Scorer:
        """A way to classify with ``model`` again and again (what serving keeps). Here:
        ``classify`` each time, for a model that lives at the backend."""

        async def score(inputs: list[str]) -> list[TargetScores]:
            return await self.classify(model, inputs)

        return score

    async def moderate(self, model: str, inputs: list[str]) -> list[dict[str, float]]:
        """Scores of a general-purpose moderation model (``moderation_model``), by its own
        categories (those in ``moderation_labels`` are compared with ours)."""
        raise BackendError(f"the {self.name} backend has no moderation endpoint")

    def quote_classify(self, tokens: int, *, batch: bool) -> PriceQuote | None:
        """What classifying ``tokens`` tokens costs, per request or in batch jobs (None:
        nothing, the model runs here)."""
        return None

    # --- batch inference (where ``batch_api``) --------------------------------------------
    async def submit_batch(
        self, model: str, requests: list[list[str]], tag: str, metadata: dict[str, str]
    ) -> BatchJob:
        """One batch job classifying each of ``requests`` (a list of texts) with ``model``,
        its input named by ``tag``, found again by ``metadata``: exactly once, however
        often it is asked and whatever happens to the answers."""
        raise BackendError(f"the {self.name} backend has no batch API")

    async def get_batch(self, batch_id: str) -> BatchJob:
        raise BackendError(f"the {self.name} backend has no batch API")

    async def cancel_batch(self, batch_id: str) -> BatchJob:
        """Cancel a batch job; one over already is left as it is."""
        raise BackendError(f"the {self.name} backend has no batch API")

    async def batch_results(self, job: BatchJob) -> list[list[TargetScores]]:
        """A succeeded batch job's results, one list per request in submission order;
        BackendError naming the first request that failed."""
        raise BackendError(f"the {self.name} backend has no batch API")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
