"""The test-metrics table, built once for every reader: the CLI draws it with rich, the
report as HTML. Cells are plain text, formatted here; readers only lay them out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RowKind = Literal["label", "average", "flagged"]
COUNT_COLUMNS = ("TP", "FP", "FN", "TN")  # at the tuned thresholds


@dataclass(frozen=True)
class MetricsTable:
    columns: tuple[str, ...]
    rows: list[tuple[RowKind, tuple[str, ...]]]
    caption: str


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def with_interval(m: dict[str, Any], key: str) -> str:
    """``0.912 (0.90-0.93)``: the value and its bootstrap 95 % interval, when there is one."""
    ci = m.get(f"{key}_ci")
    return number(m.get(key)) + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def metrics_table(metrics: dict[str, Any], counts: bool = True) -> MetricsTable:
    """Per label: prevalence, support, F1 at 0.5, then the threshold tuned on validation
    with precision / recall / F1 at it, the AUCs with their intervals and (``counts``) the
    confusion counts; then micro and macro averages, and flagged (any label) vs safe."""
    columns = (
        "label",
        "prevalence",
        "support",
        "F1 @0.5",
        "threshold",
        "precision",
        "recall",
        "F1",
        "ROC-AUC (95% CI)",
        "PR-AUC (95% CI)",
    )

    def cells(name: str, m: dict[str, Any], kind: RowKind) -> tuple[str, ...]:
        share = "" if kind == "average" else f"{m['prevalence']:.1%}"
        support = "" if kind == "average" else f"{m['support']:,}"
        threshold = number(m.get("tuned_threshold")) if kind == "label" else ""
        row = (
            name,
            share,
            support,
            number(m["f1"]),
            threshold,
            number(m.get("tuned_precision")),
            number(m.get("tuned_recall")),
            number(m.get("tuned_f1")),
            with_interval(m, "roc_auc"),
            with_interval(m, "pr_auc"),
        )
        confusion = m.get("confusion") or {}
        return row + tuple(str(confusion.get(k.lower(), "")) for k in COUNT_COLUMNS) * counts

    rows: list[tuple[RowKind, tuple[str, ...]]] = [
        ("label", cells(label, m, "label")) for label, m in metrics["labels"].items()
    ]
    rows += [("average", cells(avg, metrics[avg], "average")) for avg in ("micro", "macro")]
    if "flagged" in metrics:
        rows.append(("flagged", cells("flagged vs safe", metrics["flagged"], "flagged")))
    caption = (
        f"subset accuracy {number(metrics.get('subset_accuracy'))} at 0.5, "
        f"{number(metrics.get('tuned_subset_accuracy'))} at the tuned thresholds"
    )
    return MetricsTable(columns + COUNT_COLUMNS * counts, rows, caption)
