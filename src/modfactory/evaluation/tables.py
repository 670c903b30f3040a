"""The test-metrics table, built once for every reader: the CLI draws it with rich, the
report as HTML. Cells are plain text, formatted here; readers only lay them out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from modfactory.values import DecisionScores, FlaggedScores, LabelMetrics, SplitMetrics

RowKind = Literal["label", "average", "flagged"]
COUNT_COLUMNS = ("TP", "FP", "FN", "TN")  # at the tuned thresholds


@dataclass(frozen=True)
class MetricsTable:
    columns: tuple[str, ...]
    rows: list[tuple[RowKind, tuple[str, ...]]]
    caption: str


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def with_interval(value: float | None, ci: tuple[float, float] | None) -> str:
    """``0.912 (0.90-0.93)``: the value and its bootstrap 95 % interval, when there is one."""
    return number(value) + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def metrics_table(
    metrics: SplitMetrics, counts: bool = True, intervals: bool = True
) -> MetricsTable:
    """Per label: prevalence, support, F1 at 0.5, then the threshold tuned on validation
    with precision / recall / F1 at it, the AUCs (with their intervals unless not
    ``intervals``: see ``interval_table``) and (``counts``) the confusion counts; then micro
    and macro averages, and flagged (any label) vs safe."""
    auc = with_interval if intervals else (lambda value, _ci: number(value))
    columns = (
        "label",
        "prevalence",
        "support",
        "F1 @0.5",
        "threshold",
        "precision",
        "recall",
        "F1",
        "ROC-AUC (95% CI)" if intervals else "ROC-AUC",
        "PR-AUC (95% CI)" if intervals else "PR-AUC",
    )

    def cells(name: str, m: DecisionScores, kind: RowKind) -> tuple[str, ...]:
        counted = isinstance(m, FlaggedScores)
        label = m if isinstance(m, LabelMetrics) else None
        confusion = label.confusion if label and label.confusion else None
        row = (
            name,
            f"{m.prevalence:.1%}" if counted else "",
            f"{m.support:,}" if counted else "",
            number(m.f1),
            number(label.tuned_threshold) if label else "",
            number(m.tuned_precision),
            number(m.tuned_recall),
            number(m.tuned_f1),
            auc(m.roc_auc, m.roc_auc_ci),
            auc(m.pr_auc, m.pr_auc_ci),
        )
        tally = [getattr(confusion, k.lower()) if confusion else "" for k in COUNT_COLUMNS]
        return row + tuple(map(str, tally)) * counts

    rows = _rows(metrics, cells)
    caption = (
        f"subset accuracy {number(metrics.subset_accuracy)} at 0.5, "
        f"{number(metrics.tuned_subset_accuracy)} at the tuned thresholds"
    )
    return MetricsTable(columns + COUNT_COLUMNS * counts, rows, caption)


def interval_table(metrics: SplitMetrics) -> MetricsTable:
    """The AUCs' bootstrap 95 % intervals, a row per row of ``metrics_table``."""

    def cells(name: str, m: DecisionScores, _kind: RowKind) -> tuple[str, ...]:
        def bounds(ci: tuple[float, float] | None) -> str:
            return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "—"

        return name, bounds(m.roc_auc_ci), bounds(m.pr_auc_ci)

    return MetricsTable(("label", "ROC-AUC 95% CI", "PR-AUC 95% CI"), _rows(metrics, cells), "")


def _rows(
    metrics: SplitMetrics, cells: Callable[[str, DecisionScores, RowKind], tuple[str, ...]]
) -> list[tuple[RowKind, tuple[str, ...]]]:
    """The labels, then micro and macro averages, then flagged (any label) vs safe."""
    rows: list[tuple[RowKind, tuple[str, ...]]] = [
        ("label", cells(label, m, "label")) for label, m in metrics.labels.items()
    ]
    rows += [("average", cells("micro", metrics.micro, "average"))]
    rows += [("average", cells("macro", metrics.macro, "average"))]
    if metrics.flagged:
        rows.append(("flagged", cells("flagged vs safe", metrics.flagged, "flagged")))
    return rows
