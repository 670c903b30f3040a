"""The local backend's training process: per label, the model ``selection`` chooses
on validation — on whichever machine started it.

Run as ``python -m modfactory.backends.local.trainer JOB_ID --token TOKEN`` by the local
backend, which took the job's lease for TOKEN and passes the rest in the environment
(``CONFIG_ENV``: Redis, the key prefix, the artifact store, the lease; never on the command
line, where other users could read a password). It renews the lease every third of its
length, waits out a Redis failover as long as the lease is safe (``jobs.TrainerLease``),
and stops at once when the lease is no longer its own or no longer safe (Redis away too
long: it stops before the lease can lapse, so no second trainer starts beside it), when the
job is cancelled, or when its deadline passes. It reads the split files from the artifact
store, writes a checkpoint (with its validation loss) after every candidate fitted, and
stores the model last, in one write; a saved model is never retrained. An unreachable
store is waited for, not a failure.

Tests that need a slow trainer set ``MODFACTORY_TEST_TRAINER_PAUSE`` (seconds to wait after
each candidate, watching for a cancel or the deadline meanwhile); it is no setting of
modfactory's and nothing else reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from modfactory.artifacts import ArtifactNotFound, ArtifactStore, ArtifactsUnavailable
from modfactory.backends.local.jobs import (
    CONFIG_ENV,
    RENEW_SHARE,
    LeaseLost,
    LocalJob,
    TrainerLease,
    TrainerProgress,
    model_key,
    now,
    overdue,
)
from modfactory.data.recipe import parse_jsonl
from modfactory.redis_connections import sync_client

PAUSE_ENV = "MODFACTORY_TEST_TRAINER_PAUSE"  # test-only: a slow trainer (see above)
LOST = 3  # exit status: the lease is not (or no longer) this trainer's
T = TypeVar("T")


def lost(why: str) -> NoReturn:
    """Stop at once: the job's lease is not this trainer's any more."""
    print(f"the job's lease is lost ({why}); another trainer may hold it: stopping", flush=True)
    os._exit(LOST)


class Trainer:
    """One job's training, under its lease."""

    def __init__(
        self,
        lease: TrainerLease,
        store: ArtifactStore,
        lease_seconds: float,
        processes: int | None = None,
    ) -> None:
        self.lease = lease
        self.store = store
        self.lease_seconds = lease_seconds
        self.processes = processes
        self.progress = TrainerProgress(host=socket.gethostname(), pid=os.getpid())

    def report(self) -> None:
        """Write the progress; stop at once if the job is another trainer's now."""
        try:
            written = self.lease.write(self.progress)
        except LeaseLost as exc:
            lost(str(exc))
        if not written:
            lost("its progress could not be written")

    def finish(self, state: str, error: str | None = None) -> None:
        self.progress.state = state  # type: ignore[assignment]
        self.progress.error = error
        self.progress.finished_at = now()
        self.report()
        self.lease.release()

    def stop_reason(self, job: LocalJob) -> tuple[str, str | None] | None:
        """(state, error) when the job must stop: cancelled, or past its deadline."""
        if job.status == "CANCELLED":
            return "cancelled", None
        if job.deadline is not None and time.time() > job.deadline:
            return "failed", overdue(job.deadline_seconds or 0)
        return None

    def keep_lease(self) -> None:
        """The lease renewed every third of its length (a thread); the process ends at
        once when the lease is lost, or when the job is cancelled or overdue."""
        last = time.monotonic()
        while True:
            time.sleep(self.lease_seconds * RENEW_SHARE)
            try:
                if not self.lease.renew():
                    lost(f"not renewed for {time.monotonic() - last:.1f} s")
                last = time.monotonic()
                reason = self.stop_reason(self.lease.job())
            except LeaseLost as exc:  # Redis away too long: stop before the lease lapses
                lost(f"{exc}; last renewed {time.monotonic() - last:.1f} s ago")
            if reason is not None:
                self.finish(*reason)
                os._exit(0)

    def patiently(self, action: Callable[[], T]) -> T:
        """``action()``, tried again while the artifact store is unreachable."""
        delay = 0.5
        while True:
            try:
                return action()
            except ArtifactsUnavailable as exc:
                print(f"artifact store unreachable, trying again: {exc}", flush=True)
                time.sleep(delay)
                delay = min(delay * 2, 15)

    def split(self, key: str | None, target: str) -> tuple[list[str], list[list[str]]]:
        if key is None:
            return [], []
        rows = parse_jsonl(self.patiently(lambda: self.store.load_text(key)).splitlines(), key)
        return [r["text"] for r in rows], [r["labels"][target] for r in rows]

    def train(self) -> None:
        """Fit the grid of ``selection`` (one checkpoint per candidate fitted), record
        the choice per label, store the model; stop early if the job is cancelled or runs
        out of time."""
        import joblib

        from modfactory.backends.local.fitting import default_processes
        from modfactory.backends.local.selection import Stopped, choices_json, fit_all

        job = self.lease.job()
        self.progress.trainer = self.lease.progress().trainer + 1  # it counts itself
        self.progress.started_at = now()
        self.report()
        print(
            f"trainer {self.progress.trainer} of job {job.id}: "
            f"{self.progress.host}, pid {self.progress.pid}",
            flush=True,
        )
        if self.patiently(lambda: self.store.exists(model_key(job.id))):
            return self.finish("succeeded")  # saved by a trainer lost just after
        train_data = self.split(job.training_file, job.target)
        valid_data = self.split(job.validation_file, job.target)

        def fitted(done: int, total: int, candidate: dict[str, Any]) -> None:
            point = {"step": done, "valid_loss": candidate.pop("valid_loss")}
            self.progress.checkpoints.append({**point, "created_at": now().isoformat()})
            self.progress.candidate = {**candidate, "done": done, "total": total}
            self.report()

        try:
            bundle, choices = fit_all(
                train_data,
                valid_data,
                job.labels,
                job.grid,  # type: ignore[arg-type]
                int(job.hyperparameters["seed"]),
                fitted,
                should_stop=self.paused_or_stopped,
                processes=self.processes or default_processes(),
            )
        except Stopped:
            return
        bundle["target"] = job.target
        self.progress.selection = choices_json(choices)  # before the model: a model is done
        self.report()
        out = io.BytesIO()
        joblib.dump(bundle, out)
        if not self.lease.renew():
            lost("before storing the model")  # another trainer has the job: it stores it
        self.patiently(lambda: self.store.save(model_key(job.id), out.getvalue()))
        self.finish("succeeded")

    def paused_or_stopped(self) -> bool:
        """Whether to stop, after the test-only pause (none unless PAUSE_ENV is set)."""
        until = time.monotonic() + float(os.environ.get(PAUSE_ENV) or 0)
        while True:
            reason = self.stop_reason(self.lease.job())
            if reason is not None:
                self.finish(*reason)
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job_id")
    parser.add_argument("--token", required=True, help="the lease taken for this trainer")
    args = parser.parse_args(argv)
    config = json.loads(os.environ[CONFIG_ENV])
    ca_file = config.get("redis_ca_file")
    seconds = float(config["lease"])
    redis = sync_client(
        config["redis_url"],
        Path(ca_file) if ca_file else None,
        patience=0,  # the lease waits for Redis itself, as long as it is safe to
        min_replicas=int(config.get("redis_min_replicas") or 0),
        answer_within=max(1.0, seconds / 8),
    )
    lease = TrainerLease(redis, config["prefix"], args.job_id, args.token, seconds)
    if not lease.renew():
        print(f"job {args.job_id}: the lease is not this trainer's; stopping", flush=True)
        return LOST
    store = ArtifactStore(
        config["artifacts_url"], config["artifacts_options"], Path(config["scratch"])
    )
    trainer = Trainer(lease, store, seconds, config.get("processes"))

    trainer_pid = os.getpid()

    def stop(signum: int, frame: object) -> None:
        """Told to stop (its worker ends with an embedded Redis): the lease goes first."""
        if os.getpid() == trainer_pid:  # never in a fitting process forked from here
            with contextlib.suppress(Exception):
                lease.release()
        os._exit(LOST)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=trainer.keep_lease, daemon=True).start()
    try:
        trainer.train()
    except LeaseLost as exc:
        lost(str(exc))
    except ArtifactNotFound as exc:
        trainer.finish("failed", str(exc))
        return 1
    except Exception as exc:
        traceback.print_exc()
        trainer.finish("failed", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
