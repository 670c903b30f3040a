"""Runs and the run store: every change of a run's state happens here, atomically.

A run is one JSON document in Redis (``<prefix>:run:<id>``), listed newest first in a
sorted set (``<prefix>:runs``). Each change reads, edits and writes the document inside a
WATCH/MULTI transaction, retried on conflict, so concurrent workers never lose an update.
The store knows nothing of arq or of the backends' clients.

One run at a time per model name: ``<prefix>:active:<model>`` names the run holding the
model's slot, claimed in the same transaction that creates (or reopens) a run, so two
triggers racing each other can never both start a retrain. The same transactions keep
small indexes: each run's state and its stages' durations (what ``/metrics`` reads), the
set of unfinished runs (what the reconciler walks), and the runs that ended failed or
cancelled while their remote training job may still be running (whose jobs the
reconciler cancels).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, PrivateAttr
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from modfactory.store.redis_json import update_document
from modfactory.store.registry import ModelRecord, load_record
from modfactory.values import Checkpoint, DatasetSummary, RecipeParams, TrainingJob

log = logging.getLogger("modfactory.store.runs")
StageName = Literal["build", "upload", "train", "evaluate"]
STAGES: tuple[StageName, ...] = get_args(StageName)  # the pipeline, in order: declared once
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
MAX_EVENTS = 500


def next_stage(stage: str) -> StageName | None:
    """The stage that follows ``stage`` in the pipeline (None after the last)."""
    i = STAGES.index(stage) + 1
    return STAGES[i] if i < len(STAGES) else None


def now() -> datetime:
    return datetime.now(UTC)


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


class Event(BaseModel):
    at: datetime
    stage: str | None = None
    message: str


class RunSpec(BaseModel):
    """What to build and train; fixed when the run is created."""

    source: str
    backend: Literal["local", "mistral"]
    recipe: RecipeParams
    hyperparameters: dict[str, float | int] = Field(default_factory=dict)
    model_name: str = "moderation"
    max_cost: float | None = None  # a quote above it waits for approval
    source_fingerprint: str | None = None  # what the source was when the run was created


class Artifacts(BaseModel):
    """Where a run's outputs are: files on disk and ids at the backend."""

    dataset_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
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


class Run(BaseModel):
    id: str
    state: RunState = RunState.QUEUED
    spec: RunSpec
    stages: dict[str, StageState] = Field(default_factory=lambda: {s: StageState() for s in STAGES})
    artifacts: Artifacts = Field(default_factory=Artifacts)
    dataset: DatasetSummary | None = None
    training: Training = Field(default_factory=Training)
    metrics: dict[str, Any] | None = None
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

    def to_json_dict(self) -> dict[str, Any]:
        """The document ``status --json`` and ``run --json`` print."""
        return self.model_dump(mode="json")

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


class Verdict(BaseModel):
    """The evaluate stage's promotion decision, as it is to be recorded."""

    promoted: bool
    reason: str
    measured_against: str | None  # the champion's run id when the decision was made
    model_id: str | None = None


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r}")


def new_run_id() -> str:
    """Sortable by creation time, unique, safe in file names and arq job ids."""
    return f"run-{now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class RunStore:
    """All reads and atomic writes of runs."""

    def __init__(self, redis: Redis, prefix: str = "modfactory") -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:runs"

    def _slot(self, model_name: str) -> str:
        return f"{self.prefix}:active:{model_name}"

    @property
    def states_key(self) -> str:
        """Hash: run id -> state (what ``/metrics`` counts)."""
        return f"{self.prefix}:run-states"

    @property
    def state_counts_key(self) -> str:
        """Hash: state -> how many stored runs are in it (kept in the same transactions)."""
        return f"{self.prefix}:run-state-counts"

    async def state_counts(self) -> dict[str, int]:
        """Stored runs by state, read from the counts (not from every run)."""
        await self._count_states_once()
        raw = await self.redis.hgetall(self.state_counts_key)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def _count_states_once(self) -> None:
        """Counts for runs stored before the counts existed: taken once from the states."""
        marker = f"{self.prefix}:run-state-counts-since"
        if await self.redis.exists(marker):
            return
        await self.reindex()
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.states_key, marker)
                if await pipe.exists(marker):
                    return
                counts = Counter(v.decode() for v in await pipe.hvals(self.states_key))
                pipe.multi()
                pipe.delete(self.state_counts_key)
                if counts:
                    pipe.hset(self.state_counts_key, mapping=dict(counts))
                pipe.set(marker, now().isoformat())
                await pipe.execute()
            except WatchError:
                pass  # a run changed meanwhile: counted on the next read

    @property
    def stage_seconds_key(self) -> str:
        """Hash of per-run stage durations that older versions kept (folded once into
        ``stage_histogram_key``)."""
        return f"{self.prefix}:stage-seconds"

    @property
    def stage_histogram_key(self) -> str:
        """Hash: ``<stage>|<backend>|<bucket>`` -> how many succeeded stages took at most
        that many seconds, plus ``…|sum`` and ``…|count``: counted once per stage, never
        lessened by pruning, and as small with a million runs as with one."""
        return f"{self.prefix}:stage-histogram"

    def _count_duration(self, pipe: Pipeline, run: Run, stage: str) -> None:
        """Queue the histogram increments of ``stage`` of ``run`` (just succeeded)."""
        state = run.stages[stage]
        if state.state != StageStatus.SUCCEEDED or not (state.started_at and state.finished_at):
            return
        self._count_seconds(
            pipe, stage, run.spec.backend, (state.finished_at - state.started_at).total_seconds()
        )

    def _count_seconds(self, pipe: Pipeline, stage: str, backend: str, seconds: float) -> None:
        base = f"{stage}|{backend}"
        for bucket in STAGE_BUCKETS:
            if seconds <= bucket:
                pipe.hincrby(self.stage_histogram_key, f"{base}|{bucket:g}", 1)
        pipe.hincrbyfloat(self.stage_histogram_key, f"{base}|sum", seconds)
        pipe.hincrby(self.stage_histogram_key, f"{base}|count", 1)

    @property
    def unfinished_key(self) -> str:
        """Set of the ids of runs not yet succeeded, failed or cancelled."""
        return f"{self.prefix}:unfinished"

    @property
    def jobs_to_cancel_key(self) -> str:
        """Set of ids of runs that are over while their remote training job may not be."""
        return f"{self.prefix}:jobs-to-cancel"

    def _index_writes(self, pipe: Pipeline, run: Run) -> None:
        """Queue the indexes' writes for ``run`` (idempotent: plain HSET / SADD / SREM)."""
        pipe.hset(self.states_key, run.id, str(run.state))
        if run.state.terminal:
            pipe.srem(self.unfinished_key, run.id)
        else:
            pipe.sadd(self.unfinished_key, run.id)
        if run.state.terminal and run.state != RunState.SUCCEEDED and run.live_remote_job:
            pipe.sadd(self.jobs_to_cancel_key, run.id)
        else:
            pipe.srem(self.jobs_to_cancel_key, run.id)

    async def _check_slot(self, pipe: Pipeline, model_name: str, run_id: str) -> None:
        """WATCH ``model_name``'s slot and its holder; raise if another unfinished run holds it."""
        slot = self._slot(model_name)
        await pipe.watch(slot)
        holder = await pipe.get(slot)
        if holder is None or holder.decode() == run_id:
            return
        await pipe.watch(self._key(holder.decode()))
        raw = await pipe.get(self._key(holder.decode()))
        if raw is not None:
            active = Run.model_validate_json(raw)
            if not active.state.terminal:
                raise ActiveRunExists(active)

    # --- reads -----------------------------------------------------------------------
    async def get(self, run_id: str) -> Run:
        raw = await self.redis.get(self._key(run_id))
        if raw is None:
            raise RunNotFound(run_id)
        return Run.model_validate_json(raw)

    async def list(self, limit: int = 50) -> list[Run]:
        ids = await self.redis.zrevrange(self._index, 0, limit - 1)
        raws = (
            await self.redis.mget(
                [self._key(i.decode() if isinstance(i, bytes) else i) for i in ids]
            )
            if ids
            else []
        )
        return [Run.model_validate_json(raw) for raw in raws if raw is not None]

    async def active_run(self, model_name: str) -> Run | None:
        """The unfinished run holding ``model_name``'s slot, if any."""
        holder = await self.redis.get(self._slot(model_name))
        if holder is None:
            return None
        try:
            run = await self.get(holder.decode())
        except RunNotFound:
            return None
        return None if run.state.terminal else run

    async def reindex(self) -> int:
        """Index runs stored before the indexes existed, and fold an older version's per-run
        durations into the histogram, each exactly once; returns how many runs."""
        await self._fold_stage_seconds()
        if await self.redis.hlen(self.states_key) >= await self.redis.zcard(self._index):
            return 0
        known = set(await self.redis.hkeys(self.states_key))
        missing = [i for i in await self.redis.zrange(self._index, 0, -1) if i not in known]
        for raw_id in missing:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.states_key)  # a concurrent reindex: one wins
                    raw = await pipe.get(self._key(raw_id.decode()))
                    if raw is None or await pipe.hexists(self.states_key, raw_id):
                        continue
                    run = Run.model_validate_json(raw)
                    pipe.multi()
                    self._index_writes(pipe, run)
                    pipe.hincrby(self.state_counts_key, str(run.state), 1)
                    for stage in STAGES:
                        self._count_duration(pipe, run, stage)
                    await pipe.execute()
                except WatchError:
                    continue
        return len(missing)

    async def _fold_stage_seconds(self) -> None:
        if not await self.redis.exists(self.stage_seconds_key):
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.stage_seconds_key)
                durations = await pipe.hgetall(self.stage_seconds_key)
                pipe.multi()
                for field, value in durations.items():
                    backend, seconds = value.decode().split()
                    stage = field.decode().rsplit(":", 1)[1]
                    self._count_seconds(pipe, stage, backend, float(seconds))
                pipe.delete(self.stage_seconds_key)
                await pipe.execute()
            except WatchError:
                pass  # another process folded them

    async def active(self) -> list[Run]:
        """Runs not yet finished, oldest first (what the reconciler looks after)."""
        await self._index_unfinished_once()
        ids = sorted(i.decode() for i in await self.redis.smembers(self.unfinished_key))
        runs = []
        for raw in await self.redis.mget([self._key(i) for i in ids]) if ids else []:
            if raw is not None:
                run = Run.model_validate_json(raw)
                if not run.state.terminal:
                    runs.append(run)
        return runs

    async def _index_unfinished_once(self) -> None:
        """Runs stored before the unfinished-runs index existed are indexed once."""
        marker = f"{self.prefix}:unfinished-indexed"
        if await self.redis.exists(marker):
            return
        await self.reindex()
        states = await self.redis.hgetall(self.states_key)
        unfinished = [i for i, state in states.items() if not RunState(state.decode()).terminal]
        async with self.redis.pipeline(transaction=True) as pipe:
            if unfinished:
                pipe.sadd(self.unfinished_key, *unfinished)
            pipe.set(marker, 1)
            await pipe.execute()

    async def prunable(
        self,
        keep_runs: int | None,
        keep_days: float | None,
        protected: set[str],
        now: datetime | None = None,
    ) -> list[str]:
        """Finished runs beyond the newest ``keep_runs`` finished ones and older than
        ``keep_days`` (each limit applies only when set; both unset: none), except the
        ``protected``; newest first. Unfinished runs are never prunable."""
        if keep_runs is None and keep_days is None:
            return []
        entries = await self.redis.zrevrange(self._index, 0, -1, withscores=True)
        states = await self.redis.hmget(self.states_key, [i for i, _ in entries]) if entries else []
        cutoff = (now or datetime.now(UTC)).timestamp() - (keep_days or 0) * 86_400
        finished, doomed = 0, []
        for (raw_id, created), state in zip(entries, states, strict=True):
            if state is None or not RunState(state.decode()).terminal:
                continue
            finished += 1
            run_id = raw_id.decode()
            kept_by_count = keep_runs is not None and finished <= keep_runs
            kept_by_age = keep_days is not None and created >= cutoff
            if run_id not in protected and not kept_by_count and not kept_by_age:
                doomed.append(run_id)
        return doomed

    async def delete(
        self, run_id: str, keep: Callable[[Pipeline, Run], Awaitable[bool]] | None = None
    ) -> bool:
        """Remove a finished run and its index entries; False if it is unfinished, gone, or
        ``keep(pipe, run)`` — which WATCHes what it reads, in the same transaction — says
        it is needed after all (a run promoted since the caller looked)."""
        key = self._key(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    run = Run.model_validate_json(raw) if raw is not None else None
                    if run is None or not run.state.terminal or (keep and await keep(pipe, run)):
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hincrby(self.state_counts_key, str(run.state), -1)
                    pipe.delete(key)
                    pipe.zrem(self._index, run_id)
                    pipe.hdel(self.states_key, run_id)
                    pipe.srem(self.unfinished_key, run_id)
                    pipe.srem(self.jobs_to_cancel_key, run_id)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def runs_with_jobs_to_cancel(self) -> list[str]:
        return sorted(i.decode() for i in await self.redis.smembers(self.jobs_to_cancel_key))

    async def forget_job_to_cancel(self, run_id: str) -> None:
        """The run's remote job is over (or cannot be cancelled): stop trying."""
        await self.redis.srem(self.jobs_to_cancel_key, run_id)

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
                    await pipe.execute()
                    break
                except WatchError:
                    continue
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
        self, run_id: str, stage: StageName, max_attempts: int | None = None
    ) -> Run | None:
        """Mark ``stage`` running for one more attempt; None when it must not run (done
        already, or the run is over). An attempt beyond ``max_attempts`` fails the stage
        instead (and returns None), naming why the last one ended."""

        def change(run: Run) -> bool:
            state = run.stages[stage]
            if run.state.terminal or state.state in (StageStatus.SUCCEEDED, StageStatus.FAILED):
                return False
            if max_attempts is not None and state.attempts >= max_attempts:
                last = state.last_error or "it ended without a result (the worker was lost)"
                _fail(run, stage, f"gave up after {state.attempts} attempts; the last: {last}")
                return True
            state.state = StageStatus.RUNNING
            state.started_at = state.started_at or now()
            state.attempts += 1
            run.state = RunState.RUNNING
            run._event(
                "started" if state.attempts == 1 else f"resumed (attempt {state.attempts})", stage
            )
            return True

        run, changed = await self._update(run_id, change)
        return run if changed and run.stages[stage].state == StageStatus.RUNNING else None

    async def interrupt_stage(self, run_id: str, stage: StageName, error: str) -> Run:
        """The attempt ended without a result for a reason that may pass (the backend was
        unreachable): the stage stays running, to be attempted again (see ``reconcile``)."""

        def change(run: Run) -> bool:
            state = run.stages[stage]
            if run.state.terminal or state.state != StageStatus.RUNNING:
                return False
            state.last_error = error
            run.progress = None
            run._event(f"attempt {state.attempts} did not finish: {error}; trying again", stage)
            return True

        return (await self._update(run_id, change))[0]

    async def finish_stage(
        self,
        run_id: str,
        stage: StageName,
        *,
        artifacts: dict[str, Any] | None = None,
        dataset: DatasetSummary | None = None,
        metrics: dict[str, Any] | None = None,
        message: str = "succeeded",
    ) -> Run:
        """Mark ``stage`` succeeded with what it produced; the last stage ends the run."""

        def change(run: Run) -> bool:
            return _finish(run, stage, artifacts, dataset, metrics, message)

        def counted(pipe: Pipeline, run: Run) -> None:
            self._count_duration(pipe, run, stage)

        return (await self._update(run_id, change, also=counted))[0]

    async def finish_evaluation(
        self,
        run_id: str,
        verdict: Verdict,
        registry_key: str,
        *,
        metrics: dict[str, Any],
        artifacts: dict[str, Any],
        message: str,
    ) -> Run:
        """Finish the last stage and record the promotion verdict in the model registry,
        in one transaction: a run over meanwhile (cancelled, failed) changes nothing and is
        never promoted; a champion other than the one measured against raises
        ChampionChanged (measure again)."""
        decided: list[ModelRecord] = []

        def change(run: Run) -> bool:
            return _finish(run, "evaluate", artifacts, None, metrics, message)

        async def champion_unchanged(pipe: Pipeline, run: Run) -> None:
            await pipe.watch(registry_key)
            record = load_record(run.spec.model_name, await pipe.get(registry_key))
            if record.champion_run not in (verdict.measured_against, run.id):
                raise ChampionChanged(
                    f"the champion of {run.spec.model_name!r} is now {record.champion_run}, "
                    f"not {verdict.measured_against}"
                )
            if verdict.promoted and verdict.model_id:
                record.promote(run.id, verdict.model_id, verdict.reason)
            else:
                record.keep_as_candidate(run.id, verdict.reason)
            decided[:] = [record]

        def record_verdict(pipe: Pipeline, run: Run) -> None:
            pipe.set(registry_key, decided[0].model_dump_json())
            self._count_duration(pipe, run, "evaluate")

        return (await self._update(run_id, change, guard=champion_unchanged, also=record_verdict))[
            0
        ]

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
        """Let ``stage`` run again after a failure, with a fresh budget of attempts; a
        finished run is reopened for it (it takes its model name's slot again:
        ActiveRunExists if another run holds it). A training job is kept: the train stage
        follows it again if it is still alive, and replaces it only once it is over."""

        def change(run: Run) -> bool:
            state = run.stages[stage]
            if state.state != StageStatus.FAILED:
                return False
            run.stages[stage] = StageState()
            run.state, run.error, run.finished_at = RunState.QUEUED, None, None
            run._event("queued again", stage)
            return True

        return (await self._update(run_id, change, claim=True))[0]

    async def new_training_generation(self, run_id: str) -> Run:
        """Set the run's ended training job aside, so that the train stage creates another
        (with a new suffix). Refused while the job may still be alive."""

        def change(run: Run) -> bool:
            job_id = run.artifacts.training_job_id
            if job_id is None:
                return False
            if run.live_remote_job:
                raise RunStateError(f"training job {job_id} of run {run_id} may still be running")
            previous, ended = [*run.training.previous_jobs, job_id], run.training.status
            run.training = Training(
                generation=run.training.generation + 1,
                poll_seq=run.training.poll_seq,  # looks keep counting: old ids stay unique
                approved=False,
                previous_jobs=previous,
            )
            run.artifacts.training_job_id = None
            run._event(f"job {job_id} ended {ended}: training with a new job", "train")
            return True

        return (await self._update(run_id, change))[0]

    async def fail_stage(self, run_id: str, stage: StageName, error: str) -> Run:
        """Mark ``stage`` and the run failed, keeping the reason."""

        def change(run: Run) -> bool:
            if run.state.terminal:
                return False
            _fail(run, stage, error)
            return True

        return (await self._update(run_id, change))[0]

    async def note(self, run_id: str, stage: StageName, message: str) -> None:
        """Add an event: what is about to be done (an intent), or why nothing was."""

        def change(run: Run) -> bool:
            run._event(message, stage)
            return True

        await self._update(run_id, change)

    async def record_artifacts(
        self, run_id: str, message: str | None = None, **artifacts: Any
    ) -> Run:
        """Record outputs as soon as they exist (an uploaded file id, a job id)."""

        def change(run: Run) -> bool:
            run.artifacts = run.artifacts.model_copy(update=artifacts)
            if message:
                run._event(message, run.current_stage)
            return True

        return (await self._update(run_id, change))[0]

    async def record_training(
        self, run_id: str, job: TrainingJob, advance_poll_from: int | None = None
    ) -> Run:
        """Record a look at the training job: status changes and new checkpoints, once each.

        Counts the looks in a row that saw nothing new, for the poll interval's backoff,
        and, with ``advance_poll_from=n``, moves the poll sequence from n to n + 1 in the
        same transaction (see ``advance_poll``).
        """

        def change(run: Run) -> bool:
            training, changed = run.training, False
            if job.status != training.status:
                training.status = job.status
                training.history.append(StatusChange(status=job.status, at=now()))
                run._event(f"job {job.id} is {job.status}", "train")
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
            if advance_poll_from is not None and training.poll_seq == advance_poll_from:
                training.poll_seq += 1
            return True

        return (await self._update(run_id, change))[0]

    async def await_approval(self, run_id: str, reason: str) -> Run:
        """Park the run until ``approve`` (or ``cancel``): nothing is started meanwhile."""

        def change(run: Run) -> bool:
            if run.state.terminal or run.training.approved:
                return False
            run.state = RunState.AWAITING_APPROVAL
            run._event(f"awaiting approval: {reason}", "train")
            return True

        return (await self._update(run_id, change))[0]

    async def approve(self, run_id: str) -> Run:
        """Approve the quoted cost of a run awaiting approval."""

        def change(run: Run) -> bool:
            if run.state != RunState.AWAITING_APPROVAL:
                raise RunStateError(f"run {run_id} is {run.state}, not awaiting approval")
            run.training.approved = True
            run.state = RunState.RUNNING
            run._event("cost approved", "train")
            return True

        return (await self._update(run_id, change))[0]

    async def cancel(self, run_id: str, reason: str, *, strict: bool = True) -> Run:
        """End an unfinished run as cancelled; its current stage is marked cancelled.
        A run that is over already raises RunStateError (``strict=False``: is left as is)."""

        def change(run: Run) -> bool:
            if run.state.terminal:
                if not strict:
                    return False
                raise RunStateError(f"run {run_id} is {run.state} already")
            stage = run.current_stage
            if stage is not None:
                state = run.stages[stage]
                state.state, state.finished_at, state.error = StageStatus.CANCELLED, now(), reason
            run.state, run.finished_at, run.error, run.progress = (
                RunState.CANCELLED,
                now(),
                reason,
                None,
            )
            run._event(f"cancelled: {reason}", stage)
            return True

        return (await self._update(run_id, change))[0]

    async def record_progress(
        self, run_id: str, stage: StageName, what: str, done: int, total: int
    ) -> None:
        """Note how far a running stage is (no event: progress is not history)."""

        def change(run: Run) -> bool:
            if run.stages[stage].state != StageStatus.RUNNING:
                return False
            run.progress = Progress(stage=stage, what=what, done=done, total=total, at=now())
            return True

        await self._update(run_id, change)

    async def advance_poll(self, run_id: str, seq: int) -> bool:
        """Move the poll sequence from ``seq`` to ``seq + 1``; False if already moved."""

        def change(run: Run) -> bool:
            if run.training.poll_seq != seq:
                return False
            run.training.poll_seq = seq + 1
            return True

        return (await self._update(run_id, change))[1]


def _fail(run: Run, stage: str, error: str) -> None:
    """``stage`` and the run end failed with ``error``."""
    state = run.stages[stage]
    state.state, state.finished_at, state.error = StageStatus.FAILED, now(), error
    run.progress = None
    run.state, run.finished_at, run.error = RunState.FAILED, now(), f"{stage}: {error}"
    run._event(f"failed: {error}", stage)


def _finish(
    run: Run,
    stage: str,
    artifacts: dict[str, Any] | None,
    dataset: DatasetSummary | None,
    metrics: dict[str, Any] | None,
    message: str,
) -> bool:
    """``stage`` succeeded with what it produced (the last stage ends the run); False when
    it had already, or the run is over (cancelled meanwhile)."""
    state = run.stages[stage]
    if state.state == StageStatus.SUCCEEDED or run.state.terminal:
        return False
    state.state, state.finished_at, state.error = StageStatus.SUCCEEDED, now(), None
    run.progress = None
    run.artifacts = run.artifacts.model_copy(update=artifacts or {})
    run.dataset = dataset or run.dataset
    run.metrics = metrics or run.metrics
    run._event(message, stage)
    if run.current_stage is None:
        run.state, run.finished_at = RunState.SUCCEEDED, now()
        run._event("run succeeded")
    return True
