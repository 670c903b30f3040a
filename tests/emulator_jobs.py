"""What the emulator's jobs and models do: a fine-tuning job's time-driven timeline
(statuses, events, checkpoints, the fine-tuned model at the end), the naive-Bayes
classifier a finished job answers with, and the moderation model's word cues."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Timing:
    """Seconds each phase of a job lasts."""

    validating: float = 0.3
    queued: float = 0.2
    step: float = 0.15  # between two checkpoints
    checkpoints: int = 4
    steps_per_checkpoint: int = 50
    batch_queued: float = 0.2  # a batch job waits this long, then runs
    batch_running: float = 0.4  # and runs this long


class Job:
    """A created fine-tuning job: its request, and when it was started or cancelled."""

    def __init__(self, body: dict[str, Any], labels: list[str], rows: int) -> None:
        self.id = str(uuid.uuid4())
        self.body = body
        self.labels = labels
        self.rows = rows
        self.created = time.time()
        self.started: float | None = None
        self.cancelled: float | None = None


def job_view(
    job: Job,
    timing: Timing,
    *,
    quote: float,
    fail_validation: str | None = None,
    fail_training: str | None = None,
    detailed: bool = True,
) -> dict[str, Any]:
    """The job as the API shows it now (``detailed``: with its events and checkpoints)."""
    now = min(time.time(), job.cancelled or math.inf)  # a cancelled job goes no further
    status, events, checkpoints, fine_tuned = timeline(
        job, timing, now, fail_validation, fail_training
    )
    hyper = dict(job.body["hyperparameters"])
    hyper.setdefault("weight_decay", 0.1)
    hyper.setdefault("warmup_fraction", 0.05)
    hyper.setdefault("epochs", round(hyper.get("training_steps", 100) * 16 / max(job.rows, 1), 4))
    out: dict[str, Any] = {
        "id": job.id,
        "auto_start": job.body.get("auto_start", True),
        "model": job.body["model"],
        "status": status,
        "created_at": int(job.created),
        "modified_at": int(now),
        "training_files": [f["file_id"] for f in job.body.get("training_files", [])],
        "validation_files": job.body.get("validation_files") or [],
        "object": "job",
        "fine_tuned_model": fine_tuned,
        "suffix": job.body.get("suffix"),
        "integrations": [
            {"type": "wandb", "project": i["project"]} for i in job.body.get("integrations") or []
        ]
        or None,
        "trained_tokens": None,
        "metadata": {
            "expected_duration_seconds": 3400,
            "cost": quote,
            "cost_currency": "EUR",
            "train_tokens_per_step": 131072,
            "train_tokens": 131072 * hyper.get("training_steps", 100),
            "data_tokens": 40 * job.rows,
            "estimated_start_time": None,
        }
        if status not in ("QUEUED", "VALIDATING", "FAILED_VALIDATION")
        else None,
        "job_type": "classifier",
        "hyperparameters": hyper,
        "classifier_targets": [
            {
                "name": "moderation",
                "labels": job.labels,
                "weight": 1.0,
                "loss_function": "multi_class",
            }
        ],
    }
    if detailed:
        out["events"] = events
        out["checkpoints"] = checkpoints
    return out


class BatchRun:
    """A created batch job: its request, when it was created and cancelled, and its
    output file once it has been written."""

    def __init__(self, body: dict[str, Any], requests: int) -> None:
        self.id = str(uuid.uuid4())
        self.body = body
        self.requests = requests
        self.created = time.time()
        self.cancelled: float | None = None
        self.output_file: str | None = None
        self.failed = 0


def batch_status(run: BatchRun, timing: Timing, now: float) -> tuple[str, int]:
    """(status, requests completed) of a batch job at ``now``."""
    if run.cancelled is not None:
        return "CANCELLED", 0
    started = run.created + timing.batch_queued
    if now < started:
        return "QUEUED", 0
    share = (now - started) / timing.batch_running
    if share < 1:
        return "RUNNING", int(run.requests * share)
    return "SUCCESS", run.requests


def batch_view(run: BatchRun, status: str, completed: int) -> dict[str, Any]:
    """The batch job as the API shows it (``BatchJobOut``)."""
    done = status == "SUCCESS"
    return {
        "id": run.id,
        "object": "batch",
        "input_files": run.body.get("input_files") or [],
        "metadata": run.body.get("metadata"),
        "endpoint": run.body["endpoint"],
        "model": run.body.get("model"),
        "agent_id": None,
        "output_file": run.output_file if done else None,
        "error_file": None,
        "errors": [],
        "outputs": None,
        "status": status,
        "created_at": int(run.created),
        "total_requests": run.requests,
        "completed_requests": completed,
        "succeeded_requests": completed - run.failed if done else completed,
        "failed_requests": run.failed if done else 0,
        "started_at": int(run.created) if status != "QUEUED" else None,
        "completed_at": int(time.time()) if done else None,
    }


def timeline(
    job: Job,
    t: Timing,
    now: float,
    fail_validation: str | None,
    fail_training: str | None,
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """Where the job has got to at ``now``: its status, events (newest last),
    checkpoints (newest first) and, once it succeeded, the fine-tuned model's id."""
    events: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    status, fine_tuned = "QUEUED", None

    def becomes(new: str, at: float, error: str | None = None) -> str:
        """A status change, with its event (as the API lists them)."""
        data = {"status": new, **({"error": error} if error else {})}
        events.append({"name": "status-updated", "data": data, "created_at": int(at)})
        return new

    status = becomes("QUEUED", job.created)
    if now >= job.created + t.validating / 2:
        status = becomes("VALIDATING", job.created + t.validating / 2)
    validated_at = job.created + t.validating
    if now >= validated_at:
        if fail_validation:
            status = becomes("FAILED_VALIDATION", validated_at, fail_validation)
        else:
            status = becomes("VALIDATED", validated_at)
    if job.started is not None:
        status = becomes("QUEUED", job.started)
        running_at = job.started + t.queued
        if now >= running_at:
            status = becomes("RUNNING", running_at)
            done = min(t.checkpoints, int((now - running_at) / t.step))
            for k in range(1, done + 1):
                loss = 0.7 * math.exp(-0.4 * k) + 0.05
                checkpoints.insert(
                    0,
                    {
                        "metrics": {
                            "train_loss": loss,
                            "valid_loss": loss * 1.1,
                            "valid_mean_token_accuracy": 1 - loss / 2,
                        },
                        "step_number": k * t.steps_per_checkpoint,
                        "created_at": int(running_at + k * t.step),
                    },
                )
            ended_at = running_at + (t.checkpoints + 1) * t.step
            if now >= ended_at and fail_training:
                status = becomes("FAILED", ended_at, fail_training)
            elif now >= ended_at:
                status = becomes("SUCCESS", ended_at)
                suffix = job.body.get("suffix") or "x"
                fine_tuned = f"ft:classifier:{job.body['model']}:{job.id[:8]}:{suffix}"
    if job.cancelled is not None:
        status = becomes("CANCELLED", job.cancelled)
        fine_tuned = None
    return status, events, checkpoints, fine_tuned


def naive_bayes(content: bytes) -> Callable[[str], dict[str, float]]:
    rows = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
    labels = sorted({label for r in rows for label in r["labels"]["moderation"]})
    word_counts: dict[str, Counter[str]] = defaultdict(Counter)
    docs: Counter[str] = Counter()
    vocabulary: set[str] = set()
    for r in rows:
        words = set(r["text"].lower().split())
        vocabulary |= words
        for label in r["labels"]["moderation"]:
            docs[label] += 1
            word_counts[label].update(words)

    def score(text: str) -> dict[str, float]:
        words = set(text.lower().split()) & vocabulary
        out = {}
        for label in labels:
            pos, neg = docs[label], len(rows) - docs[label]
            logit = math.log((pos + 1) / (neg + 1))
            for w in words:
                in_pos = word_counts[label][w]
                in_neg = sum(word_counts[o][w] for o in labels if o != label)
                logit += math.log((in_pos + 1) / (pos + 2)) - math.log((in_neg + 1) / (neg + 2))
            out[label] = 1 / (1 + math.exp(-max(-30, min(30, logit))))
        return out

    return score


MODERATION_CUES = {  # the moderation endpoint's categories, and words that trip them
    "sexual": {"nude", "sexy", "naked", "erotic", "lewd"},
    "hate_and_discrimination": {"foreigners", "immigrants", "heathens", "invaders"},
    "violence_and_threats": {"hurt", "destroy", "punish", "attack", "smash"},
    "dangerous_and_criminal_content": set(),
    "selfharm": set(),
    "health": set(),
    "financial": set(),
    "law": set(),
    "pii": set(),
}


def moderation_scores(text: str) -> dict[str, float]:
    """The moderation model's category scores of ``text``: high where a cue word occurs."""
    words = set(text.lower().split())
    return {category: 0.9 if words & cues else 0.02 for category, cues in MODERATION_CUES.items()}
