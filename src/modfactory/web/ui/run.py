"""What the run page of ``/ui`` shows: a run document turned into plain values for the
template (stages with their times and details, the metrics tables, the charts there are,
the actions the run allows)."""

from __future__ import annotations

from typing import Any

from modfactory.evaluation import tables
from modfactory.roles import Action
from modfactory.store.run import STAGES, Run, RunState
from modfactory.web.ui.session import Session

CHART_NAMES = (
    ("distribution", "distribution_chart", "label distribution per split"),
    ("loss", "loss_chart", "training loss"),
    ("precision_recall", "pr_chart", "precision-recall per label"),
)


def _stages(run: Run) -> list[dict[str, Any]]:
    return [
        {"name": n, "state": st.state.value, "attempts": st.attempts, "took": t, "detail": d}
        for n, st, t, d in run.stage_lines()
    ]


def _actions(run: Run, session: Session) -> list[tuple[str, str, str]]:
    """The buttons the run allows and the session's role may press."""
    actions = []
    if run.state == RunState.AWAITING_APPROVAL and session.may(Action.APPROVE):
        cost = run.training.metadata.get("cost")
        actions.append(("approve", f"Approve the quoted cost ({cost})", "starts the training job"))
    if not session.may(Action.RUN):
        return actions
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
        "actions": _actions(run, session),
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
