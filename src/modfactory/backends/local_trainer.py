"""The local backend's training process: TF-IDF features and one logistic model per label.

Run as ``python -m modfactory.backends.local_trainer JOB_DIR --lock-fd N``, by the local
backend only. It holds the job's lock (inherited from the backend) for as long as it lives,
so a dead trainer is seen at once; it writes ``progress.json`` after every epoch and the
model last, atomically. A saved model is never retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modfactory.fileio import atomic_output

MODEL_FILE = "model.joblib"
PROGRESS_FILE = "progress.json"
JOB_FILE = "job.json"


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _load(path: str, target: str) -> tuple[list[str], list[list[str]]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                texts.append(record["text"])
                labels.append(record["labels"][target])
    return texts, labels


def overdue(timeout: float) -> str:
    """Why a job whose trainer ran past its deadline failed."""
    return (
        f"the local trainer ran longer than MODFACTORY_LOCAL_TRAIN_TIMEOUT ({timeout:g} s); "
        "lower the epochs or raise the timeout"
    )


def train(job_dir: Path) -> None:
    """Fit (a grid chosen on validation, or the plain SGD model with ``grid`` off), save
    the model; stop early if the job is cancelled or runs out of time."""
    if read_json(job_dir / JOB_FILE).get("grid", "off") != "off":
        select(job_dir)
        return
    train_sgd(job_dir)


def select(job_dir: Path) -> None:
    """The grid of ``local_selection``: one checkpoint per candidate fitted (its
    validation loss), the choice per label recorded in the progress file."""
    import joblib

    from modfactory.backends.local_selection import Stopped, choices_json, fit_all

    job = read_json(job_dir / JOB_FILE)
    labels: list[str] = job["labels"]
    progress: dict[str, Any] = {
        "state": "running",
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(),
        "checkpoints": [],
    }
    write_json(job_dir / PROGRESS_FILE, progress)
    train_data = _load(job["training_file"], job["target"])
    valid_data = (
        _load(job["validation_file"], job["target"]) if job["validation_file"] else ([], [])
    )

    def fitted(done: int, total: int, candidate: dict[str, Any]) -> None:
        point = {"step": done, "valid_loss": candidate.pop("valid_loss")}
        progress["checkpoints"].append({**point, "created_at": datetime.now(UTC).isoformat()})
        progress["candidate"] = {**candidate, "done": done, "total": total}
        write_json(job_dir / PROGRESS_FILE, progress)

    try:
        bundle, choices = fit_all(
            train_data,
            valid_data,
            labels,
            job["grid"],
            int(job["hyperparameters"]["seed"]),
            fitted,
            should_stop=lambda: _stopped(job_dir, progress),
        )
    except Stopped:
        return
    bundle["target"] = job["target"]
    with atomic_output(job_dir / MODEL_FILE) as tmp:
        joblib.dump(bundle, tmp)
    progress["selection"] = choices_json(choices)
    progress.update(state="succeeded", finished_at=datetime.now(UTC).isoformat())
    write_json(job_dir / PROGRESS_FILE, progress)


def train_sgd(job_dir: Path) -> None:
    """Fit, checkpoint each epoch, save the model; stop early if the job is cancelled."""
    import joblib
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import log_loss

    job = read_json(job_dir / JOB_FILE)
    target = job["target"]
    labels: list[str] = job["labels"]
    params = job["hyperparameters"]
    epochs, alpha, seed = int(params["epochs"]), float(params["alpha"]), int(params["seed"])
    progress = {
        "state": "running",
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(),
        "checkpoints": [],
    }
    write_json(job_dir / PROGRESS_FILE, progress)

    train_texts, train_labels = _load(job["training_file"], target)
    valid_texts, valid_labels = _load(job["validation_file"], target)
    features = _features()
    x_train = features.fit_transform(train_texts)
    x_valid = features.transform(valid_texts) if valid_texts else None
    y_train = np.array([[label in row for label in labels] for row in train_labels], dtype=int)
    y_valid = np.array([[label in row for label in labels] for row in valid_labels], dtype=int)
    models = [SGDClassifier(loss="log_loss", alpha=alpha, random_state=seed) for _ in labels]
    rng = np.random.default_rng(seed)

    def mean_log_loss(x: Any, y: Any) -> float:
        losses = [
            log_loss(y[:, j], model.predict_proba(x)[:, 1], labels=[0, 1])
            for j, model in enumerate(models)
        ]
        return float(np.mean(losses))

    for epoch in range(1, epochs + 1):
        if _stopped(job_dir, progress):
            return
        order = rng.permutation(x_train.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for j, model in enumerate(models):
                model.partial_fit(x_train[order], y_train[order, j], classes=[0, 1])
        progress["checkpoints"].append(
            {
                "step": epoch,
                "train_loss": mean_log_loss(x_train, y_train),
                "valid_loss": mean_log_loss(x_valid, y_valid) if x_valid is not None else None,
                "created_at": datetime.now(UTC).isoformat(),
            }
        )
        write_json(job_dir / PROGRESS_FILE, progress)

    with atomic_output(job_dir / MODEL_FILE) as tmp:
        bundle = {"target": target, "labels": labels, "features": features, "models": models}
        joblib.dump(bundle, tmp)
    progress.update(state="succeeded", finished_at=datetime.now(UTC).isoformat())
    write_json(job_dir / PROGRESS_FILE, progress)


def _features() -> Any:
    """Word 1-2-grams and character 2-5-grams, TF-IDF weighted (sublinear)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    common = {"min_df": 2, "max_features": 200_000, "sublinear_tf": True}
    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), **common)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **common)),
        ]
    )


def _stopped(job_dir: Path, progress: dict[str, Any]) -> bool:
    """The job was cancelled or ran past its deadline: say so in the progress file."""
    current = read_json(job_dir / JOB_FILE)
    if current["status"] == "CANCELLED":
        progress.update(state="cancelled", finished_at=datetime.now(UTC).isoformat())
    elif time.time() > current.get("deadline", float("inf")):
        progress.update(state="failed", error=overdue(current["deadline_seconds"]))
    else:
        return False
    write_json(job_dir / PROGRESS_FILE, progress)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--lock-fd", type=int, required=True, help="inherited, held until exit")
    args = parser.parse_args(argv)
    if (args.job_dir / MODEL_FILE).exists():
        return 0
    try:
        train(args.job_dir)
    except Exception as exc:
        traceback.print_exc()
        progress_path = args.job_dir / PROGRESS_FILE
        progress = read_json(progress_path) if progress_path.exists() else {}
        progress.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        write_json(progress_path, progress)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
