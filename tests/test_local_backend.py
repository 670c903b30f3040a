"""The local backend: a real classifier, trained in its own process under a lease in Redis,
its files and model in the artifact store; never retrained."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from modfactory.artifacts import ArtifactStore
from modfactory.backends.base import BackendError, JobRequest
from modfactory.backends.local.backend import MIN_LEASE, LocalBackend
from modfactory.backends.local.jobs import JobRecords, started_once
from modfactory.backends.local.trainer import CONFIG_ENV, LOST, PAUSE_ENV
from modfactory.data.build import build_dataset
from modfactory.data.sources import parse_source
from modfactory.redis_replication import NotReplicated
from modfactory.settings import Settings
from modfactory.values import JobStatus, RecipeParams, TrainingJob

# trainer processes; one xdist process runs the module (its fixture is built once), but for
# its two longest tests (groups of their own: the suite's long pole otherwise)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local_backend")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    build_dataset(parse_source("synthetic:30000"), RecipeParams(), root / "out", root / "data")
    return root / "out"


@pytest.fixture
async def local(redis_db: str, tmp_path: Path):
    """``local(**options)``: a LocalBackend on this test's Redis, its store under tmp_path."""
    clients = []

    def make(**options) -> LocalBackend:
        settings = Settings(redis_url=redis_db, data_dir=tmp_path, worker_lease=2)
        store = ArtifactStore(tmp_path, scratch=tmp_path)
        backend = LocalBackend(store, lease=MIN_LEASE, **options)  # the shortest it takes
        clients.append(Redis.from_url(redis_db))
        backend.connect(clients[-1], settings)
        return backend

    yield make
    for client in clients:
        await client.aclose()


async def record(backend: LocalBackend, job_id: str):
    assert isinstance(backend.records, JobRecords)
    return await backend.records.get(job_id)


async def wait_for(backend: LocalBackend, job_id: str, done, timeout: float = 120) -> TrainingJob:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await backend.get_job(job_id)
        if done(job):
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job stuck at {job.status}"
        await asyncio.sleep(0.2)


async def submit(backend: LocalBackend, dataset: Path, suffix: str, **hyper) -> TrainingJob:
    train = await backend.upload_file(dataset / "train.jsonl", tag="t")
    valid = await backend.upload_file(dataset / "validation.jsonl", tag="v")
    request = JobRequest(
        model=backend.base_model,
        training_file_id=train.id,
        validation_file_ids=[valid.id],
        hyperparameters=hyper,
        suffix=suffix,
    )
    return await backend.create_job(request)


@pytest.fixture
def slow_trainer(monkeypatch: pytest.MonkeyPatch):
    """``slow_trainer(seconds)``: trainers started from now on pause that long after each
    candidate (the test-only knob)."""
    return lambda seconds: monkeypatch.setenv(PAUSE_ENV, str(seconds))


async def test_train_then_classify(tmp_path: Path, dataset: Path, local) -> None:
    backend = local(grid="off")
    first = await backend.upload_file(dataset / "train.jsonl", tag="a")
    again = await backend.upload_file(dataset / "train.jsonl", tag="b")
    assert first.id == again.id and len(list((tmp_path / "local" / "files").iterdir())) == 1

    job = await submit(backend, dataset, "run1")
    assert (await submit(backend, dataset, "run1")).id == job.id  # create is idempotent
    assert job.status == JobStatus.VALIDATED
    assert set(job.classifier_targets[0].labels) >= {"safe", "toxicity", "insult"}
    assert job.metadata["train_rows"] > 5000 and job.metadata["cost"] == 0

    await backend.start_job(job.id)
    done = await wait_for(backend, job.id, lambda j: j.terminal)
    assert done.status == JobStatus.SUCCESS, done.error
    labels = done.classifier_targets[0].labels
    assert [c.step for c in done.checkpoints] == list(range(1, len(labels) + 1))  # one each
    assert all(c.valid_loss > 0 for c in done.checkpoints)
    assert {c["candidates"] for c in done.metadata["selection"].values()} == {1}

    texts = ["you stupid idiot moron", "the council meeting about the budget", ""]
    results = await backend.classify(done.fine_tuned_model, texts)
    assert len(results) == 3
    scores = [r["moderation"]["scores"] for r in results]
    assert scores[0]["insult"] > 0.5 > scores[1]["insult"]
    assert all(0 <= p <= 1 for s in scores for p in s.values())

    # A saved model is never retrained: more looks and starts leave it as it is.
    model = tmp_path / "local" / "jobs" / job.id / "model.joblib"  # the store's key, as a file
    mtime = model.stat().st_mtime_ns
    await backend.start_job(job.id)
    await backend.get_job(job.id)
    assert model.stat().st_mtime_ns == mtime
    assert (await record(backend, job.id)).trainer_starts == 1
    assert (await backend.records.progress(job.id)).trainer == 1

    # Another process with the same settings (serving, say) reads the model from the store.
    elsewhere = LocalBackend(ArtifactStore(tmp_path))
    assert await elsewhere.classify(done.fine_tuned_model, texts[:1]) == results[:1]


async def test_a_killed_trainer_is_started_again_once_its_lease_lapses(
    tmp_path: Path, dataset: Path, slow_trainer, local
) -> None:
    slow_trainer(0.3)
    backend = local(grid="off")
    job = await submit(backend, dataset, "run2")
    await backend.start_job(job.id)
    await wait_for(backend, job.id, lambda j: len(j.checkpoints) >= 1)
    os.kill((await backend.records.progress(job.id)).pid, signal.SIGKILL)

    restarted = await wait_for(backend, job.id, lambda j: j.terminal, timeout=180)
    assert restarted.status == JobStatus.SUCCESS
    assert (await record(backend, job.id)).trainer_starts == 2
    assert (await backend.records.progress(job.id)).trainer == 2  # the second counted itself
    assert len(restarted.checkpoints) == len(restarted.classifier_targets[0].labels)


@pytest.mark.xdist_group("grid")  # a long test: beside the others, not after
async def test_the_default_grid_chooses_and_records_a_model_per_label(
    tmp_path: Path, dataset: Path, local
) -> None:
    """MODFACTORY_LOCAL_GRID=small: a checkpoint per candidate fitted, the choice per
    label in the job's metadata, calibrated probabilities from classify."""
    backend = local()
    job = await submit(backend, dataset, "rungrid")
    await backend.start_job(job.id)
    done = await wait_for(backend, job.id, lambda j: j.terminal, timeout=180)
    assert done.status == JobStatus.SUCCESS, done.error
    chosen = done.metadata["selection"]
    assert set(chosen) == set(done.classifier_targets[0].labels)
    for label, choice in chosen.items():
        assert choice["weighting"] in ("plain", "nb") and choice["C"] > 0, label
        assert choice["candidates"] in (1, 6)  # the fallback, or the small grid
    assert len(done.checkpoints) == sum(c["candidates"] for c in chosen.values())
    assert all(c.valid_loss is not None for c in done.checkpoints)
    [result] = await backend.classify(done.fine_tuned_model, ["you are a stupid idiot"])
    assert set(result["moderation"]["scores"]) == set(chosen)
    assert all(0 <= p <= 1 for p in result["moderation"]["scores"].values())


async def test_a_malformed_file_fails_validation_naming_the_line(
    tmp_path: Path, dataset: Path, local
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "labels": {"moderation": ["safe"]}}\n{"text": 3}\n')
    backend = local()
    uploaded = await backend.upload_file(bad, tag="bad")
    job = await backend.create_job(
        JobRequest(
            model="m",
            training_file_id=uploaded.id,
            validation_file_ids=[],
            hyperparameters={},
            suffix="x",
        )
    )
    assert job.status == JobStatus.FAILED_VALIDATION
    assert ".jsonl:2: not a Classifier Factory row" in job.error  # the file's URL, its line
    assert job.error.startswith(str(tmp_path / "local" / "files" / "file-"))
    with pytest.raises(BackendError, match="cannot start"):
        await backend.start_job(job.id)


def test_unknown_hyperparameter_is_named(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"no hyperparameter 'epochs'; it takes seed"):
        LocalBackend(ArtifactStore(tmp_path)).hyperparameters({"epochs": 8})


async def trainer_alive(backend: LocalBackend, job_id: str) -> bool:
    pid = (await backend.records.progress(job_id)).pid
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status  # a zombie is dead, only not reaped yet


async def test_cancelling_a_job_kills_its_trainer_at_once(
    tmp_path: Path, dataset: Path, slow_trainer, local
) -> None:
    slow_trainer(1000)
    backend = local(grid="off")
    job = await submit(backend, dataset, "runcancel")
    await backend.start_job(job.id)
    await wait_for(backend, job.id, lambda j: len(j.checkpoints) >= 1)
    assert await trainer_alive(backend, job.id)
    cancelled = await backend.cancel_job(job.id)
    assert cancelled.status == JobStatus.CANCELLED
    deadline = time.monotonic() + 5  # SIGKILLed: gone as soon as the kernel reaps it
    while await trainer_alive(backend, job.id):
        assert time.monotonic() < deadline, "the trainer outlived its cancelled job"
        await asyncio.sleep(0.02)
    assert (await backend.cancel_job(job.id)).status == JobStatus.CANCELLED  # idempotent


async def test_a_start_whose_count_is_not_written_leaves_no_lease_and_no_trainer(
    dataset: Path, slow_trainer, local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is taken, then counting the start fails (a failover): no trainer starts,
    the lease is handed back, and the next look starts the one trainer at once."""
    slow_trainer(1000)
    backend = local(grid="off")
    job = await submit(backend, dataset, "runcount")
    records = backend.records
    update = records.update

    async def refused(job_id: str, change):
        if change is started_once:
            raise NotReplicated("the Redis primary changed before its replicas acknowledged it")
        return await update(job_id, change)

    monkeypatch.setattr(records, "update", refused)
    with pytest.raises(NotReplicated):
        await backend.start_job(job.id)
    assert backend._trainers == [] and await records.trainer(job.id) is None

    monkeypatch.setattr(records, "update", update)
    await backend.get_job(job.id)  # no lease to wait out
    await wait_for(backend, job.id, lambda j: len(j.checkpoints) >= 1)
    assert len(backend._trainers) == 1 and (await records.progress(job.id)).trainer == 1
    await backend.cancel_job(job.id)


async def test_a_trainer_past_its_timeout_is_stopped_and_the_job_fails_naming_it(
    tmp_path: Path, dataset: Path, slow_trainer, local
) -> None:
    slow_trainer(1000)
    backend = local(train_timeout=3, grid="off")
    job = await submit(backend, dataset, "runslow")
    await backend.start_job(job.id)
    failed = await wait_for(backend, job.id, lambda j: j.terminal, timeout=120)
    assert failed.status == JobStatus.FAILED
    assert "MODFACTORY_LOCAL_TRAIN_TIMEOUT (3 s)" in failed.error
    assert len(failed.checkpoints) < len(failed.classifier_targets[0].labels)
    for _ in range(50):  # it stops itself at its deadline; exiting may take a moment
        if not await trainer_alive(backend, job.id):
            break
        await asyncio.sleep(0.1)
    assert not await trainer_alive(backend, job.id)


@pytest.mark.xdist_group("leases")  # a long test: beside the others, not after
async def test_one_trainer_per_job_a_second_is_refused_and_a_stale_one_stops(
    tmp_path: Path, dataset: Path, slow_trainer, local
) -> None:
    """The job's lease in Redis, not its machine, says who trains it."""
    slow_trainer(0.3)
    backend = local(grid="off")
    job = await submit(backend, dataset, "runlease")
    await backend.start_job(job.id)
    await wait_for(backend, job.id, lambda j: len(j.checkpoints) >= 1)
    [(first, _, _)] = backend._trainers

    second = subprocess.run(  # another trainer for the job, with a lease of its own
        [sys.executable, "-m", "modfactory.backends.local.trainer", job.id, "--token", "mine"],
        env={**os.environ, CONFIG_ENV: json.dumps(backend._trainer_config)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == LOST and "the lease is not this trainer's" in second.stdout

    first.send_signal(signal.SIGSTOP)  # cut off (a frozen VM, a partition) past its lease
    while (await record(backend, job.id)).trainer_starts < 2:  # a look starts another
        await backend.get_job(job.id)
        await asyncio.sleep(0.2)
    first.send_signal(signal.SIGCONT)  # back: its lease is another's now, so it stops
    assert first.wait(30) == LOST
    done = await wait_for(backend, job.id, lambda j: j.terminal, timeout=180)
    assert done.status == JobStatus.SUCCESS
    assert (await record(backend, job.id)).trainer_starts == 2
