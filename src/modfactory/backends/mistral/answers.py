"""What the Mistral SDK's answers mean in the backend's terms: a fine-tuning job as a
``TrainingJob`` (its error taken from its own events), an error body as the one line that
says what was refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from modfactory.values import Checkpoint, ClassifierTarget, TrainingJob


def job_of(out: Any) -> TrainingJob:
    """The SDK's job object, as the backend interface describes jobs."""
    events = [
        {"name": e.name, "data": e.data, "created_at": e.created_at}
        for e in (getattr(out, "events", None) or [])
    ]
    error = None
    if out.status in ("FAILED", "FAILED_VALIDATION", "CANCELLED"):
        error = next(
            (
                str(e["data"].get("error") or e["data"].get("message"))
                for e in reversed(events)
                if isinstance(e["data"], dict)
                and (e["data"].get("error") or e["data"].get("message"))
            ),
            None,
        )
    metadata = out.metadata.model_dump() if getattr(out, "metadata", None) else {}
    hyper = out.hyperparameters.model_dump() if getattr(out, "hyperparameters", None) else {}
    if hyper.get("epochs") is not None:
        metadata["epochs"] = hyper["epochs"]
    return TrainingJob(
        id=out.id,
        status=str(out.status),
        model=out.model,
        fine_tuned_model=out.fine_tuned_model,
        checkpoints=[
            Checkpoint(
                step=c.step_number,
                train_loss=c.metrics.train_loss,
                valid_loss=c.metrics.valid_loss,
                valid_mean_token_accuracy=c.metrics.valid_mean_token_accuracy,
                created_at=datetime.fromtimestamp(c.created_at, UTC),
            )
            for c in (getattr(out, "checkpoints", None) or [])
        ],
        classifier_targets=[
            ClassifierTarget(name=t.name, labels=list(t.labels))
            for t in (getattr(out, "classifier_targets", None) or [])
        ],
        metadata={k: v for k, v in metadata.items() if v is not None},
        error=error,
        events=events,
    )


def error_detail(body: str) -> str:
    """The API's validation message, e.g. ``hyperparameters.learning_rate: ...``."""
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        return body[:500]
    if isinstance(detail, list):
        parts = []
        for d in detail:
            if isinstance(d, dict):
                where = ".".join(str(p) for p in d.get("loc", []) if p != "body")
                parts.append(f"{where}: {d.get('msg')}" if where else str(d.get("msg")))
        return "; ".join(parts)
    return str(detail)[:500]
