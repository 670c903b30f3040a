"""What the Mistral SDK's answers mean in the backend's terms: a fine-tuning job as a
``TrainingJob`` (its error taken from its own events), an error body as the one line that
says what was refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from modfactory.values import BatchJob, Checkpoint, ClassifierTarget, TrainingJob


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


def batch_of(out: Any) -> BatchJob:
    """The SDK's batch job, as the backend interface describes batch jobs."""
    return BatchJob(
        id=out.id,
        status=str(out.status),
        total_requests=out.total_requests,
        completed_requests=out.completed_requests,
        failed_requests=out.failed_requests,
        output_file=out.output_file or None,
        errors=[e.message for e in (out.errors or [])],
        metadata={str(k): str(v) for k, v in (out.metadata or {}).items()},
    )


def batch_lines(content: bytes, job_id: str, requests: int) -> list[list[dict[str, Any]]]:
    """A batch job's output file as each request's results, in request order (the
    ``custom_id`` is the request's number); ValueError naming the first request that
    failed or is missing."""
    found: dict[int, list[dict[str, Any]]] = {}
    for number, line in enumerate(content.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            custom_id = int(row["custom_id"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"batch job {job_id}: output line {number} is not a result") from None
        response = row.get("response") or {}
        status = response.get("status_code")
        body = response.get("body") or {}
        if row.get("error") or status != 200 or "results" not in body:
            why = row.get("error") or body.get("message") or body or f"HTTP {status}"
            raise ValueError(f"batch job {job_id}: request {custom_id} failed: {str(why)[:300]}")
        found[custom_id] = body["results"]
    missing = [i for i in range(requests) if i not in found]
    if missing:
        raise ValueError(
            f"batch job {job_id} answered {requests - len(missing)} of {requests} requests "
            f"(the first missing: {missing[0]})"
        )
    return [found[i] for i in range(requests)]


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
