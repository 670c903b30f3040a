"""The embedded backend: trains a real classifier on this machine, no key, no network.

Files and jobs live under ``DATA_DIR/local``. Training runs in its own process
(``local_trainer``), which holds the job's lock while alive: ``get_job`` sees a dead
trainer at once and starts it again, and a job whose model is saved is never retrained.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from modfactory.backends.base import (
    Backend,
    BackendError,
    HyperRanges,
    JobRequest,
    Scorer,
    TargetScores,
    checked_hyperparameters,
)
from modfactory.backends.local_selection import Grid, fits_per_label
from modfactory.backends.local_selection import scores as selection_scores
from modfactory.backends.local_trainer import (
    JOB_FILE,
    MODEL_FILE,
    PROGRESS_FILE,
    overdue,
    read_json,
    write_json,
)
from modfactory.data.recipe import TARGET, RecipeError, read_jsonl
from modfactory.fileio import atomic_output
from modfactory.settings import Settings
from modfactory.values import Checkpoint, ClassifierTarget, JobStatus, TrainingJob, UploadedFile

MODEL_PREFIX = "ft:classifier:local:"
RANGES: HyperRanges = {"seed": (int, 0, 2**32 - 1)}  # what the grid's fits draw on
FITS_PER_SECOND = 15_000  # train rows x candidates fitted per second here, for the estimate
MAX_TRAINER_STARTS = 3
DEADLINE_GRACE = 10.0  # seconds past its deadline before a trainer is killed from outside
CACHED_MODELS = 4  # loaded models kept in memory: a challenger, its champion, and a few


class LocalBackend(Backend):
    """TF-IDF + per-label logistic regression chosen on validation (``local_selection``),
    trained in a child process."""

    name = "local"
    base_model = "tfidf-logreg"

    def __init__(
        self,
        data_dir: Path,
        train_timeout: float = 3600.0,
        grid: Grid = "small",
    ) -> None:
        self.root = data_dir / "local"
        self.grid: Grid = grid
        self.train_timeout = train_timeout
        self.defaults: dict[str, float | int] = {"seed": 42}
        self._models: OrderedDict[str, Any] = OrderedDict()  # the few used last (LRU)
        self._models_lock = threading.Lock()  # classify runs in worker threads
        self._trainers: list[subprocess.Popen[bytes]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        return cls(
            settings.data_dir,
            train_timeout=settings.local_train_timeout,
            grid=settings.local_grid,
        )

    @classmethod
    def job_files(cls, settings: Settings, job_id: str) -> list[Path]:
        """The job's directory: its record, the trainer's progress and the model."""
        return [settings.data_dir / "local" / "jobs" / job_id]

    def hyperparameters(self, overrides: dict[str, float | int]) -> dict[str, float | int]:
        return {**self.defaults, **checked_hyperparameters(self.name, overrides, RANGES)}

    # --- files -------------------------------------------------------------------------
    async def upload_file(self, path: Path, tag: str) -> UploadedFile:
        return await asyncio.to_thread(self._store_file, path)

    def _store_file(self, path: Path) -> UploadedFile:
        """Content-addressed, so uploading the same file twice stores it once."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
        stored = self.root / "files" / f"file-{digest}.jsonl"
        if not stored.exists():
            stored.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(stored) as tmp:  # two uploads of one file may race
                shutil.copyfile(path, tmp)
        return UploadedFile(id=stored.stem, filename=path.name, bytes=stored.stat().st_size)

    def _file_path(self, file_id: str) -> Path:
        path = self.root / "files" / f"{file_id}.jsonl"
        if not path.exists():
            raise BackendError(f"local backend: no uploaded file {file_id!r}")
        return path

    # --- jobs --------------------------------------------------------------------------
    def _job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    async def create_job(self, request: JobRequest) -> TrainingJob:
        """Idempotent: the job id comes from the suffix (the run id)."""
        job_id = f"ftjob-{request.suffix}"
        job_dir = self._job_dir(job_id)
        if not (job_dir / JOB_FILE).exists():
            job_dir.mkdir(parents=True, exist_ok=True)
            write_json(
                job_dir / JOB_FILE,
                {
                    "id": job_id,
                    "status": JobStatus.QUEUED,
                    "model": self.base_model,
                    "target": TARGET,
                    "training_file": str(self._file_path(request.training_file_id)),
                    "validation_file": str(self._file_path(request.validation_file_ids[0]))
                    if request.validation_file_ids
                    else None,
                    "hyperparameters": self.hyperparameters(request.hyperparameters),
                    "grid": self.grid,
                    "trainer_starts": 0,
                },
            )
        return await self.get_job(job_id)

    async def get_job(self, job_id: str) -> TrainingJob:
        return await asyncio.to_thread(self._refresh, job_id)

    async def start_job(self, job_id: str) -> TrainingJob:
        return await asyncio.to_thread(self._start, job_id)

    async def cancel_job(self, job_id: str) -> TrainingJob:
        """Cancel the job and kill its trainer at once (not after its next candidate)."""
        job_dir = self._job_dir(job_id)
        job = self._read_job(job_id)
        if not JobStatus(job["status"]).terminal and not (job_dir / MODEL_FILE).exists():
            job["status"] = JobStatus.CANCELLED
            write_json(job_dir / JOB_FILE, job)
            await asyncio.to_thread(self._kill_trainer, job_dir)
        return await self.get_job(job_id)

    def _read_job(self, job_id: str) -> dict[str, Any]:
        path = self._job_dir(job_id) / JOB_FILE
        if not path.exists():
            raise BackendError(f"local backend: no job {job_id!r}")
        return read_json(path)

    def _refresh(self, job_id: str) -> TrainingJob:
        """Advance the job as far as the files on disk allow, then describe it."""
        self._reap()
        job_dir = self._job_dir(job_id)
        job = self._read_job(job_id)
        status = JobStatus(job["status"])
        if status == JobStatus.QUEUED:
            job.update(self._validate(job))
            write_json(job_dir / JOB_FILE, job)
            status = JobStatus(job["status"])
        progress = read_json(job_dir / PROGRESS_FILE) if (job_dir / PROGRESS_FILE).exists() else {}
        error = job.get("error")
        fine_tuned = None
        if status == JobStatus.RUNNING:
            if (job_dir / MODEL_FILE).exists():
                status, fine_tuned = JobStatus.SUCCESS, MODEL_PREFIX + job_id
            elif progress.get("state") == "failed":
                status, error = JobStatus.FAILED, progress.get("error")
            elif time.time() > job.get("deadline", float("inf")) + DEADLINE_GRACE:
                self._kill_trainer(job_dir)  # stuck in one long step past its deadline
                job.update(status=JobStatus.FAILED, error=overdue(self.train_timeout))
                write_json(job_dir / JOB_FILE, job)
                status, error = JobStatus.FAILED, job["error"]
            elif job["trainer_starts"] >= MAX_TRAINER_STARTS and self._trainer_gone(job_dir):
                status = JobStatus.FAILED
                error = (
                    f"the trainer stopped {MAX_TRAINER_STARTS} times; see {job_dir / 'trainer.log'}"
                )
            else:
                self._ensure_trainer(job_id)
        return TrainingJob(
            id=job_id,
            status=status,
            model=job["model"],
            fine_tuned_model=fine_tuned,
            checkpoints=[Checkpoint(**c) for c in progress.get("checkpoints", [])],
            classifier_targets=[ClassifierTarget(name=job["target"], labels=job.get("labels", []))],
            metadata={**job.get("metadata", {}), **_chosen(progress)},
            error=error,
        )

    def _validate(self, job: dict[str, Any]) -> dict[str, Any]:
        """Check both files the way the API would; list the labels seen."""
        try:
            train = read_jsonl(Path(job["training_file"]))
            valid = read_jsonl(Path(job["validation_file"])) if job["validation_file"] else []
            labels: set[str] = set()
            for record in train:
                if job["target"] not in record["labels"]:
                    raise RecipeError(
                        f"{job['training_file']}: a row has no {job['target']!r} labels"
                    )
                labels.update(record["labels"][job["target"]])
        except (RecipeError, OSError) as exc:
            return {"status": JobStatus.FAILED_VALIDATION, "error": str(exc)}
        if not train:
            return {
                "status": JobStatus.FAILED_VALIDATION,
                "error": f"{job['training_file']} is empty",
            }
        words = sum(len(r["text"].split()) for r in train + valid)
        fits = fits_per_label(job["grid"])
        return {
            "status": JobStatus.VALIDATED,
            "labels": sorted(labels),
            "metadata": {
                "train_rows": len(train),
                "validation_rows": len(valid),
                "data_tokens": words,
                "grid": job["grid"],
                "expected_duration_seconds": max(
                    1, round(len(train) * len(labels) * fits / FITS_PER_SECOND)
                ),
                "cost": 0.0,
                "cost_currency": "EUR",
            },
        }

    def _start(self, job_id: str) -> TrainingJob:
        job = self._read_job(job_id)
        if job["status"] == JobStatus.QUEUED:
            self._refresh(job_id)
            job = self._read_job(job_id)
        if job["status"] == JobStatus.VALIDATED:
            job["status"] = JobStatus.RUNNING
            job["deadline"] = time.time() + self.train_timeout  # the trainer stops there
            job["deadline_seconds"] = self.train_timeout
            write_json(self._job_dir(job_id) / JOB_FILE, job)
        elif job["status"] != JobStatus.RUNNING:
            raise BackendError(f"local backend: job {job_id} is {job['status']}, it cannot start")
        return self._refresh(job_id)

    # --- the trainer process -------------------------------------------------------------
    def _kill_trainer(self, job_dir: Path) -> None:
        """SIGKILL the job's trainer if one is alive (checked to be that very process)."""
        progress_file = job_dir / PROGRESS_FILE
        pid = read_json(progress_file).get("pid") if progress_file.exists() else None
        if not pid or self._trainer_gone(job_dir):
            return
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"local_trainer" in command and str(job_dir).encode() in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _trainer_gone(self, job_dir: Path) -> bool:
        fd = self._try_lock(job_dir)
        if fd is None:
            return False
        os.close(fd)
        return True

    @staticmethod
    def _try_lock(job_dir: Path) -> int | None:
        fd = os.open(job_dir / "trainer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _ensure_trainer(self, job_id: str) -> None:
        """Start the trainer unless one holds the lock; the lock passes to the child."""
        job_dir = self._job_dir(job_id)
        fd = self._try_lock(job_dir)
        if fd is None:
            return  # a trainer is alive
        try:
            if (job_dir / MODEL_FILE).exists():
                return
            job = self._read_job(job_id)
            job["trainer_starts"] += 1
            write_json(job_dir / JOB_FILE, job)
            with (job_dir / "trainer.log").open("ab") as log:
                self._trainers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "modfactory.backends.local_trainer",
                            str(job_dir),
                            "--lock-fd",
                            str(fd),
                        ],
                        pass_fds=(fd,),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        finally:
            os.close(fd)

    def _reap(self) -> None:
        self._trainers = [p for p in self._trainers if p.poll() is None]

    # --- inference -----------------------------------------------------------------------
    async def classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        return await asyncio.to_thread(self._classify, model, inputs)

    async def scorer(self, model: str) -> Scorer:
        """The model loaded once (off the event loop) and kept by the scorer itself, never
        evicted by other models; each call scores in a worker thread."""
        bundle = await asyncio.to_thread(self._load, model)

        async def score(inputs: list[str]) -> list[TargetScores]:
            return await asyncio.to_thread(scores_of, bundle, inputs)

        return score

    def _load(self, model: str) -> dict[str, Any]:
        if not model.startswith(MODEL_PREFIX):
            raise BackendError(f"local backend: {model!r} is not a local model id")
        path = self._job_dir(model.removeprefix(MODEL_PREFIX)) / MODEL_FILE
        if not path.exists():
            raise BackendError(f"local backend: model {model!r} not found at {path}")
        import joblib

        return joblib.load(path)

    def _classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        with self._models_lock:
            if model not in self._models:
                self._models[model] = self._load(model)
                while len(self._models) > CACHED_MODELS:
                    self._models.popitem(last=False)
            self._models.move_to_end(model)
            bundle = self._models[model]
        return scores_of(bundle, inputs)


def _chosen(progress: dict[str, Any]) -> dict[str, Any]:
    """What the trainer chose per label, and the candidate it is fitting, as metadata."""
    found = {k: progress[k] for k in ("selection",) if k in progress}
    if "candidate" in progress and progress.get("state") == "running":
        found["fitting"] = progress["candidate"]
    return found


def scores_of(bundle: dict[str, Any], inputs: list[str]) -> list[TargetScores]:
    """A saved model's scores of ``inputs``: per text, each label's probability."""
    if bundle.get("version") != 2:  # the plain SGD models of earlier versions' grid "off"
        raise BackendError(
            "local backend: this model was saved in a format no longer read (plain SGD); "
            "train it again"
        )
    target = bundle["target"]
    return [{target: {"scores": s}} for s in selection_scores(bundle, inputs)]
