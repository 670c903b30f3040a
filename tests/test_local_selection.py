"""The local model chosen on validation (``backends.local.selection``): never worse than
plain TF-IDF + logistic regression, calibrated, and honest about rare labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import FeatureUnion

from modfactory.backends.local.selection import MIN_POSITIVES, fit_all, scores

pytestmark = pytest.mark.slow  # trains the selection grid on generated data

LABELS = ["toxicity", "insult", "threat"]
CUES = {
    "toxicity": ["awful", "disgusting", "garbage", "trash", "pathetic", "vile"],
    "insult": ["idiot", "moron", "stupid", "loser", "clown", "fool"],
    "threat": ["hurt", "destroy", "punish", "regret", "find", "burn"],
}
NEUTRAL = [
    "the",
    "council",
    "met",
    "today",
    "to",
    "discuss",
    "budget",
    "roads",
    "schools",
    "and",
    "the",
    "new",
    "library",
    "plan",
    "while",
    "residents",
    "asked",
    "about",
    "parking",
    "taxes",
    "weather",
    "football",
    "music",
    "recipes",
    "gardens",
    "trains",
]


def comments(rows: int, rates: dict[str, float], seed: int) -> tuple[list[str], list[list[str]]]:
    """Comments whose labels are noisy functions of their words: a flagged comment uses a
    cue word of its label 70 % of the time, a safe one 3 % of the time, and cues are
    shared between labels, as real abuse mixes insult and toxicity."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(rows):
        words = list(rng.choice(NEUTRAL, rng.integers(5, 25)))
        flagged = [label for label in LABELS if rng.random() < rates[label]]
        for label in LABELS:
            if rng.random() < (0.7 if label in flagged else 0.03):
                words.insert(int(rng.integers(0, len(words))), str(rng.choice(CUES[label])))
        if "insult" in flagged and rng.random() < 0.3:
            words.append(str(rng.choice(CUES["toxicity"])))
        texts.append(" ".join(words))
        labels.append(flagged or ["safe"])
    return texts, labels


def macro_pr_auc(truth: list[list[str]], predicted: list[dict[str, float]]) -> float:
    found = []
    for label in LABELS:
        y = np.array([label in row for row in truth], dtype=int)
        found.append(average_precision_score(y, [p[label] for p in predicted]))
    return float(np.mean(found))


def plain_baseline(train, test) -> list[dict[str, float]]:
    """TF-IDF word 1-2 + char 2-5 grams and a logistic regression at C=1, per label."""
    common = {"min_df": 2, "max_features": 200_000, "sublinear_tf": True}
    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), **common)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **common)),
        ]
    )
    x_train, x_test = features.fit_transform(train[0]), features.transform(test[0])
    columns = {}
    for label in LABELS:
        y = np.array([label in row for row in train[1]], dtype=int)
        model = LogisticRegression(C=1.0, solver="liblinear").fit(x_train, y)
        columns[label] = model.predict_proba(x_test)[:, 1]
    return [{label: float(columns[label][i]) for label in LABELS} for i in range(len(test[0]))]


@pytest.mark.parametrize(
    "rates",
    [
        {"toxicity": 0.2, "insult": 0.15, "threat": 0.05},  # the cookbook's mix
        {"toxicity": 0.04, "insult": 0.03, "threat": 0.02},  # rare labels
    ],
)
def test_the_chosen_model_is_never_worse_than_plain_tfidf_logistic_regression(
    rates: dict[str, float],
) -> None:
    train, valid, test = (comments(n, rates, seed) for n, seed in ((3000, 1), (1000, 2), (1000, 3)))
    fitted: list[dict] = []
    bundle, choices = fit_all(train, valid, LABELS, "small", 0, lambda d, t, c: fitted.append(c))
    chosen = macro_pr_auc(test[1], scores(bundle, test[0]))
    plain = macro_pr_auc(test[1], plain_baseline(train, test))
    assert chosen >= plain - 0.01, (chosen, plain, choices)
    assert len(fitted) == 6 * len(LABELS)  # plain and NB-weighted x 3 strengths, per label
    for choice in choices:  # each choice is the best candidate on validation
        mine = [c for c in fitted if c["label"] == choice.label]
        assert choice.validation_pr_auc == max(c["validation_pr_auc"] for c in mine)
        assert choice.calibration in ("isotonic on validation", "platt on validation")


def test_scores_are_calibrated_probabilities_on_held_out_rows() -> None:
    """Texts scored about p are positive about p of the time (reliability within 0.1
    per decile that holds enough rows)."""
    rates = {"toxicity": 0.2, "insult": 0.15, "threat": 0.05}
    train, valid, test = (comments(n, rates, seed) for n, seed in ((3000, 4), (2000, 5), (4000, 6)))
    bundle, _ = fit_all(train, valid, LABELS, "small", 0, lambda *_: None)
    predicted = scores(bundle, test[0])
    for label in LABELS:
        y = np.array([label in row for row in test[1]], dtype=float)
        p = np.array([row[label] for row in predicted])
        assert p.min() >= 0 and p.max() <= 1
        for low in np.arange(0, 1, 0.1):
            inside = (p >= low) & (p < low + 0.1)
            if inside.sum() >= 100:
                assert abs(y[inside].mean() - p[inside].mean()) < 0.1, (label, low)


def test_a_label_with_too_few_positives_gets_the_fallback_and_says_so() -> None:
    rates = {"toxicity": 0.2, "insult": 0.15, "threat": 0.003}
    train, valid = comments(3000, rates, 7), comments(1000, rates, 8)
    positives = sum("threat" in row for row in train[1])
    assert positives < MIN_POSITIVES
    _, choices = fit_all(train, valid, LABELS, "small", 0, lambda *_: None)
    threat = next(c for c in choices if c.label == "threat")
    assert threat.candidates == 1 and (threat.weighting, threat.C) == ("plain", 1.0)
    assert threat.note == (
        f"fallback setting: {positives} positive training rows (< {MIN_POSITIVES})"
    )
    assert all(c.candidates == 6 for c in choices if c.label != "threat")
