"""The local model, chosen on validation.

Per label, a small grid of candidates — TF-IDF word and character n-grams, plain or
naive-Bayes weighted (the log-count ratio of Wang & Manning's NBSVM, computed per label
on the training split), each with a logistic regression at a few regularisation
strengths — is fitted on the training split; the candidate with the best PR-AUC on the
**validation** split is kept, nothing is refitted, and its scores are calibrated on
validation (Platt scaling) so that a score of 0.8 means about 80 %. A label with fewer
than ``MIN_POSITIVES`` positive training rows gets one robust setting instead, and says so.

Pure functions of arrays and texts, run by the trainer process (``local_trainer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Grid = Literal["small", "full", "off"]  # off: one plain candidate per label, no choice
MIN_POSITIVES = 30  # fewer positive training rows: no grid, the fallback setting
MIN_CALIBRATION = 10  # positives and negatives on validation needed to calibrate (Platt)
MIN_ISOTONIC = 50  # ... and for isotonic regression, which fits any monotone shape
FEATURE_SETS: dict[str, dict[str, Any]] = {
    "word1-2+char2-5": {"word": (1, 2), "char": (2, 5)},
    "word1-3+char3-6": {"word": (1, 3), "char": (3, 6)},
}
GRIDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "small": {"features": ("word1-2+char2-5",), "weighting": ("plain", "nb"), "C": (0.25, 1, 4)},
    "full": {
        "features": tuple(FEATURE_SETS),
        "weighting": ("plain", "nb"),
        "C": (0.125, 0.25, 0.5, 1, 2, 4, 8),
    },
}
FALLBACK = ("word1-2+char2-5", "plain", 1.0)
Progress = Callable[[int, int, dict[str, Any]], None]  # (done, total, the candidate fitted)


class Stopped(Exception):
    """The job was cancelled or ran out of time between two candidates."""


@dataclass
class Choice:
    """What was chosen for one label, and on what evidence (recorded with the run)."""

    label: str
    features: str
    weighting: str
    C: float
    validation_pr_auc: float | None
    calibration: str
    candidates: int
    note: str | None = None


def vectorizer(name: str) -> Any:
    """The TF-IDF word + character n-gram features called ``name`` (float32, sublinear)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    spec = FEATURE_SETS[name]
    common = {"min_df": 2, "max_features": 200_000, "sublinear_tf": True, "dtype": np.float32}
    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=spec["word"], **common)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=spec["char"], **common)),
        ]
    )


def nb_ratio(x: Any, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """The log-count ratio r of NBSVM: log of each feature's share among positive rows
    over its share among negative rows (features counted present / absent, smoothed)."""
    present = x.copy()
    present.data[:] = 1
    p = alpha + np.asarray(present[y == 1].sum(axis=0)).ravel()
    q = alpha + np.asarray(present[y == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum())).astype(np.float32)


def _weighted(x: Any, ratio: np.ndarray | None) -> Any:
    if ratio is None:
        return x
    import scipy.sparse as sp

    return (x @ sp.diags(ratio)).tocsr()


def _pr_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, score)) if 0 < y.sum() < len(y) else None


def _log_loss(y: np.ndarray, decision: np.ndarray) -> float | None:
    """The validation log-loss of a candidate's (uncalibrated) probabilities."""
    if not len(y):
        return None
    from sklearn.metrics import log_loss

    return float(log_loss(y, 1 / (1 + np.exp(-decision)), labels=[0, 1]))


def _logistic(c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="liblinear", max_iter=1000, random_state=seed)


def calibrator(decision: np.ndarray, y: np.ndarray) -> tuple[str, Any]:
    """(how, what) maps a decision value to a probability, fitted on validation: isotonic
    regression with enough of both classes, Platt scaling (a sigmoid) with fewer, none
    with too few (the model's own probabilities)."""
    fewest = min(int(y.sum()), int(len(y) - y.sum()))
    if fewest >= MIN_ISOTONIC:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(decision, y)
        return "isotonic on validation", iso
    if fewest >= MIN_CALIBRATION:
        from sklearn.linear_model import LogisticRegression

        fit = LogisticRegression(C=1e4, solver="lbfgs").fit(decision.reshape(-1, 1), y)
        return "platt on validation", (float(fit.coef_[0, 0]), float(fit.intercept_[0]))
    return "none (too few validation rows)", None


def calibrated(m: dict[str, Any], decision: np.ndarray) -> np.ndarray:
    """Probabilities from decision values. Isotonic steps are broken by a sliver of the
    model's own order, so calibration never ties texts the model tells apart."""
    how, what = m["calibration"], m["calibrator"]
    sigmoid = 1 / (1 + np.exp(-decision))
    if what is None:
        return sigmoid
    if how.startswith("isotonic"):
        return np.clip(what.predict(decision) * (1 - 1e-6) + 1e-6 * sigmoid, 0, 1)
    a, b = what
    return 1 / (1 + np.exp(-(a * decision + b)))


def fits_per_label(grid: Grid) -> int:
    """How many candidates a label with enough data fits under ``grid``."""
    if grid == "off":
        return 1
    g = GRIDS[grid]
    return len(g["features"]) * len(g["weighting"]) * len(g["C"])


def _candidates(
    grid: Grid, positives: int, validation_rows: int
) -> tuple[list[tuple[str, str, float]], str | None]:
    """(features, weighting, C) to try, and why only the fallback, when it is."""
    if grid == "off":
        return [FALLBACK], None
    if positives < MIN_POSITIVES:
        return [
            FALLBACK
        ], f"fallback setting: {positives} positive training rows (< {MIN_POSITIVES})"
    if not validation_rows:
        return [FALLBACK], "fallback setting: no validation rows to choose on"
    g = GRIDS[grid]
    return [(f, w, c) for f in g["features"] for w in g["weighting"] for c in g["C"]], None


def fit_label(
    label: str,
    x_train: dict[str, Any],
    x_valid: dict[str, Any],
    y_train: np.ndarray,
    y_valid: np.ndarray,
    grid: Grid,
    seed: int,
    fitted: Callable[[dict[str, Any]], None],
) -> tuple[dict[str, Any], Choice]:
    """The chosen model of one label and why; ``fitted`` is told after each candidate."""
    candidates, note = _candidates(grid, int(y_train.sum()), len(y_valid))
    best: tuple[float, dict[str, Any], tuple[str, str, float]] | None = None
    ratios: dict[str, np.ndarray] = {}
    for features, weighting, c in candidates:
        ratio = None
        if weighting == "nb":
            ratio = ratios.get(features)
            if ratio is None:
                ratio = ratios[features] = nb_ratio(x_train[features], y_train)
        model = _logistic(c, seed).fit(_weighted(x_train[features], ratio), y_train)
        score = (
            model.decision_function(_weighted(x_valid[features], ratio))
            if len(y_valid)
            else np.zeros(0)
        )
        pr_auc = _pr_auc(y_valid, score)
        fitted(
            {
                "label": label,
                "features": features,
                "weighting": weighting,
                "C": c,
                "validation_pr_auc": pr_auc,
                "valid_loss": _log_loss(y_valid, score),
            }
        )
        rank = -1.0 if pr_auc is None else pr_auc
        if best is None or rank > best[0]:
            best = (
                rank,
                {"model": model, "ratio": ratio, "score": score},
                (features, weighting, c),
            )
    assert best is not None
    rank, kept, (features, weighting, c) = best
    calibration, fitted_calibrator = calibrator(kept["score"], y_valid)
    chosen = {
        "features": features,
        "ratio": kept["ratio"],
        "model": kept["model"],
        "calibration": calibration,
        "calibrator": fitted_calibrator,
    }
    choice = Choice(
        label, features, weighting, float(c), None if rank < 0 else rank, calibration,
        len(candidates), note,
    )  # fmt: skip
    return chosen, choice


def fit_all(
    train: tuple[list[str], list[list[str]]],
    valid: tuple[list[str], list[list[str]]],
    labels: list[str],
    grid: Grid,
    seed: int,
    progress: Progress,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[dict[str, Any], list[Choice]]:
    """A bundle (``scores`` reads it) with one chosen model per label, and the choices."""
    (train_texts, train_labels), (valid_texts, valid_labels) = train, valid
    y_train = np.array([[label in row for label in labels] for row in train_labels], dtype=int)
    y_valid = np.array([[label in row for label in labels] for row in valid_labels], dtype=int)
    y_valid = y_valid.reshape(len(valid_texts), len(labels))
    sets = GRIDS[grid]["features"] if grid != "off" else (FALLBACK[0],)
    vectorizers = {name: vectorizer(name) for name in sets}
    x_train = {name: v.fit_transform(train_texts) for name, v in vectorizers.items()}
    x_valid = {
        name: v.transform(valid_texts) if valid_texts else None for name, v in vectorizers.items()
    }
    per_fit = fits_per_label(grid)
    total, done = per_fit * len(labels), [0]

    def fitted(candidate: dict[str, Any]) -> None:
        done[0] += 1
        progress(done[0], total, candidate)
        if should_stop():
            raise Stopped

    chosen, choices = [], []
    for j, label in enumerate(labels):
        model, choice = fit_label(
            label, x_train, x_valid, y_train[:, j], y_valid[:, j], grid, seed, fitted
        )
        chosen.append(model)
        choices.append(choice)
        done[0] = (j + 1) * per_fit  # a fallback label fits fewer candidates
    used = {m["features"] for m in chosen}
    bundle = {
        "version": 2,
        "labels": labels,
        "features": {name: v for name, v in vectorizers.items() if name in used},
        "per_label": chosen,
    }
    return bundle, choices


def scores(bundle: dict[str, Any], texts: list[str]) -> list[dict[str, float]]:
    """Per text, each label's calibrated probability under a ``fit_all`` bundle."""
    x = {name: v.transform(texts) for name, v in bundle["features"].items()}
    columns = []
    for m in bundle["per_label"]:
        decision = m["model"].decision_function(_weighted(x[m["features"]], m["ratio"]))
        columns.append(calibrated(m, decision).tolist())
    return [dict(zip(bundle["labels"], row, strict=True)) for row in zip(*columns, strict=True)]


def choices_json(choices: list[Choice]) -> dict[str, dict[str, Any]]:
    return {c.label: {k: v for k, v in asdict(c).items() if k != "label"} for c in choices}
