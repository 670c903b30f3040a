"""What the run page of ``/ui`` shows: a run document turned into plain values for the
template (stages with their times and details, the metrics tables, the charts there are,
the actions the run allows)."""

from __future__ import annotations

from typing import Any

from modfactory.evaluation import tables
from modfactory.store.run import STAGES, Run, RunState
from modfactory.triggers.ui_session import Session

CHART_NAMES = (
    ("distribution", "distribution_chart", "label distribution per split"),
    ("loss", "loss_chart", "training loss"),
    ("precision_recall", "pr_chart", "precision-recall per label"),
)


def _stages(run: Run) -> list[dict[str, Any]]:
    shown = []
    for name in STAGES:
        stage = run.stages[name]
        took = ""
        if stage.started_at:
            end = stage.finished_at or run.updated_at
            took = f"{(end - stage.started_at).total_seconds():.1f} s"
        detail = stage.error or ""
        if stage.state == "running" and stage.last_error:
            detail = f"retrying (attempt {stage.attempts} ended: {stage.last_error})"
        if name == "train" and run.training.status and not stage.error:
            last = run.training.checkpoints[-1] if run.training.checkpoints else None
            detail = run.training.status
            if last and last.train_loss is not None:
                detail += f" · step {last.step} train loss {last.train_loss:.4f}"
        if name == "build" and run.dataset:
            detail = ", ".join(f"{s} {v.rows:,}" for s, v in run.dataset.splits.items())
        if run.progress and run.progress.stage == name and stage.state == "running":
            p = run.progress
            detail = f"{p.what}: {p.done:,} of {p.total:,}"
        shown.append(
            {
                "name": name,
                "state": stage.state.value,
                "attempts": stage.attempts,
                "took": took,
                "detail": detail,
            }
        )
    return shown


def _actions(run: Run) -> list[tuple[str, str, str]]:
    actions = []
    if run.state == RunState.AWAITING_APPROVAL:
        cost = run.training.metadata.get("cost")
        actions.append(("approve", f"Approve the quoted cost ({cost})", "starts the training job"))
    if not run.state.terminal:
        actions.append(("cancel", "Cancel the run", "and its training job at the backend"))
    if any(run.stages[s].state == "failed" for s in STAGES):
        actions.append(("requeue", "Queue the failed stage again", "the run goes on from it"))
    return actions


def run_context(run: Run, session: Session, metric: str) -> dict[str, Any]:
    metrics = run.metrics
    decision = metrics.promotion if metrics else None
    verdict = None
    if decision is not None:
        outcome = "Promoted" if decision.promoted else "Kept as a candidate"
        verdict = f"{outcome} under {decision.model_name}: {decision.reason}"
    return {
        "session": session,
        "title": f"Run {run.id}",
        "page": "runs",
        "run": run,
        "stages": _stages(run),
        "actions": _actions(run),
        "metrics": metrics,
        "table": tables.metrics_table(metrics) if metrics else None,
        "verdict": verdict,
        "live": metrics.live if metrics else None,
        "live_table": tables.metrics_table(metrics.live) if metrics and metrics.live else None,
        "charts": [
            (name, alt) for name, field, alt in CHART_NAMES if getattr(run.artifacts, field)
        ],
        "dataset": run.dataset,
        "selection": {
            label: {**chosen, "validation_pr_auc": tables.number(chosen.get("validation_pr_auc"))}
            for label, chosen in (run.training.metadata.get("selection") or {}).items()
        },
        "events": list(reversed(run.events[-30:])),
        "moving": not run.state.terminal,
        "refresh": f"/ui/runs/{run.id}?fragment=1",
        "metric": metric,
    }
