"""An example backend plugin for modfactory: per label, the words that carry it.

Training counts, for every word of the training file, how often it comes with each label;
a text's score for a label is the highest smoothed share of that label among its words.
Files, jobs and models are JSON files under ``MODFACTORY_DATA_DIR/keyword``. Everything a
backend must do is here: validate hyperparameters, take files, create / start / follow /
cancel a job idempotently, and classify with the model it made.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from modfactory.backends.base import (
    Backend,
    BackendError,
    JobRequest,
    TargetScores,
    checked_hyperparameters,
)
from modfactory.settings import Settings
from modfactory.values import ClassifierTarget, JobStatus, TrainingJob, UploadedFile

TARGET = "moderation"
RANGES = {"min_count": (int, 1, 1000)}  # how often a word must be seen to count
_WORD = re.compile(r"[a-z']+")


class KeywordBackend(Backend):
    """Word-label counts, trained in the worker in a fraction of a second."""

    name = "keyword"
    base_model = "keyword-counts"

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_settings(cls, settings: Settings) -> KeywordBackend:
        return cls(settings.data_dir / "keyword")

    @classmethod
    def job_files(cls, settings: Settings, job_id: str) -> list[Path]:
        return [settings.data_dir / "keyword" / "jobs" / job_id]

    def hyperparameters(self, overrides: dict[str, float | int]) -> dict[str, float | int]:
        return {"min_count": 2, **checked_hyperparameters(self.name, overrides, RANGES)}

    async def upload_file(self, path: Path, tag: str) -> UploadedFile:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
        stored = self.root / "files" / f"file-{digest}.jsonl"
        stored.parent.mkdir(parents=True, exist_ok=True)
        if not stored.exists():
            shutil.copyfile(path, stored)
        return UploadedFile(id=stored.stem, filename=path.name, bytes=stored.stat().st_size)

    def _job_dir(self, job_id: str) -> Path:
        if not re.fullmatch(r"kwjob-[\w-]+", job_id):
            raise BackendError(f"keyword backend: no job {job_id!r}")
        return self.root / "jobs" / job_id

    def _read(self, job_id: str) -> dict[str, Any]:
        path = self._job_dir(job_id) / "job.json"
        if not path.exists():
            raise BackendError(f"keyword backend: no job {job_id!r}")
        return json.loads(path.read_text())

    def _write(self, job: dict[str, Any]) -> TrainingJob:
        directory = self._job_dir(job["id"])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "job.tmp").write_text(json.dumps(job))
        (directory / "job.tmp").replace(directory / "job.json")
        return self._described(job)

    def _described(self, job: dict[str, Any]) -> TrainingJob:
        return TrainingJob(
            id=job["id"],
            status=job["status"],
            model=self.base_model,
            fine_tuned_model=job.get("model"),
            classifier_targets=[ClassifierTarget(name=TARGET, labels=job.get("labels", []))],
            metadata={"cost": 0.0, "cost_currency": "EUR"},
            error=job.get("error"),
        )

    async def create_job(self, request: JobRequest) -> TrainingJob:
        """Idempotent: the job id is made of the suffix, which identifies the run."""
        job_id = f"kwjob-{request.suffix}"
        if (self._job_dir(job_id) / "job.json").exists():
            return await self.get_job(job_id)
        train = self.root / "files" / f"{request.training_file_id}.jsonl"
        if not train.exists():
            raise BackendError(f"keyword backend: no uploaded file {request.training_file_id!r}")
        return self._write(
            {
                "id": job_id,
                "status": JobStatus.VALIDATED,
                "training_file": str(train),
                "hyperparameters": self.hyperparameters(request.hyperparameters),
            }
        )

    async def get_job(self, job_id: str) -> TrainingJob:
        return self._described(self._read(job_id))

    async def start_job(self, job_id: str) -> TrainingJob:
        """Train at once; a job that is running or over is left as it is."""
        job = self._read(job_id)
        if job["status"] != JobStatus.VALIDATED:
            return self._described(job)
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        seen: Counter[str] = Counter()
        with open(job["training_file"], encoding="utf-8") as rows:
            for line in rows:
                row = json.loads(line)
                words = set(_WORD.findall(row["text"].lower()))
                seen.update(words)
                for label in row["labels"][TARGET]:
                    counts[label].update(words)
        least = job["hyperparameters"]["min_count"]
        model = {
            label: {w: (c + 1) / (seen[w] + 2) for w, c in words.items() if seen[w] >= least}
            for label, words in counts.items()
        }
        (self._job_dir(job_id) / "model.json").write_text(json.dumps(model))
        job.update(status=JobStatus.SUCCESS, model=f"ft:keyword:{job_id}", labels=sorted(model))
        return self._write(job)

    async def cancel_job(self, job_id: str) -> TrainingJob:
        job = self._read(job_id)
        if not JobStatus(job["status"]).terminal:
            job["status"] = JobStatus.CANCELLED
            return self._write(job)
        return self._described(job)

    async def classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        job_id = model.removeprefix("ft:keyword:")
        path = self._job_dir(job_id) / "model.json"
        if not model.startswith("ft:keyword:") or not path.exists():
            raise BackendError(f"keyword backend: no model {model!r}")
        weights = json.loads(path.read_text())
        results: list[TargetScores] = []
        for text in inputs:
            words = set(_WORD.findall(text.lower()))
            scores = {
                label: max((table.get(w, 0.0) for w in words), default=0.0)
                for label, table in weights.items()
            }
            results.append({TARGET: {"scores": scores}})
        return results
