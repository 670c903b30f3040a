"""What the CLI prints for people: the progress, metrics, runs and model tables, the
comparison with baselines and champion, a run's outcome.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from modfactory.cli.app import out, print_run_json
from modfactory.store.registry import ModelRecord
from modfactory.store.run import STAGES, Run, RunState


def progress_table(run: Run) -> Table:
    table = Table(title=f"{run.id} — {run.state}", title_justify="left", expand=False)
    for column in ("stage", "state", "time", "detail"):
        table.add_column(column)
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
            if last and last.valid_loss is not None:
                detail += f" valid loss {last.valid_loss:.4f}"
        if name == "build" and run.dataset:
            detail = ", ".join(f"{s} {v.rows:,}" for s, v in run.dataset.splits.items())
            detail += " (synthetic)" if run.dataset.synthetic else ""
        if run.progress and run.progress.stage == name and stage.state == "running":
            p = run.progress
            detail = f"{p.what}: {p.done:,} of {p.total:,}"
        colour = {"succeeded": "green", "failed": "red", "running": "yellow"}.get(
            stage.state, "dim"
        )
        table.add_row(name, f"[{colour}]{stage.state}[/{colour}]", took, detail)
    return table


def metrics_table(metrics: dict[str, Any], synthetic: bool) -> Table:
    """Per label: prevalence, F1 at 0.5, then precision / recall / F1 at the threshold tuned
    on validation, and the AUCs with their bootstrap 95 % intervals."""
    title = f"test metrics ({metrics['rows']:,} rows); thresholds tuned on validation"
    table = Table(title=title + (" — SYNTHETIC DATA" if synthetic else ""), title_justify="left")
    columns = (
        "label",
        "prevalence",
        "F1 @0.5",
        "threshold",
        "precision",
        "recall",
        "F1",
        "ROC-AUC (95% CI)",
        "PR-AUC (95% CI)",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "label" else "right")

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    def auc(m: dict[str, Any], key: str) -> str:
        ci = m.get(f"{key}_ci")
        return fmt(m.get(key)) + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")

    rows = [
        (label, m, f"{m['prevalence']:.1%}", fmt(m.get("tuned_threshold")))
        for label, m in metrics["labels"].items()
    ]
    rows += [(f"[bold]{avg}[/bold]", metrics[avg], "", "") for avg in ("micro", "macro")]
    flagged = metrics["flagged"]
    rows.append(("[bold]flagged vs safe[/bold]", flagged, f"{flagged['prevalence']:.1%}", ""))
    for name, m, prevalence, threshold in rows:
        table.add_row(
            name,
            prevalence,
            fmt(m["f1"]),
            threshold,
            fmt(m.get("tuned_precision")),
            fmt(m.get("tuned_recall")),
            fmt(m.get("tuned_f1")),
            auc(m, "roc_auc"),
            auc(m, "pr_auc"),
        )
    table.caption = (
        f"subset accuracy {metrics['subset_accuracy']:.3f} at 0.5, "
        f"{metrics.get('tuned_subset_accuracy', float('nan')):.3f} at the tuned thresholds"
    )
    return table


def print_comparison(metrics: dict[str, Any]) -> None:
    """The baselines and the champion/challenger verdict, one line each."""
    promotion = metrics.get("promotion")
    if not promotion:
        return
    metric = promotion["metric"]
    for name, values in metrics.get("baselines", {}).items():
        value = values.get(metric)
        shown = "—" if value is None else f"{value:.3f}"
        out.print(f"{name} baseline {metric}: {shown}", highlight=False)
    verdict = "[green]promoted[/green]" if promotion["promoted"] else "kept as a candidate"
    out.print(
        f"model {promotion['model_name']}: {verdict} — {promotion['reason']}", highlight=False
    )


def print_run(run: Run, as_json: bool) -> None:
    if as_json:
        print_run_json(run)
        return
    if run.metrics:
        out.print(metrics_table(run.metrics, bool(run.dataset and run.dataset.synthetic)))
        print_comparison(run.metrics)
    for label, path in (
        ("distribution chart", run.artifacts.distribution_chart),
        ("loss curve", run.artifacts.loss_chart),
        ("metrics", run.artifacts.metrics_file),
        ("report", run.artifacts.report_html),
    ):
        if path:
            out.print(f"{label}: {path}", highlight=False)
    if run.artifacts.model_id:
        out.print(f"model: {run.artifacts.model_id}", highlight=False)
    if run.state == RunState.AWAITING_APPROVAL:
        meta = run.training.metadata
        out.print(
            f"run {run.id} awaits approval: job {run.artifacts.training_job_id} is quoted "
            f"{meta.get('cost')} {meta.get('cost_currency', '')} for "
            f"{meta.get('expected_duration_seconds', '?')} s of training. "
            f"`modfactory approve {run.id}` starts it; `modfactory cancel {run.id}` cancels it.",
            highlight=False,
        )
        return
    colour = "green" if run.state == "succeeded" else "red"
    out.print(
        f"run {run.id}: [{colour}]{run.state}[/{colour}]"
        + (f" — {run.error}" if run.error else ""),
        highlight=False,
    )


def add_run_id_column(table: Table, run_ids: list[str]) -> None:
    """A run id is never cut: the other columns fold first, however narrow the terminal."""
    table.add_column("run", no_wrap=True, min_width=max(map(len, run_ids), default=3))


def print_model(record: ModelRecord) -> None:
    table = Table(title=f"model {record.name}", title_justify="left")
    table.add_column("role")
    ids = [p.run_id for p in [*record.history, *filter(None, [record.champion])]]
    add_run_id_column(table, [*ids, *record.candidates])
    for column in ("model", "why"):
        table.add_column(column, overflow="fold")
    if record.champion:
        c = record.champion
        table.add_row("[green]champion[/green]", c.run_id, c.model_id, c.reason)
    for earlier in reversed(record.history):
        table.add_row("earlier", earlier.run_id, earlier.model_id, earlier.reason)
    for run_id, reason in record.candidates.items():
        table.add_row("candidate", run_id, "", reason)
    out.print(table)


def show_model(record: ModelRecord, as_json: bool) -> None:
    if as_json:
        out.print_json(record.model_dump_json())
    else:
        print_model(record)
