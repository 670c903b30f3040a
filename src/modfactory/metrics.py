"""Classification metrics for a multi-label moderation model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

THRESHOLD = 0.5


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """ROC-AUC, or None when the test split holds a single class for this label."""
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def evaluate_scores(
    truth: Sequence[Sequence[str]], scores: Sequence[Mapping[str, float]], labels: Sequence[str]
) -> dict[str, Any]:
    """Per label: precision, recall, F1 (score > 0.5), ROC-AUC, support, prevalence.

    ``micro`` pools every (row, label) decision; ``macro`` averages the labels equally
    (ROC-AUC over the labels where it is defined).
    """
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} rows but {len(scores)} scores")
    y = np.array([[label in row for label in labels] for row in truth], dtype=int).reshape(
        len(truth), len(labels)
    )
    s = np.array(
        [[row.get(label, 0.0) for label in labels] for row in scores], dtype=float
    ).reshape(len(truth), len(labels))
    predicted = (s > THRESHOLD).astype(int)
    per_label: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(labels):
        p, r, f, _ = precision_recall_fscore_support(
            y[:, j], predicted[:, j], average="binary", zero_division=0
        )
        per_label[label] = {
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "roc_auc": _auc(y[:, j], s[:, j]),
            "support": int(y[:, j].sum()),
            "prevalence": float(y[:, j].mean()) if len(y) else 0.0,
        }
    averages = {}
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(y, predicted, average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    aucs = [m["roc_auc"] for m in per_label.values() if m["roc_auc"] is not None]
    averages["macro"]["roc_auc"] = float(np.mean(aucs)) if aucs else None
    averages["micro"]["roc_auc"] = _auc(y.ravel(), s.ravel())
    return {
        "threshold": THRESHOLD,
        "rows": len(truth),
        "labels": per_label,
        **averages,
    }
