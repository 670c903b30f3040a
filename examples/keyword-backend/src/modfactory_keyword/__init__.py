"""An example backend plugin for modfactory: per label, the words that carry it.

Training counts, for every word of the training file, how often it comes with each label;
a text's score for a label is the highest smoothed share of that label among its words.
Files, jobs and models are kept in modfactory's artifact store (``keyword/…`` under
MODFACTORY_ARTIFACTS_URL: the data dir, or a bucket every machine shares), so any worker
may take any step. Everything a backend must do is here: validate hyperparameters, take
files, create / start / follow / cancel a job idempotently, and classify with the model it
made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from modfactory.artifacts import ArtifactError, ArtifactStore, backend_key
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

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> KeywordBackend:
        return cls(ArtifactStore.from_settings(settings))

    @classmethod
    def job_files(cls, settings: Settings, job_id: str) -> list[str]:
        return [backend_key("keyword", "jobs", job_id)]

    def hyperparameters(self, overrides: dict[str, float | int]) -> dict[str, float | int]:
        return {"min_count": 2, **checked_hyperparameters(self.name, overrides, RANGES)}

    # The artifact store blocks (fsspec): each use runs in a thread.
    async def _read(self, kind: str, name: str, *rest: str) -> Any:
        """The JSON kept at ``keyword/<kind>/<name>/<rest>``; a BackendError naming it when
        there is none (or ``name`` could not be one)."""
        try:
            key = backend_key("keyword", kind, name, *rest)
            text = await asyncio.to_thread(self.store.load_text, key)
        except ArtifactError:
            raise BackendError(f"keyword backend: no {kind[:-1]} {name!r}") from None
        return json.loads(text)

    async def _write(self, job: dict[str, Any]) -> TrainingJob:
        key = backend_key("keyword", "jobs", job["id"], "job.json")
        await asyncio.to_thread(self.store.save_text, key, json.dumps(job))
        return self._described(job)

    async def upload_file(self, path: Path, tag: str) -> UploadedFile:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        file_id = f"file-{hashlib.sha256(path.read_bytes()).hexdigest()[:24]}"
        key = backend_key("keyword", "files", file_id)
        await asyncio.to_thread(self.store.save_text, key, json.dumps(rows))
        return UploadedFile(id=file_id, filename=path.name, bytes=path.stat().st_size)

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
        try:
            return self._described(await self._read("jobs", job_id, "job.json"))
        except BackendError:
            pass  # not created yet
        await self._read("files", request.training_file_id)  # it must have been uploaded
        return await self._write(
            {
                "id": job_id,
                "status": JobStatus.VALIDATED,
                "training_file": request.training_file_id,
                "hyperparameters": self.hyperparameters(request.hyperparameters),
            }
        )

    async def get_job(self, job_id: str) -> TrainingJob:
        return self._described(await self._read("jobs", job_id, "job.json"))

    async def start_job(self, job_id: str) -> TrainingJob:
        """Train at once; a job that is running or over is left as it is."""
        job = await self._read("jobs", job_id, "job.json")
        if job["status"] != JobStatus.VALIDATED:
            return self._described(job)
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        seen: Counter[str] = Counter()
        for row in await self._read("files", job["training_file"]):
            words = set(_WORD.findall(row["text"].lower()))
            seen.update(words)
            for label in row["labels"][TARGET]:
                counts[label].update(words)
        least = job["hyperparameters"]["min_count"]
        model = {
            label: {w: (c + 1) / (seen[w] + 2) for w, c in words.items() if seen[w] >= least}
            for label, words in counts.items()
        }
        key = backend_key("keyword", "jobs", job_id, "model.json")
        await asyncio.to_thread(self.store.save_text, key, json.dumps(model))
        job.update(status=JobStatus.SUCCESS, model=f"ft:keyword:{job_id}", labels=sorted(model))
        return await self._write(job)

    async def cancel_job(self, job_id: str) -> TrainingJob:
        job = await self._read("jobs", job_id, "job.json")
        if not JobStatus(job["status"]).terminal:
            job["status"] = JobStatus.CANCELLED
            return await self._write(job)
        return self._described(job)

    async def classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        if not model.startswith("ft:keyword:"):
            raise BackendError(f"keyword backend: no model {model!r}")
        weights = await self._read("jobs", model.removeprefix("ft:keyword:"), "model.json")
        results: list[TargetScores] = []
        for text in inputs:
            words = set(_WORD.findall(text.lower()))
            scores = {
                label: max((table.get(w, 0.0) for w in words), default=0.0)
                for label, table in weights.items()
            }
            results.append({TARGET: {"scores": scores}})
        return results
