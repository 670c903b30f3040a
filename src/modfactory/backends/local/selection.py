"""The local model, chosen on validation.

Per label, a small grid of candidates — TF-IDF word and character n-grams, plain or
naive-Bayes weighted (the log-count ratio of Wang & Manning's NBSVM, computed per label
on the training split), each with a logistic regression at a few regularisation
strengths — is fitted on the training split; the candidate with the best PR-AUC on the
**validation** split is kept, nothing is refitted, and its scores are calibrated on
validation (Platt scaling) so that a score of 0.8 means about 80 %. A label with fewer
than ``MIN_POSITIVES`` positive training rows gets one robust setting instead, and says so.

Pure functions of arrays and texts, run by the trainer process (``trainer``); the fits themselves
run in ``fitting``'s processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from modfactory.backends.local.fitting import FitData, Task, fitted_in_order, weighted

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


def _log_loss(y: np.ndarray, decision: np.ndarray) -> float | None:
    """The validation log-loss of a candidate's (uncalibrated) probabilities."""
    if not len(y):
        return None
    from sklearn.metrics import log_loss

    return float(log_loss(y, 1 / (1 + np.exp(-decision)), labels=[0, 1]))


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


def _choose(
    label: str,
    tasks: list[Task],
    results: list[dict[str, Any]],
    y_valid: np.ndarray,
    note: str | None,
) -> tuple[dict[str, Any], Choice]:
    """The candidate with the best validation PR-AUC (the first on a tie), calibrated."""
    ranks = [-1.0 if r["pr_auc"] is None else r["pr_auc"] for r in results]
    best = max(range(len(results)), key=lambda i: (ranks[i], -i))
    task, kept = tasks[best], results[best]
    calibration, fitted_calibrator = calibrator(kept["score"], y_valid)
    chosen = {
        "features": task.features,
        "ratio": kept["ratio"],
        "model": kept["model"],
        "calibration": calibration,
        "calibrator": fitted_calibrator,
    }
    rank = ranks[best]
    choice = Choice(
        label, task.features, task.weighting, float(task.C), None if rank < 0 else rank,
        calibration, len(tasks), note,
    )  # fmt: skip
    return chosen, choice


def _plan(
    labels: list[str], y_train: np.ndarray, grid: Grid, validation_rows: int
) -> list[tuple[list[Task], str | None]]:
    """Per label, the candidates to fit and why only the fallback, when it is."""
    plans = []
    for j in range(len(labels)):
        candidates, note = _candidates(grid, int(y_train[:, j].sum()), validation_rows)
        plans.append(([Task(j, f, w, c) for f, w, c in candidates], note))
    return plans


def _features(
    train_texts: list[str], valid_texts: list[str], grid: Grid
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The vectorizers of the grid's n-gram sets, fitted on training, and both splits'
    features."""
    sets = GRIDS[grid]["features"] if grid != "off" else (FALLBACK[0],)
    vectorizers = {name: vectorizer(name) for name in sets}
    x_train = {name: v.fit_transform(train_texts) for name, v in vectorizers.items()}
    x_valid = {
        name: v.transform(valid_texts) if valid_texts else None for name, v in vectorizers.items()
    }
    return vectorizers, x_train, x_valid


def fit_all(
    train: tuple[list[str], list[list[str]]],
    valid: tuple[list[str], list[list[str]]],
    labels: list[str],
    grid: Grid,
    seed: int,
    progress: Progress,
    should_stop: Callable[[], bool] = lambda: False,
    processes: int = 1,
) -> tuple[dict[str, Any], list[Choice]]:
    """A bundle (``scores`` reads it) with one chosen model per label, and the choices.
    Candidates are fitted by ``processes`` processes; the choice does not depend on it."""
    (train_texts, train_labels), (valid_texts, valid_labels) = train, valid
    y_train = np.array([[label in row for label in labels] for row in train_labels], dtype=int)
    y_valid = np.array([[label in row for label in labels] for row in valid_labels], dtype=int)
    y_train = y_train.reshape(len(train_texts), len(labels))
    y_valid = y_valid.reshape(len(valid_texts), len(labels))
    vectorizers, x_train, x_valid = _features(train_texts, valid_texts, grid)
    plans = _plan(labels, y_train, grid, len(valid_texts))
    tasks = [task for label_tasks, _ in plans for task in label_tasks]
    ratios = {
        (t.label, t.features): nb_ratio(x_train[t.features], y_train[:, t.label])
        for t in tasks
        if t.weighting == "nb"
    }
    data = FitData(x_train, x_valid, y_train, y_valid, ratios, seed)
    results: list[dict[str, Any]] = []
    with fitted_in_order(data, tasks, processes) as fitted:
        for task, result in zip(tasks, fitted, strict=True):
            results.append(result)
            progress(
                len(results),
                len(tasks),
                {
                    "label": labels[task.label],
                    **{k: v for k, v in asdict(task).items() if k != "label"},
                    "validation_pr_auc": result["pr_auc"],
                    "valid_loss": _log_loss(y_valid[:, task.label], result["score"]),
                },
            )
            if should_stop():
                raise Stopped
    chosen, choices, at = [], [], 0
    for j, (label_tasks, note) in enumerate(plans):
        model, choice = _choose(
            labels[j], label_tasks, results[at : at + len(label_tasks)], y_valid[:, j], note
        )
        at += len(label_tasks)
        chosen.append(model)
        choices.append(choice)
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
        decision = m["model"].decision_function(weighted(x[m["features"]], m["ratio"]))
        columns.append(calibrated(m, decision).tolist())
    return [dict(zip(bundle["labels"], row, strict=True)) for row in zip(*columns, strict=True)]


def choices_json(choices: list[Choice]) -> dict[str, dict[str, Any]]:
    return {c.label: {k: v for k, v in asdict(c).items() if k != "label"} for c in choices}
