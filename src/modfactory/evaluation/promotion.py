"""Champion / challenger: is a finished run's model better than the one in production?

Both models are measured on the challenger's own test file (and live test set: the
corrections held out), so the numbers compare like with like; the challenger is promoted
only if it beats the champion on the configured metric by at least the configured margin —
on the live test set when there is one, without losing more than the margin on the
source's test file. A random baseline is reported beside them.
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
    champion_live: SplitMetrics | None = None,
) -> tuple[bool, str]:
    """(promote?, why) from the two reports on the same test file (champion None: none yet).
    With a live test set measured for both (``challenger.live``, ``champion_live``), the
    challenger must beat the champion there by ``margin`` and lose no more than ``margin``
    on the source's test file."""
    mine = challenger.value(metric)
    if champion is None:
        return True, "first model under this name"
    theirs = champion.value(metric)
    if mine is None or theirs is None:
        return False, f"{metric} is undefined on this test file"
    verdict = f"{metric} {mine:.4f} vs champion {theirs:.4f} (margin {margin:g})"
    live = challenger.live
    if live is None or champion_live is None:
        return mine >= theirs + margin, verdict
    mine_live, theirs_live = live.value(metric), champion_live.value(metric)
    if mine_live is None or theirs_live is None:
        return mine >= theirs + margin, f"{verdict}; {metric} is undefined on the live test set"
    verdict = (
        f"live test set: {metric} {mine_live:.4f} vs champion {theirs_live:.4f}; source test: "
        f"{mine:.4f} vs {theirs:.4f} (margin {margin:g})"
    )
    return mine_live >= theirs_live + margin and mine >= theirs - margin, verdict
