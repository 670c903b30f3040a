"""Metrics for a multi-label moderation model, measured honestly.

Every label gets precision, recall and F1 twice: at the plain 0.5 threshold (a label is
predicted when its score is above 0.5) and at a threshold tuned for F1 on the
**validation** split, then applied unchanged to the test split — never tuned on test.
ROC-AUC and PR-AUC (average precision) come with bootstrap 95 % intervals; micro and
macro averages, subset accuracy and "flagged vs safe" metrics complete the picture, and
each label's prevalence sits beside its numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modfactory.values import PLAIN_THRESHOLD, SplitMetrics

# scipy and sklearn (2 s to import) are imported by the functions that use them: a worker
# starts in a second, and pays for them only once it evaluates.

BOOTSTRAP_SAMPLES = 200
Truth = Sequence[Sequence[str]]
LabelScores = Sequence[Mapping[str, float]]


def matrices(
    truth: Truth, scores: LabelScores, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(y, s): 0/1 truth and scores, one row per text, one column per label."""
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} rows but {len(scores)} scores")
    shape = (len(truth), len(labels))
    y = np.array([[label in row for label in labels] for row in truth], dtype=int).reshape(shape)
    s = np.array([[row.get(label, 0.0) for label in labels] for row in scores], dtype=float)
    return y, s.reshape(shape)


def tune_thresholds(truth: Truth, scores: LabelScores, labels: Sequence[str]) -> dict[str, float]:
    """Per label, the score threshold with the best F1 on these rows (0.5 without positives)."""
    y, s = matrices(truth, scores, labels)
    thresholds = {}
    for j, label in enumerate(labels):
        if y[:, j].sum() == 0:
            thresholds[label] = PLAIN_THRESHOLD
            continue
        from sklearn.metrics import precision_recall_curve

        precision, recall, cuts = precision_recall_curve(y[:, j], s[:, j])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        thresholds[label] = float(cuts[int(np.argmax(f1[:-1]))])
    return thresholds


def evaluate_scores(
    truth: Truth,
    scores: LabelScores,
    labels: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
) -> SplitMetrics:
    """The full report for one split; ``thresholds`` (tuned elsewhere) adds ``tuned_*``."""
    y, s = matrices(truth, scores, labels)
    plain = (s > PLAIN_THRESHOLD).astype(int)
    cuts = np.array([thresholds[label] for label in labels]) if thresholds else None
    tuned = (s >= cuts).astype(int) if cuts is not None else None
    rng = np.random.default_rng(0)
    resamples = (
        [rng.integers(0, len(y), len(y)) for _ in range(BOOTSTRAP_SAMPLES)] if len(y) else []
    )

    per_label: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(labels):
        entry: dict[str, Any] = {
            "support": int(y[:, j].sum()),
            "prevalence": float(y[:, j].mean()) if len(y) else 0.0,
            **_prf(y[:, j], plain[:, j], "binary"),
            **_aucs(y[:, j], s[:, j], resamples),
        }
        if tuned is not None:
            entry["tuned_threshold"] = float(cuts[j])
            entry.update(_prefixed("tuned_", _prf(y[:, j], tuned[:, j], "binary")))
        decided = (tuned if tuned is not None else plain)[:, j]
        entry["confusion"] = {
            "tp": int(((decided == 1) & (y[:, j] == 1)).sum()),
            "fp": int(((decided == 1) & (y[:, j] == 0)).sum()),
            "fn": int(((decided == 0) & (y[:, j] == 1)).sum()),
            "tn": int(((decided == 0) & (y[:, j] == 0)).sum()),
        }
        per_label[label] = entry

    report: dict[str, Any] = {
        "rows": len(y),
        "threshold": PLAIN_THRESHOLD,
        "thresholds_from": "validation" if thresholds else None,
        "labels": per_label,
    }
    for average in ("micro", "macro"):
        entry = _prf(y, plain, average)
        if tuned is not None:
            entry.update(_prefixed("tuned_", _prf(y, tuned, average)))
        report[average] = entry
    defined = [m for m in per_label.values() if m["roc_auc"] is not None]
    for key in ("roc_auc", "pr_auc"):
        report["macro"][key] = float(np.mean([m[key] for m in defined])) if defined else None
    report["micro"].update(_aucs(y.ravel(), s.ravel(), []))
    report["subset_accuracy"] = float((plain == y).all(axis=1).mean()) if len(y) else 0.0
    if tuned is not None:
        report["tuned_subset_accuracy"] = float((tuned == y).all(axis=1).mean()) if len(y) else 0.0
    report["flagged"] = _flagged(y, s, plain, tuned, resamples)
    return SplitMetrics.model_validate(report)


def _flagged(
    y: np.ndarray, s: np.ndarray, plain: np.ndarray, tuned: np.ndarray | None, resamples: list
) -> dict[str, Any]:
    """Flagged (any label) vs safe: the decision most moderation pipelines act on."""
    truth = y.any(axis=1).astype(int)
    score = s.max(axis=1) if s.size else np.zeros(len(y))
    entry = {
        "support": int(truth.sum()),
        "prevalence": float(truth.mean()) if len(truth) else 0.0,
        **_prf(truth, plain.any(axis=1).astype(int), "binary"),
        **_aucs(truth, score, resamples),
    }
    if tuned is not None:
        entry.update(_prefixed("tuned_", _prf(truth, tuned.any(axis=1).astype(int), "binary")))
    return entry


def _prf(y: np.ndarray, predicted: np.ndarray, average: str) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y, predicted, average=average, zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {prefix + key: value for key, value in values.items()}


def _aucs(y: np.ndarray, s: np.ndarray, resamples: list) -> dict[str, Any]:
    """ROC-AUC and PR-AUC with bootstrap 95 % intervals; None when one class is missing."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if not 0 < y.sum() < len(y):
        return {"roc_auc": None, "roc_auc_ci": None, "pr_auc": None, "pr_auc_ci": None}
    out: dict[str, Any] = {
        "roc_auc": float(roc_auc_score(y, s)),
        "pr_auc": float(average_precision_score(y, s)),
    }
    if resamples:
        rocs, prs = [], []
        for start in range(0, len(resamples), _BOOTSTRAP_BLOCK):
            index = np.stack(resamples[start : start + _BOOTSTRAP_BLOCK])
            roc, pr = bootstrap_aucs(y[index], s[index])
            rocs.append(roc)
            prs.append(pr)
        roc_all, pr_all = np.concatenate(rocs), np.concatenate(prs)
        defined = ~np.isnan(roc_all)
        if defined.any():
            out["roc_auc_ci"] = [float(v) for v in np.percentile(roc_all[defined], [2.5, 97.5])]
            out["pr_auc_ci"] = [float(v) for v in np.percentile(pr_all[defined], [2.5, 97.5])]
        else:
            out["roc_auc_ci"] = out["pr_auc_ci"] = None
    return out


_BOOTSTRAP_BLOCK = 25  # resamples computed at once (memory: block x rows floats)


def bootstrap_aucs(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of each row of ``y`` / ``s`` (one resample per row),
    exactly as sklearn computes them (ties included); NaN where a class is missing."""
    from scipy.stats import rankdata

    positives = y.sum(axis=1).astype(float)
    negatives = y.shape[1] - positives
    defined = (positives > 0) & (negatives > 0)
    ranks = rankdata(s, axis=1)  # average ranks for ties: the Mann-Whitney U statistic
    roc = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / np.where(
        defined, positives * negatives, 1
    )
    order = np.argsort(-s, axis=1, kind="stable")
    sorted_y = np.take_along_axis(y, order, axis=1)
    sorted_s = np.take_along_axis(s, order, axis=1)
    true_positives = np.cumsum(sorted_y, axis=1)
    n = y.shape[1]
    group_end = np.ones_like(sorted_s, dtype=bool)  # last position of each run of tied scores
    group_end[:, :-1] = sorted_s[:, :-1] != sorted_s[:, 1:]
    end_index = np.where(group_end, np.arange(n), n)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(true_positives, end_index, axis=1) / (end_index + 1)
    ap = (sorted_y * precision_at_end).sum(axis=1) / np.where(defined, positives, 1)
    return np.where(defined, roc, np.nan), np.where(defined, ap, np.nan)
