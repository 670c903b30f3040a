"""Champion / challenger: is a finished run's model better than the one in production?

Both models are measured on the challenger's own test file, so the numbers compare like
with like; the challenger is promoted only if it beats the champion on the configured
metric by at least the configured margin. A random baseline is reported beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modfactory.evaluation.metrics import Truth, evaluate_scores
from modfactory.values import Headline, HeadlineMetric, SplitMetrics


def random_baseline(truth: Truth, labels: Sequence[str], seed: int = 0) -> Headline:
    """The cookbook's baseline: a uniformly random score per label."""
    rng = np.random.default_rng(seed)
    scores = [{label: float(rng.random()) for label in labels} for _ in truth]
    return evaluate_scores(truth, scores, labels).headline()


def decide_promotion(
    challenger: SplitMetrics,
    champion: SplitMetrics | None,
    metric: HeadlineMetric,
    margin: float,
) -> tuple[bool, str]:
    """(promote?, why) from the two reports on the same test file (champion None: none yet)."""
    mine = challenger.value(metric)
    if champion is None:
        return True, "first model under this name"
    theirs = champion.value(metric)
    if mine is None or theirs is None:
        return False, f"{metric} is undefined on this test file"
    verdict = f"{metric} {mine:.4f} vs champion {theirs:.4f} (margin {margin:g})"
    return mine >= theirs + margin, verdict
