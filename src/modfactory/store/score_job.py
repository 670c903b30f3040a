"""A scoring job: one model applied to an archive, cut into shards that any worker scores —
the document (what was asked, the plan of shards, each shard's state, the results) and the
rules of every change, as methods that edit it and say whether it changed. They know no
Redis: ``score_jobs.ScoreJobStore`` applies each one atomically.

A shard is scored once: it is done when its output object is whole in the store, and a
shard done is never started again. Through a backend's batch API a shard is *remote* once
its batch job is created (the job's id kept on the shard): from then on it is followed by
numbered looks, never submitted again. A job quoted above its cap waits for approval
before any shard is sent. A shard whose attempts keep ending without a result
(a lost worker, an unreachable store) fails the job after the allowed attempts, naming how
the last one ended.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from modfactory.store.run_parts import Event
from modfactory.values import PriceQuote

MAX_EVENTS = 200
HISTOGRAM_BINS = 20  # equal bins of the scores over [0, 1]
TOP_TEXTS = 20  # the highest-scoring texts kept per label


def now() -> datetime:
    return datetime.now(UTC)


class ScoreState(StrEnum):
    QUEUED = "queued"  # the plan (the source read, cut into shards) is not made yet
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (ScoreState.SUCCEEDED, ScoreState.FAILED, ScoreState.CANCELLED)


class ShardState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    REMOTE = "remote"  # its batch job runs at the backend
    DONE = "done"


class ScoreSpec(BaseModel):
    """What to score with which model; fixed when the job is created."""

    source: str
    text_column: str = "text"
    id_column: str | None = None  # else each row is named by its number in the source
    model_name: str
    run_id: str  # the run whose model scores (the champion's when the job was created)
    model_id: str
    backend: str
    thresholds: str = "tuned"  # flag at the tuned thresholds, or above 0.5
    keep_text: bool = False  # the text written beside its scores
    shard_rows: int = Field(50_000, ge=1)
    batch_api: bool = True  # a backend with a batch API scores through it
    to_review: int = Field(0, ge=0)  # the most uncertain texts offered for review
    max_cost: float | None = None  # a quote above it waits for approval
    output: str | None = None  # a directory or URL the parts are copied to when scored


class Shard(BaseModel):
    rows: int
    state: ShardState = ShardState.PENDING
    attempts: int = 0
    last_error: str | None = None  # how the latest attempt ended without a result
    interrupted: int = 0  # attempts that met an unreachable store or backend (not counted)
    flagged: dict[str, int] = Field(default_factory=dict)  # rows flagged, by label
    finished_at: datetime | None = None
    batch_id: str | None = None  # its batch job at the backend, once created
    looks: int = 0  # looks at the batch job so far (a look's number: which is current)
    remote_status: str | None = None  # the batch job's status at the latest look


class TopText(BaseModel):
    id: str
    score: float
    text: str | None = None  # only with --keep-text


class LabelSummary(BaseModel):
    threshold: float
    flagged: int
    share: float
    histogram: list[int]  # rows per score bin, HISTOGRAM_BINS equal bins over [0, 1]
    top: list[TopText]  # the highest scores, highest first


class ScoreSummary(BaseModel):
    rows: int
    labels: dict[str, LabelSummary]
    offered_for_review: int = 0
    exported_to: str | None = None  # where the parts were copied (``spec.output``)


class ScoreProgress(BaseModel):
    """How far a job is: rows scored (shards under way included), its pace and the time
    left at that pace (None before there is one)."""

    rows_done: int
    rows_total: int
    shards_done: int
    shards_total: int
    rows_per_second: float | None
    eta_seconds: float | None


class ScoreJob(BaseModel):
    id: str
    state: ScoreState = ScoreState.QUEUED
    spec: ScoreSpec
    labels: list[str] = Field(default_factory=list)  # known once planned
    thresholds: dict[str, float] = Field(default_factory=dict)
    batch: bool = False  # its shards go to the backend's batch API (fixed by the plan)
    quote: PriceQuote | None = None  # what the backend charges for it (None: nothing)
    shards: list[Shard] = Field(default_factory=list)
    summary: ScoreSummary | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None  # when the first shard could be taken
    finished_at: datetime | None = None
    events: list[Event] = Field(default_factory=list)

    # --- reads ------------------------------------------------------------------------
    @property
    def planned(self) -> bool:
        return bool(self.shards)

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def rows_done(self) -> int:
        return sum(s.rows for s in self.shards if s.state == ShardState.DONE)

    @property
    def all_scored(self) -> bool:
        return self.planned and all(s.state == ShardState.DONE for s in self.shards)

    def progress(self, in_progress: dict[int, int], at: datetime | None = None) -> ScoreProgress:
        """The job's progress, with ``in_progress``: rows scored by each shard under way."""
        done_shards = [s for s in self.shards if s.state == ShardState.DONE]
        rows = self.rows_done + sum(
            min(rows, self.shards[i].rows)
            for i, rows in in_progress.items()
            if i < len(self.shards) and self.shards[i].state != ShardState.DONE
        )
        end = self.finished_at or at or now()
        took = (end - self.started_at).total_seconds() if self.started_at else 0.0
        rate = rows / took if took > 0 and rows else None
        left = self.total_rows - rows
        eta = left / rate if rate and not self.state.terminal else None
        return ScoreProgress(
            rows_done=rows,
            rows_total=self.total_rows,
            shards_done=len(done_shards),
            shards_total=len(self.shards),
            rows_per_second=rate,
            eta_seconds=eta,
        )

    def unfinished_shards(self) -> list[int]:
        """The shards not done yet, in order."""
        return [i for i, s in enumerate(self.shards) if s.state != ShardState.DONE]

    def shards_to_send(self) -> list[int]:
        """The shards neither done nor at the backend, in order."""
        return [
            i
            for i, s in enumerate(self.shards)
            if s.state in (ShardState.PENDING, ShardState.RUNNING)
        ]

    def remote_shards(self) -> list[int]:
        """The shards whose batch job runs at the backend."""
        return [i for i, s in enumerate(self.shards) if s.state == ShardState.REMOTE]

    # --- state changes: each one rule; True when the job changed (then it is stored) ----
    def plan(
        self,
        shard_rows: list[int],
        labels: list[str],
        thresholds: dict[str, float],
        *,
        batch: bool = False,
        quote: PriceQuote | None = None,
    ) -> bool:
        """The source is read and cut: these shards wait for the workers (once only) — or,
        quoted above the spec's ``max_cost``, for approval first."""
        if self.state.terminal or self.planned:
            return False
        self.shards = [Shard(rows=rows) for rows in shard_rows]
        self.labels, self.thresholds = labels, thresholds
        self.batch, self.quote = batch, quote
        total = sum(shard_rows)
        how = " for the backend's batch API" if batch else ""
        self._event(f"planned: {total:,} rows in {len(shard_rows)} shard(s){how}")
        cap = self.spec.max_cost
        if quote is not None:
            self._event(f"quoted {quote.cost:g} {quote.currency} ({quote.basis})")
        if quote is not None and cap is not None and quote.cost > cap:
            self.state = ScoreState.AWAITING_APPROVAL
            self._event(
                f"awaiting approval: quoted {quote.cost:g} {quote.currency} is above "
                f"MODFACTORY_MAX_COST {cap:g}"
            )
            return True
        self.state, self.started_at = ScoreState.RUNNING, now()
        return True

    def approve(self) -> bool:
        """A job awaiting approval of its quote may send its shards."""
        if self.state != ScoreState.AWAITING_APPROVAL:
            raise ScoreJobStateError(
                f"scoring job {self.id} is {self.state}; only one awaiting approval is approved"
            )
        self.state, self.started_at = ScoreState.RUNNING, now()
        self._event("approved")
        return True

    def start_shard(self, index: int, max_attempts: int) -> bool:
        """Shard ``index`` is attempted once more, unless it is done or the job is over;
        the job fails instead when its shard has used ``max_attempts`` without a result."""
        shard = self.shards[index]
        if self.state != ScoreState.RUNNING or shard.state in (ShardState.DONE, ShardState.REMOTE):
            return False
        if shard.attempts >= max_attempts:
            how = shard.last_error or "its worker was lost"
            self._fail(f"shard {index} was attempted {shard.attempts} times; the last: {how}")
            return True
        shard.state, shard.attempts = ShardState.RUNNING, shard.attempts + 1
        if shard.attempts > 1:
            self._event(f"shard {index}: attempt {shard.attempts}")
        return True

    def submitted(self, index: int, batch_id: str) -> bool:
        """Shard ``index``'s batch job exists: from now on it is followed, not sent."""
        shard = self.shards[index]
        if self.state.terminal or shard.state in (ShardState.DONE, ShardState.REMOTE):
            return False
        shard.state, shard.batch_id, shard.looks = ShardState.REMOTE, batch_id, 0
        self._event(f"shard {index}: batch job {batch_id}")
        return True

    def looked(self, index: int, seq: int, status: str) -> bool:
        """Look ``seq`` at shard ``index``'s batch job saw ``status``; the next is ``seq + 1``
        (a stale look changes nothing)."""
        shard = self.shards[index]
        if self.state.terminal or shard.state != ShardState.REMOTE or shard.looks != seq:
            return False
        if status != shard.remote_status:
            self._event(f"shard {index}: batch job {shard.batch_id} is {status}")
        shard.looks, shard.remote_status = seq + 1, status
        return True

    def interrupt_shard(self, index: int, error: str) -> bool:
        """The attempt ended without a result for a reason that may pass (the store or the
        backend unreachable): tried again, and not counted against the shard."""
        shard = self.shards[index]
        if self.state.terminal or shard.state == ShardState.DONE:
            return False
        shard.state, shard.last_error = ShardState.PENDING, error
        shard.attempts -= 1
        shard.interrupted += 1
        self._event(f"shard {index}: did not finish, tried again shortly: {error}")
        return True

    def finish_shard(self, index: int, flagged: dict[str, int]) -> bool:
        """Shard ``index``'s output is whole in the store (once: a done shard stays done)."""
        shard = self.shards[index]
        if shard.state == ShardState.DONE or self.state.terminal:
            return False
        shard.state, shard.flagged, shard.finished_at = ShardState.DONE, flagged, now()
        if self.all_scored:
            self._event(f"all {len(self.shards)} shard(s) scored")
        return True

    def complete(self, summary: ScoreSummary) -> bool:
        """Every shard is scored and the results are summed up: the job succeeded."""
        if self.state.terminal or not self.all_scored:
            return False
        self.summary, self.state, self.finished_at = summary, ScoreState.SUCCEEDED, now()
        self._event(f"succeeded: {summary.rows:,} rows scored")
        return True

    def fail(self, error: str) -> bool:
        if self.state.terminal:
            return False
        self._fail(error)
        return True

    def cancel(self, reason: str, *, strict: bool = True) -> bool:
        """The job ends cancelled (shards done are kept); a job over already raises
        ScoreJobStateError (``strict=False``: is left as it is)."""
        if self.state.terminal:
            if not strict:
                return False
            raise ScoreJobStateError(f"scoring job {self.id} is {self.state} already")
        self.state, self.finished_at, self.error = ScoreState.CANCELLED, now(), reason
        self._event(f"cancelled: {reason}")
        return True

    def _fail(self, error: str) -> None:
        self.state, self.finished_at, self.error = ScoreState.FAILED, now(), error
        self._event(f"failed: {error}")

    def _event(self, message: str) -> None:
        self.events.append(Event(at=now(), message=message))
        del self.events[:-MAX_EVENTS]


class ScoreJobStateError(ValueError):
    """The job is not in a state where that can be done; the message says which it is in."""


class ScoreJobNotFound(LookupError):
    def __init__(self, score_id: str) -> None:
        super().__init__(f"no scoring job {score_id!r}")


SCORE_ID_PREFIX = "score-"


def new_score_id() -> str:
    """Sortable by creation time, unique, safe in keys and arq job ids."""
    return f"{SCORE_ID_PREFIX}{now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
