"""The local backend's training process: per label, the model ``local_selection`` chooses
on validation.

Run as ``python -m modfactory.backends.local_trainer JOB_DIR --lock-fd N``, by the local
backend only. It holds the job's lock (inherited from the backend) for as long as it lives,
so a dead trainer is seen at once; it writes ``progress.json`` after every candidate fitted
(a checkpoint with its validation loss) and the model last, atomically. A saved model is
never retrained.

Tests that need a slow trainer set ``MODFACTORY_TEST_TRAINER_PAUSE`` (seconds to wait after
each candidate, watching for a cancel or the deadline meanwhile); it is no setting of
modfactory's and nothing else reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modfactory.fileio import atomic_output

MODEL_FILE = "model.joblib"
PROGRESS_FILE = "progress.json"
JOB_FILE = "job.json"
PAUSE_ENV = "MODFACTORY_TEST_TRAINER_PAUSE"  # test-only: a slow trainer (see above)


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
        "choose a smaller MODFACTORY_LOCAL_GRID or raise the timeout"
    )


def train(job_dir: Path) -> None:
    """Fit the grid of ``local_selection`` (one checkpoint per candidate fitted), save the
    model, record the choice per label; stop early if the job is cancelled or runs out of
    time."""
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
            should_stop=lambda: _paused_or_stopped(job_dir, progress),
        )
    except Stopped:
        return
    bundle["target"] = job["target"]
    progress["selection"] = choices_json(choices)  # before the model: a saved model is done
    write_json(job_dir / PROGRESS_FILE, progress)
    with atomic_output(job_dir / MODEL_FILE) as tmp:
        joblib.dump(bundle, tmp)
    progress.update(state="succeeded", finished_at=datetime.now(UTC).isoformat())
    write_json(job_dir / PROGRESS_FILE, progress)


def _paused_or_stopped(job_dir: Path, progress: dict[str, Any]) -> bool:
    """Whether to stop, after the test-only pause (none unless PAUSE_ENV is set)."""
    until = time.monotonic() + float(os.environ.get(PAUSE_ENV) or 0)
    while not _stopped(job_dir, progress):
        if time.monotonic() >= until:
            return False
        time.sleep(0.05)
    return True


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
