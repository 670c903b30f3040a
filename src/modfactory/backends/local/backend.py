"""The embedded backend: trains a real classifier with no key and no network, on whichever
worker looks at the job — no job is tied to a machine.

Uploaded files and models are artifacts (the artifact store: a directory, or a bucket every
machine shares); a job's record and its trainer's progress are kept in Redis
(``jobs``). Training runs in a process of its own (``trainer``) holding the
job's lease: a look that finds neither a live lease nor a finished trainer starts one, here
(at most ``MAX_TRAINER_STARTS`` times), and a saved model is never retrained.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modfactory.artifacts import ArtifactNotFound, ArtifactStore, backend_key
from modfactory.backends.base import (
    Backend,
    BackendError,
    HyperRanges,
    JobRequest,
    Scorer,
    TargetScores,
    checked_hyperparameters,
)
from modfactory.backends.local.jobs import (
    CONFIG_ENV,
    JobRecords,
    LocalJob,
    TrainerProgress,
    cancel,
    job_keys,
    new_token,
    overdue,
    release_lease,
    started_once,
    url_of,
    when,
)
from modfactory.backends.local.models import JOB_ID, MODEL_PREFIX, SavedModels, scores_of
from modfactory.backends.local.selection import Grid, fits_per_label
from modfactory.data.recipe import TARGET, RecipeError, parse_jsonl
from modfactory.settings import Settings
from modfactory.values import Checkpoint, ClassifierTarget, JobStatus, TrainingJob, UploadedFile

if TYPE_CHECKING:
    from redis.asyncio import Redis

RANGES: HyperRanges = {"seed": (int, 0, 2**32 - 1)}  # what the grid's fits draw on
FITS_PER_SECOND = 15_000  # train rows x candidates fitted per second here, for the estimate
MAX_TRAINER_STARTS = 3
STARTUP = 30.0  # seconds a trainer may take to start and renew its lease (a loaded machine)
STOP_WAIT = 5.0  # seconds a trainer told to stop has to release its lease and exit
MIN_LEASE = 6.0  # a trainer's lease outlasts its renewing thread starved by a busy machine
DEADLINE_GRACE = 10.0  # seconds past its deadline before a job is failed from outside
KEPT_LOGS = 50  # trainers' logs kept on each machine (prune, elsewhere, cannot reach them)
_FILE_ID = re.compile(r"file-[0-9a-f]{24}")


class LocalBackend(Backend):
    """TF-IDF + per-label logistic regression chosen on validation (``selection``),
    trained in a child process."""

    name = "local"
    base_model = "tfidf-logreg"
    look_every = 1.0  # a look reads a few Redis keys: a finished job is seen within a second

    def __init__(
        self,
        store: ArtifactStore,
        train_timeout: float = 3600.0,
        grid: Grid = "small",
        lease: float = 15.0,
        processes: int | None = None,
    ) -> None:
        self.store = store
        self.processes = processes
        self.grid: Grid = grid
        self.train_timeout = train_timeout
        self.lease = max(lease, MIN_LEASE)
        self.defaults: dict[str, float | int] = {"seed": 42}
        self.records: JobRecords | None = None  # set by ``connect``
        self._trainer_config: dict[str, Any] = {}
        self.models = SavedModels(store)
        self._trainers: list[tuple[subprocess.Popen[bytes], str, str]] = []  # job id, token
        self._trainers_end_with_us = False

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        return cls(
            ArtifactStore.from_settings(settings),
            train_timeout=settings.local_train_timeout,
            grid=settings.local_grid,
            lease=settings.worker_lease,
            processes=settings.local_train_processes,
        )

    def connect(self, redis: Redis, settings: Settings) -> None:
        """Jobs are kept in this Redis; trainers are told how to reach it and the store."""
        super().connect(redis, settings)
        self.records = JobRecords(redis, settings.queue_name)
        # An embedded Redis ends with this process: so do the trainers started here, their
        # leases released, and the next worker on the same data resumes at once.
        self._trainers_end_with_us = settings.redis_url is None
        self._trainer_config = {
            "redis_url": settings.redis_url or url_of(redis),
            "redis_ca_file": str(settings.redis_ca_file) if settings.redis_ca_file else None,
            "redis_min_replicas": settings.redis_min_replicas,
            "prefix": settings.queue_name,
            "artifacts_url": self.store.url,
            "artifacts_options": self.store.options,
            "scratch": str(self.store.scratch_dir),
            "lease": self.lease,
            "processes": self.processes,
        }

    @classmethod
    def job_files(cls, settings: Settings, job_id: str) -> list[str]:
        """The job's artifacts (its model) and Redis keys (record, progress, lease)."""
        return [backend_key("local", "jobs", job_id)]

    @classmethod
    def job_records(cls, settings: Settings, job_id: str) -> list[str]:
        return job_keys(settings.queue_name, job_id)

    def hyperparameters(self, overrides: dict[str, float | int]) -> dict[str, float | int]:
        return {**self.defaults, **checked_hyperparameters(self.name, overrides, RANGES)}

    # --- files -------------------------------------------------------------------------
    async def upload_file(self, path: Path, tag: str) -> UploadedFile:
        return await asyncio.to_thread(self._store_file, path)

    def _store_file(self, path: Path) -> UploadedFile:
        """Content-addressed, so uploading the same file twice stores it once."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
        key = _file_key(f"file-{digest}")
        if not self.store.exists(key):
            self.store.save_file(path, key)
        return UploadedFile(id=f"file-{digest}", filename=path.name, bytes=path.stat().st_size)

    def _uploaded(self, file_id: str) -> str:
        key = _file_key(file_id)
        if not _FILE_ID.fullmatch(file_id) or not self.store.exists(key):
            raise BackendError(f"local backend: no uploaded file {file_id!r}")
        return key

    # --- jobs --------------------------------------------------------------------------
    def _records(self) -> JobRecords:
        if self.records is None:
            raise BackendError("local backend: not connected to Redis, where its jobs are kept")
        return self.records

    async def _job(self, job_id: str) -> LocalJob:
        job = await self._records().get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise BackendError(f"local backend: no job {job_id!r}")
        return job

    async def create_job(self, request: JobRequest) -> TrainingJob:
        """Idempotent: the job id comes from the suffix (the run id)."""
        job_id = f"ftjob-{request.suffix}"
        if not JOB_ID.fullmatch(job_id):
            raise BackendError(f"local backend: {request.suffix!r} cannot name a job")
        if await self._records().get(job_id) is None:
            files = [request.training_file_id, *request.validation_file_ids[:1]]
            keys = await asyncio.to_thread(lambda: [self._uploaded(f) for f in files])
            job = LocalJob(
                id=job_id,
                model=self.base_model,
                target=TARGET,
                training_file=keys[0],
                validation_file=keys[1] if len(keys) > 1 else None,
                hyperparameters=self.hyperparameters(request.hyperparameters),
                grid=self.grid,
            )
            await self._records().create(job)
        return await self.get_job(job_id)

    async def get_job(self, job_id: str) -> TrainingJob:
        """Advance the job as far as its record and trainer allow, then describe it."""
        self._trainers = [t for t in self._trainers if t[0].poll() is None]  # reap
        job = await self._job(job_id)
        if job.status == JobStatus.QUEUED:
            found = await asyncio.to_thread(self._validate, job)
            job = await self._records().update(job_id, when(JobStatus.QUEUED, **found))
        progress = await self._records().progress(job_id)
        status, error, fine_tuned = job.status, job.error, None
        if status == JobStatus.RUNNING:
            status, error = await self._running(job, progress)
            if status == JobStatus.SUCCESS:
                fine_tuned = MODEL_PREFIX + job_id
        return TrainingJob(
            id=job_id,
            status=status,
            model=job.model,
            fine_tuned_model=fine_tuned,
            checkpoints=[Checkpoint(**c) for c in progress.checkpoints],
            classifier_targets=[ClassifierTarget(name=job.target, labels=job.labels)],
            metadata={**job.metadata, **progress.as_metadata()},
            error=error,
        )

    async def _running(
        self, job: LocalJob, progress: TrainerProgress
    ) -> tuple[JobStatus, str | None]:
        """The status of a started job: done, failed, or still training (a trainer started
        here if none holds the lease)."""
        if progress.state == "succeeded":
            return JobStatus.SUCCESS, None
        if progress.state == "failed":
            return JobStatus.FAILED, progress.error
        if job.deadline is not None and time.time() > job.deadline + DEADLINE_GRACE:
            self._kill_trainer(job.id, progress)  # stuck in one long step past its deadline
            error = overdue(job.deadline_seconds or self.train_timeout)
            failed = when(JobStatus.RUNNING, status=JobStatus.FAILED, error=error)
            await self._records().update(job.id, failed)
            return JobStatus.FAILED, error
        if await self._records().trainer(job.id) is not None:
            return JobStatus.RUNNING, None
        if job.trainer_starts >= MAX_TRAINER_STARTS:
            where = f" (last on {progress.host}, pid {progress.pid})" if progress.host else ""
            return JobStatus.FAILED, (
                f"the trainer stopped {MAX_TRAINER_STARTS} times{where}; its log is "
                f"{self._log_path(job.id)} on that machine"
            )
        await self._start_trainer(job.id)
        return JobStatus.RUNNING, None

    def _validate(self, job: LocalJob) -> dict[str, Any]:
        """Check both files the way the API would; list the labels seen."""
        try:
            train = self._rows(job.training_file)
            valid = self._rows(job.validation_file) if job.validation_file else []
            labels: set[str] = set()
            for record in train:
                if job.target not in record["labels"]:
                    where = self.store.url_of(job.training_file)
                    raise RecipeError(f"{where}: a row has no {job.target!r} labels")
                labels.update(record["labels"][job.target])
        except (RecipeError, ArtifactNotFound) as exc:
            return {"status": JobStatus.FAILED_VALIDATION, "error": str(exc)}
        if not train:
            where = self.store.url_of(job.training_file)
            return {"status": JobStatus.FAILED_VALIDATION, "error": f"{where} is empty"}
        words = sum(len(r["text"].split()) for r in train + valid)
        fits = fits_per_label(job.grid)  # type: ignore[arg-type]
        return {
            "status": JobStatus.VALIDATED,
            "labels": sorted(labels),
            "metadata": {
                "train_rows": len(train),
                "validation_rows": len(valid),
                "data_tokens": words,
                "grid": job.grid,
                "expected_duration_seconds": max(
                    1, round(len(train) * len(labels) * fits / FITS_PER_SECOND)
                ),
                "cost": 0.0,
                "cost_currency": "EUR",
            },
        }

    def _rows(self, key: str) -> list[dict[str, Any]]:
        """An uploaded file's rows; a malformed one named by the file's URL and line."""
        return parse_jsonl(self.store.load_text(key).splitlines(), self.store.url_of(key))

    async def start_job(self, job_id: str) -> TrainingJob:
        job = await self._job(job_id)
        if job.status == JobStatus.QUEUED:
            await self.get_job(job_id)
        started = when(
            JobStatus.VALIDATED,
            status=JobStatus.RUNNING,
            deadline=time.time() + self.train_timeout,  # the trainer stops there
            deadline_seconds=self.train_timeout,
        )
        job = await self._records().update(job_id, started)
        if job.status != JobStatus.RUNNING:
            raise BackendError(f"local backend: job {job_id} is {job.status}, it cannot start")
        return await self.get_job(job_id)

    async def cancel_job(self, job_id: str) -> TrainingJob:
        """Cancel the job: its trainer stops at once here, within a third of the lease on
        another machine."""
        job = await self._job(job_id)
        progress = await self._records().progress(job_id)
        if not job.status.terminal and progress.state != "succeeded":
            await self._records().update(job_id, cancel)
            self._kill_trainer(job_id, progress)
        return await self.get_job(job_id)

    # --- the trainer process -------------------------------------------------------------
    async def close(self) -> None:
        """Stop the trainers started here when they end with this process (an embedded
        Redis): each releases its lease as it stops (SIGTERM)."""
        if not self._trainers_end_with_us:
            return
        alive = [t for t in self._trainers if t[0].poll() is None]
        for trainer, _, _ in alive:
            trainer.terminate()
        for trainer, job_id, token in alive:
            try:
                await asyncio.to_thread(trainer.wait, STOP_WAIT)
            except subprocess.TimeoutExpired:
                trainer.kill()
            with contextlib.suppress(Exception):  # stopped before it could release it itself
                await release_lease(self._records().redis, self._records().prefix, job_id, token)

    def _log_path(self, job_id: str) -> Path:
        return self.store.local_dir("logs") / f"local-trainer-{job_id}.log"

    async def _start_trainer(self, job_id: str) -> None:
        """Take the job's lease and start a trainer with it (nothing when the lease is
        taken: another look has just started one)."""
        token = new_token()  # the lease covers the trainer's start-up; then it renews it
        if not await self._records().take_lease(job_id, token, max(self.lease, STARTUP)):
            return
        try:
            await self._records().update(job_id, started_once)
        except BaseException:  # no trainer under it: the next look need not wait it out
            with contextlib.suppress(Exception):
                await release_lease(self._records().redis, self._records().prefix, job_id, token)
            raise
        await asyncio.to_thread(_keep_newest, self._log_path(job_id).parent, KEPT_LOGS - 1)
        env = {**os.environ, CONFIG_ENV: json.dumps(self._trainer_config)}
        with self._log_path(job_id).open("ab") as log:
            self._trainers.append(
                (
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "modfactory.backends.local.trainer",
                            job_id,
                            "--token",
                            token,
                        ],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    job_id,
                    token,
                )
            )

    def _kill_trainer(self, job_id: str, progress: TrainerProgress) -> None:
        """SIGKILL the job's trainer if it runs on this machine (checked to be that very
        process); one elsewhere stops by itself within a third of its lease."""
        if progress.host != socket.gethostname() or not progress.pid:
            return
        try:
            command = Path(f"/proc/{progress.pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"backends.local.trainer" in command and job_id.encode() in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(progress.pid, signal.SIGKILL)

    # --- inference: the saved models (``models``) -----------------------------------------
    async def classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        return await asyncio.to_thread(self.models.scores, model, inputs)

    async def scorer(self, model: str) -> Scorer:
        """The model loaded once (off the event loop) and kept by the scorer itself, never
        evicted by other models; each call scores in a worker thread."""
        bundle = await asyncio.to_thread(self.models.load, model)

        async def score(inputs: list[str]) -> list[TargetScores]:
            return await asyncio.to_thread(scores_of, bundle, inputs)

        return score


def _file_key(file_id: str) -> str:
    return backend_key("local", "files", f"{file_id}.jsonl")


def _keep_newest(directory: Path, count: int) -> None:
    """Delete all but the ``count`` newest trainers' logs in ``directory``."""
    logs = sorted(directory.glob("local-trainer-*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[: max(0, len(logs) - count)]:
        old.unlink(missing_ok=True)
