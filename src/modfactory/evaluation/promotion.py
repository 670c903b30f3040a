"""Champion / challenger: is a finished run's model better than the one in production?

Both models are measured on the challenger's own test file, so the numbers compare like
with like; the challenger is promoted only if it beats the champion on the configured
metric by at least the configured margin. A random baseline is reported beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modfactory.evaluation.metrics import Truth, evaluate_scores

MODERATION_MODEL = "mistral-moderation-latest"
MODERATION_CATEGORIES = {  # Mistral's moderation categories -> civil_comments labels
    "sexual": "sexual_explicit",
    "hate_and_discrimination": "identity_attack",
    "violence_and_threats": "threat",
}

METRICS = {
    "macro_pr_auc": ("macro", "pr_auc"),
    "macro_roc_auc": ("macro", "roc_auc"),
    "macro_f1": ("macro", "f1"),
    "macro_tuned_f1": ("macro", "tuned_f1"),
    "micro_f1": ("micro", "f1"),
}


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    group, key = METRICS[name]
    return metrics[group].get(key)


def summary(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The headline numbers of a report, for a comparison table."""
    return {name: metric_value(metrics, name) for name in METRICS}


def random_baseline(truth: Truth, labels: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """The cookbook's baseline: a uniformly random score per label."""
    rng = np.random.default_rng(seed)
    scores = [{label: float(rng.random()) for label in labels} for _ in truth]
    return summary(evaluate_scores(truth, scores, labels))


def decide_promotion(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    metric: str,
    margin: float,
) -> tuple[bool, str]:
    """(promote?, why) from the two reports on the same test file (champion None: none yet)."""
    mine = metric_value(challenger, metric)
    if champion is None:
        return True, "first model under this name"
    theirs = metric_value(champion, metric)
    if mine is None or theirs is None:
        return False, f"{metric} is undefined on this test file"
    verdict = f"{metric} {mine:.4f} vs champion {theirs:.4f} (margin {margin:g})"
    return mine >= theirs + margin, verdict
