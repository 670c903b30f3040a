"""PNG charts people would rather look at than read (matplotlib's object API on the Agg
canvas: no pyplot, no global figure state, safe in threads). Each returns the PNG's bytes;
where they are kept is the caller's to say."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # matplotlib (a second to import) only once a chart is drawn
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


class _SplitCounts(Protocol):
    rows: int
    safe: int
    labels: dict[str, int]


def distribution_chart(
    splits: Mapping[str, _SplitCounts], labels: Sequence[str], synthetic: bool
) -> bytes:
    """The cookbook's 3 x 3 figure: category pie, flagged-vs-safe pie, stacked bars per split."""
    fig = _figure(24, 6 * len(splits))
    axes = fig.subplots(len(splits), 3, squeeze=False)
    for row, (split, counts) in enumerate(splits.items()):
        name = split.capitalize()
        categories = sorted(
            [("No Flags", counts.safe), *((label, counts.labels[label]) for label in labels)],
            key=lambda item: item[1],
            reverse=True,
        )
        shown = [(label, count) for label, count in categories if count > 0]
        axes[row, 0].pie(
            [c for _, c in shown],
            labels=[lbl for lbl, _ in shown],
            autopct="%1.1f%%",
            startangle=140,
        )
        axes[row, 0].set_title(f"{name} Samples (Category Distribution)")
        flagged = counts.rows - counts.safe
        axes[row, 1].pie(
            [counts.safe, flagged],
            labels=["None-Flagged", "Flagged"],
            autopct="%1.1f%%",
            startangle=140,
            colors=["tab:blue", "tab:red"],
        )
        axes[row, 1].set_title(f"{name} Samples (Flagged vs None-Flagged)")
        by_flagged = sorted(labels, key=lambda label: counts.labels[label], reverse=True)
        flagged_counts = [counts.labels[label] for label in by_flagged]
        safe_counts = [counts.rows - c for c in flagged_counts]
        ax = axes[row, 2]
        ax.bar(by_flagged, safe_counts, label="None-Flagged", color="tab:blue")
        ax.bar(by_flagged, flagged_counts, bottom=safe_counts, label="Flagged", color="tab:red")
        ax.set_ylabel("Count")
        ax.set_title(f"{name} Samples (Stacked Bar)")
        ax.legend(loc="upper right")
        ax.tick_params(axis="x", rotation=45)
    if synthetic:
        fig.suptitle("SYNTHETIC DATA (generated, not civil_comments)", color="tab:red", fontsize=18)
    # Fixed margins (tight_layout would measure every text first: a third of the drawing).
    inch = 1 / fig.get_figheight()
    fig.subplots_adjust(
        left=0.05,
        right=0.99,
        bottom=1.6 * inch,
        top=1 - (0.9 if synthetic else 0.4) * inch,
        wspace=0.2,
        hspace=2.2 * inch * len(splits),
    )
    return _png(fig)


def loss_chart(checkpoints: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Train and valid loss over steps, from the training job's checkpoints."""
    points = sorted(checkpoints, key=lambda c: c["step"])
    fig = _figure(9, 5)
    ax = fig.subplots()
    for key, label in (("train_loss", "train loss"), ("valid_loss", "valid loss")):
        series = [(c["step"], c[key]) for c in points if c.get(key) is not None]
        if series:
            ax.plot(*zip(*series, strict=True), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def pr_curves(
    truth: Sequence[Sequence[str]],
    scores: Sequence[Mapping[str, float]],
    labels: Sequence[str],
    thresholds: Mapping[str, float],
) -> bytes:
    """Precision-recall curve per label on test, with each tuned threshold marked."""
    from sklearn.metrics import precision_recall_curve

    fig = _figure(9, 6)
    ax = fig.subplots()
    for label in labels:
        y = [label in row for row in truth]
        if not any(y):
            continue
        s = [row.get(label, 0.0) for row in scores]
        precision, recall, cuts = precision_recall_curve(y, s)
        (line,) = ax.plot(recall, precision, label=label)
        at = min(range(len(cuts)), key=lambda i: abs(cuts[i] - thresholds.get(label, 0.5)))
        ax.plot(recall[at], precision[at], "o", color=line.get_color())
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall on test (dots: thresholds tuned on validation)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, dpi=80, format="png")
    return out.getvalue()
