"""What the CLI prints for people: the progress, metrics, runs and model tables, the
comparison with baselines and champion, a run's outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from modfactory.cli.app import artifact_url, err, out, print_run_json
from modfactory.cli.fit import Column, fitted_table, wrapped

if TYPE_CHECKING:
    from modfactory.evaluation.drift import Drift
    from modfactory.store.registry import ModelRecord
    from modfactory.store.run import Run
    from modfactory.store.shadow import ShadowTally
    from modfactory.values import DatasetSummary, SplitMetrics


def progress_table(run: Run) -> Table:
    table = Table(title=f"{run.id} — {run.state}", title_justify="left", expand=False)
    for column in ("stage", "state", "time", "detail"):
        table.add_column(column)
    for name, stage, took, detail in run.stage_lines():
        colour = {"succeeded": "green", "failed": "red", "running": "yellow"}.get(
            stage.state, "dim"
        )
        table.add_row(name, f"[{colour}]{stage.state}[/{colour}]", took, detail)
    return table


def metrics_table(
    metrics: SplitMetrics, synthetic: bool, width: int, split: str = "test"
) -> list[Table]:
    """The metrics of one split (``evaluation.tables``) fitted to ``width``, without the
    support and confusion counts (the report has them), then their bootstrap intervals;
    label names and numbers are never cut."""
    from modfactory.evaluation import tables

    built = tables.metrics_table(metrics, counts=False, intervals=False)
    title = f"{split} metrics ({metrics.rows:,} rows); thresholds tuned on validation"
    columns = [
        Column(_SHORT_HEADERS.get(c, c), _METRIC_PRIORITY.get(c, 0), justify="right")
        for c in built.columns
        if c != "support"
    ]
    columns[0] = Column(columns[0].header)
    keep = [i for i, c in enumerate(built.columns) if c != "support"]
    rows = [
        [
            escape(cells[0]) if kind == "label" else f"[bold]{cells[0]}[/bold]",
            *(cells[i] for i in keep[1:]),
        ]
        for kind, cells in built.rows
    ]
    table = fitted_table(columns, rows, width, title + (" — SYNTHETIC DATA" if synthetic else ""))
    table.caption = "\n".join(filter(None, [wrapped(built.caption, width), table.caption]))
    intervals = tables.interval_table(metrics)
    bounds = fitted_table(
        [Column(c, justify="left" if i == 0 else "right") for i, c in enumerate(intervals.columns)],
        [list(cells) for _, cells in intervals.rows],
        width,
        f"bootstrap 95 % intervals on {split}",
    )
    return [table, bounds]


_SHORT_HEADERS = {
    "prevalence": "prev.",
    "F1 @0.5": "F1@.5",
    "threshold": "thresh",
    "precision": "prec.",
}
# shown first at a narrow width: the lowest; always: 0 (the default)
_METRIC_PRIORITY = {
    "prevalence": 4,
    "F1 @0.5": 3,
    "ROC-AUC": 2,
    "threshold": 1,
    "precision": 1,
    "recall": 1,
}


def runs_table(runs: list[Run], width: int) -> Table:
    """Runs, one a line: id, state and headline never cut; the rest by priority."""
    columns = [
        Column("run"),
        Column("state"),
        Column("stage", 3),
        Column("source", 2, fit="shorten", least=12),
        Column("backend", 5),
        Column("F1", 1, justify="right"),
        Column("age", 4, justify="right"),
    ]
    rows = [
        [
            r.id,
            str(r.state),
            r.current_stage or "",
            escape(r.spec.source),
            r.spec.backend,
            f"{r.metrics.macro.f1:.3f}" if r.metrics else "",
            age(r.created_at),
        ]
        for r in runs
    ]
    return fitted_table(columns, rows, width)


def age(at: datetime, now: datetime | None = None) -> str:
    """How long ago, in the largest whole unit: ``45 s``, ``12 min``, ``3 h``, ``9 d``."""
    seconds = max(0, ((now or datetime.now(UTC)) - at).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit}"
    return f"{seconds:.0f} s"


def print_comparison(metrics: SplitMetrics) -> None:
    """The baselines and the champion/challenger verdict, one line each."""
    from modfactory.evaluation import tables

    promotion = metrics.promotion
    if not promotion:
        return
    metric = promotion.metric
    for name, values in metrics.baselines.items():
        shown = tables.number(values.value(metric))
        out.print(f"{name} baseline {metric}: {shown}", highlight=False)
    live = metrics.live.baselines.get("champion") if metrics.live else None
    if live is not None:
        shown = tables.number(live.value(metric))
        out.print(f"champion on the live test set {metric}: {shown}", highlight=False)
    verdict = "[green]promoted[/green]" if promotion.promoted else "kept as a candidate"
    out.print(
        f"model {escape(promotion.model_name)}: {verdict} — {escape(promotion.reason)}",
        highlight=False,
    )


def print_run(run: Run, as_json: bool) -> None:
    if as_json:
        print_run_json(run)
        return
    if run.metrics:
        for table in metrics_table(
            run.metrics, bool(run.dataset and run.dataset.synthetic), out.width
        ):
            out.line()
            out.print(table)
        if run.metrics.live is not None:  # the corrections held out
            for table in metrics_table(run.metrics.live, False, out.width, "live test set"):
                out.line()
                out.print(table)
        print_comparison(run.metrics)
    for label, key in (
        ("distribution chart", run.artifacts.distribution_chart),
        ("loss curve", run.artifacts.loss_chart),
        ("metrics", run.artifacts.metrics_file),
        ("report", run.artifacts.report_html),
    ):
        if key:
            out.print(f"{label}: {artifact_url(key)}", highlight=False)
    if run.artifacts.model_id:
        out.print(f"model: {run.artifacts.model_id}", highlight=False)
    from modfactory.store.run_parts import RunState

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


def print_model(
    record: ModelRecord, shadows: list[ShadowTally] | None = None, drift: Drift | None = None
) -> None:
    """The champion, earlier champions, candidates; then how shadowing candidates agreed
    with the champion on served traffic, and how its served scores drifted."""
    rows = []
    if record.champion:
        c = record.champion
        rows.append(["[green]champion[/green]", c.run_id, c.model_id, escape(c.reason)])
    for earlier in reversed(record.history):
        rows.append(["earlier", earlier.run_id, earlier.model_id, escape(earlier.reason)])
    for run_id, reason in record.candidates.items():
        rows.append(["candidate", run_id, "", escape(reason)])
    columns = [
        Column("role"),
        Column("run"),
        Column("model", 2, fit="shorten", least=12),
        Column("why", 1, fit="wrap"),
    ]
    table = fitted_table(columns, rows, out.width, f"model {escape(record.name)}")
    out.print(table)
    if "why" not in {c.header for c in table.columns}:  # too narrow: the reasons below it
        for _, run_id, _, reason in rows:
            out.print(wrapped(f"{run_id}: {reason}", out.width), highlight=False)
    for tally in shadows or []:
        agreement = ", ".join(f"{k} {v:.1%}" for k, v in sorted(tally.agreement().items()))
        out.print(
            f"shadow: {tally.candidate} vs champion {tally.champion} on {tally.texts:,} "
            f"served texts — flags agree: {agreement or 'no label'}",
            highlight=False,
        )
    if drift is not None:
        out.print(_drift_line(drift), highlight=False)


def _drift_line(drift: Drift) -> str:
    if drift.windows < 2:
        return f"drift: one window served so far ({drift.texts_latest:,} texts): nothing to compare"
    moved = ", ".join(
        f"{escape(label)} PSI {d.psi:.2f} (flagged {d.flag_rate_first:.1%} → "
        f"{d.flag_rate_latest:.1%})"
        for label, d in drift.labels.items()
    )
    alert = " [red]ALERT (MODFACTORY_DRIFT_ALERT)[/red]" if drift.alert else ""
    return (
        f"drift of {drift.run_id}, latest window ({drift.texts_latest:,} texts) vs its first "
        f"({drift.texts_first:,}):{alert} {moved}"
    )


def show_model(record: ModelRecord, as_json: bool) -> None:
    if as_json:
        out.print_json(record.model_dump_json())
    else:
        print_model(record)


def dataset_table(summary: DatasetSummary) -> Table:
    """Rows, safe rows and each label's count, per split."""
    title = f"{summary.source}" + (" — SYNTHETIC DATA" if summary.synthetic else "")
    table = Table(title=title, title_justify="left")
    table.add_column("split")
    for column in ("rows", "safe", *summary.labels):
        table.add_column(column, justify="right")
    for split, s in summary.splits.items():
        counts = (s.rows, s.safe, *(s.labels[label] for label in summary.labels))
        table.add_row(split, *(f"{n:,}" for n in counts))
    return table


@contextmanager
def split_progress(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per split on stderr while a data set builds; yields the callback
    ``build_dataset`` reports to (``quiet``: no bars)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, disable=quiet) as bar:
        tasks: dict[str, Any] = {}

        def progress(split: str, done: int, wanted: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(f"streaming {split}", total=wanted)
            bar.update(tasks[split], completed=done, total=max(done, wanted))

        yield progress
