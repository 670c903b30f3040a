"""Scoring an archive across the fleet: sharded over real workers (arq, a real Redis), each
shard written whole, every row exactly once though a worker is SIGKILLed mid-shard; the
same scores as ``classify``; clear errors for sources that cannot be scored."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from helpers import producer_for, settings_env, settings_for, wait_until, worker_process
from modfactory.backends.local.jobs import model_key
from modfactory.data.synthetic import generate_split
from modfactory.settings import Settings
from modfactory.store.run import RunState
from modfactory.store.score_job import ScoreJob, ScoreState
from modfactory.store.score_jobs import ScoreJobStore

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("scoring")]

ROWS, SHARD_ROWS = 200_000, 20_000


@dataclass
class Fleet:
    settings: Settings
    work: Path
    champion: str

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modfactory", *args],
            env={**os.environ, **settings_env(self.settings), "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=300,
        )


async def _train(settings: Settings) -> str:
    producer = await producer_for(settings)
    run = (await producer.submit(producer.spec(source="synthetic:3000"))).run
    final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
    assert final.state == RunState.SUCCEEDED, final.error
    await producer.redis.aclose()
    return run.id


@pytest.fixture(scope="module")
def fleet(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A champion trained by a worker; the tests start the workers that score."""
    url = f"{redis_url}/8"  # this module's own database
    redis.Redis.from_url(url).flushdb()
    work = tmp_path_factory.mktemp("scoring")
    settings = settings_for(url, work / "data", score_shard_rows=SHARD_ROWS)
    with worker_process(settings, work / "trainer.log"):
        champion = asyncio.run(_train(settings))
    yield Fleet(settings, work, champion)
    redis.Redis.from_url(url).flushdb()


def archive(path: Path, rows: int) -> Path:
    """``rows`` comments in the civil_comments schema, with an id column, as parquet."""
    chunks = []
    for seed, start in enumerate(range(0, rows, 50_000)):
        table = generate_split(min(50_000, rows - start), 500 + seed)
        ids = pa.array([f"c-{i}" for i in range(start, start + table.num_rows)])
        chunks.append(table.append_column("id", ids))
    pq.write_table(pa.concat_tables(chunks), path)
    return path


async def _job(settings: Settings, score_id: str) -> ScoreJob:
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        return await ScoreJobStore(client, settings.queue_name).get(score_id)
    finally:
        await client.aclose()


def _shards_held_by_live_workers(settings: Settings) -> set[str]:
    """The workers (lease ids) alive and holding a shard of a scoring job right now."""
    client = redis.Redis.from_url(settings.redis_url)
    prefix = settings.queue_name
    holders = set()
    for key in client.scan_iter(f"{prefix}:holder:score-*:shard:*"):
        worker = client.get(key)
        if worker and client.exists(f"{prefix}:worker:{worker.decode()}"):
            holders.add(worker.decode())
    return holders


def _live_workers(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    return sum(1 for _ in client.scan_iter(f"{settings.queue_name}:worker:*"))


def wait_for(condition, what: str, timeout: float = 240) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_worker_killed_twice_mid_shard_loses_nothing_and_scores_nothing_twice(
    fleet: Fleet,
) -> None:
    source = archive(fleet.work / "comments.parquet", ROWS)
    settings = fleet.settings
    with worker_process(settings, fleet.work / "steady.log"):
        submitted = fleet.cli("score", str(source), "--id-column", "id", "--detach")
        assert submitted.returncode == 0, submitted.stderr
        score_id = submitted.stdout.strip()
        for kill in range(2):  # the second worker is lost mid-shard, twice
            with worker_process(settings, fleet.work / f"doomed-{kill}.log") as doomed:
                wait_for(
                    lambda: len(_shards_held_by_live_workers(settings)) == 2,
                    "both workers to be scoring a shard",
                )
                os.kill(doomed.pid, signal.SIGKILL)
                doomed.wait(10)
            wait_for(lambda: _live_workers(settings) == 1, "the lost worker's lease to end")
        with worker_process(settings, fleet.work / "after.log"):
            wait_for(lambda: asyncio.run(_job(settings, score_id)).state.terminal, "the end")
    job = asyncio.run(_job(settings, score_id))
    assert job.state == ScoreState.SUCCEEDED, job.error
    assert sum(s.attempts for s in job.shards) >= len(job.shards) + 2  # two lost attempts

    # Every row exactly once: one whole part per shard, nothing half-written beside them.
    parts_dir = settings.data_dir / "scores" / score_id
    parts = sorted(parts_dir.glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(ROWS // SHARD_ROWS)]
    leftovers = [p.name for p in parts_dir.rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert leftovers == ["report.html"]
    report = (parts_dir / "report.html").read_text()
    assert score_id in report and "data:image/svg+xml;base64," in report
    scored = pa.concat_tables(pq.read_table(p) for p in parts)
    ids = scored.column("id").to_pylist()
    assert len(ids) == ROWS and len(set(ids)) == ROWS
    assert set(ids) == {f"c-{i}" for i in range(ROWS)}
    assert job.summary is not None and job.summary.rows == ROWS
    flagged = {label: sum(scored.column(f"{label}_flagged").to_pylist()) for label in job.labels}
    assert flagged == {label: s.flagged for label, s in job.summary.labels.items()}

    # The same scores as `modfactory classify` gives the same texts (a sample of 4,000).
    texts = pq.read_table(source, columns=["id", "text"])
    sample = texts.take(list(range(0, ROWS, ROWS // 4_000)))
    pq.write_table(sample, fleet.work / "sample.parquet")
    classified = fleet.cli(
        "classify",
        "--input",
        str(fleet.work / "sample.parquet"),
        "--output",
        str(fleet.work / "classified.parquet"),
    )
    assert classified.returncode == 0, classified.stderr
    expected = pq.read_table(fleet.work / "classified.parquet").to_pylist()
    by_id = {row["id"]: row for row in scored.to_pylist()}
    for row_id, want in zip(sample.column("id").to_pylist(), expected, strict=True):
        got = by_id[row_id]
        for label in job.labels:
            assert got[f"{label}_score"] == want[f"{label}_score"], (row_id, label)
            assert got[f"{label}_flagged"] == want[f"{label}_flagged"], (row_id, label)

    shown = fleet.cli("status", score_id)
    assert shown.returncode == 0 and f"{ROWS:,} of {ROWS:,} rows" in shown.stdout


def test_sources_that_cannot_be_scored_are_refused_in_one_line(fleet: Fleet) -> None:
    garbage = fleet.work / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    good = archive(fleet.work / "small.parquet", 500)
    refused = {
        "missing": (["score", str(fleet.work / "nowhere.parquet")], "no such file or directory"),
        "unreadable": (["score", str(garbage)], "cannot be read as parquet"),
        "no column": (["score", str(good), "--text-column", "body"], "no column 'body' (it has"),
        "no model": (["score", str(good), "--model", "nobody"], "has no champion"),
        "unwritable output": (
            ["score", str(good), "--output", f"{garbage}/results"],
            f"output {garbage}/results: cannot be written",
        ),
    }
    for what, (args, said) in refused.items():
        answer = fleet.cli(*args)
        assert answer.returncode == 2, (what, answer.stdout, answer.stderr)
        lines = answer.stderr.strip().splitlines()
        assert len(lines) == 1 and said in lines[0], (what, lines)
        assert "Traceback" not in answer.stderr

    # A source that goes away between the submission and the plan: the job fails, saying so.
    doomed = archive(fleet.work / "doomed.parquet", 500)
    submitted = fleet.cli("score", str(doomed), "--detach")
    assert submitted.returncode == 0, submitted.stderr
    doomed.unlink()
    score_id = submitted.stdout.strip()
    with worker_process(fleet.settings, fleet.work / "errors.log"):
        wait_for(lambda: asyncio.run(_job(fleet.settings, score_id)).state.terminal, "the end")
    job = asyncio.run(_job(fleet.settings, score_id))
    assert job.state == ScoreState.FAILED
    assert job.error == f"source '{doomed}': no such file or directory"
    shown = fleet.cli("status", score_id)
    assert shown.returncode == 0 and "no such file or directory" in shown.stdout


def test_a_shard_whose_object_store_goes_away_is_resumed_when_it_comes_back(
    fleet: Fleet, s3_bucket: str, s3_server
) -> None:
    bucket = f"{s3_bucket}/modfactory"
    settings = fleet.settings.model_copy(update={"artifacts_url": bucket})
    settings.model_fields_set.add("artifacts_url")
    run = asyncio.run(_run(fleet.settings, fleet.champion))
    name = s3_bucket.removeprefix("s3://")
    key = model_key(run.artifacts.model_id.rsplit(":", 1)[1])  # the model, in the bucket too
    s3_server.client().upload_file(str(fleet.settings.data_dir / key), name, f"modfactory/{key}")
    source = archive(fleet.work / "outage.parquet", 2 * SHARD_ROWS)
    env = {**settings_env(settings), **s3_server.env()}
    with worker_process(settings, fleet.work / "outage.log", **s3_server.env()):
        command = ["score", str(source), "--detach", "--output", f"{s3_bucket}/exported/"]
        submitted = subprocess.run(
            [sys.executable, "-m", "modfactory", *command],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submitted.returncode == 0, submitted.stderr
        score_id = submitted.stdout.strip()
        wait_for(lambda: _shards_held_by_live_workers(settings), "a shard under way")
        with s3_server.outage():
            wait_for(
                lambda: any(s.interrupted for s in asyncio.run(_job(settings, score_id)).shards),
                "the shard to meet the outage",
            )
        wait_for(lambda: asyncio.run(_job(settings, score_id)).state.terminal, "the end")
    job = asyncio.run(_job(settings, score_id))
    assert job.state == ScoreState.SUCCEEDED, job.error
    assert any("did not finish" in e.message for e in job.events)
    prefix = f"modfactory/scores/{score_id}/"
    keys = [k.removeprefix(prefix) for k in s3_server.keys(name) if k.startswith(prefix)]
    assert sorted(k for k in keys if not k.startswith("input/")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "report.html",
    ]
    assert job.summary is not None and job.summary.rows == 2 * SHARD_ROWS
    exported = sorted(k for k in s3_server.keys(name) if k.startswith("exported/"))
    assert exported == ["exported/part-00000.parquet", "exported/part-00001.parquet"]
    assert job.summary.exported_to == f"{s3_bucket}/exported/"


async def _run(settings: Settings, run_id: str):
    from modfactory.store.runs import RunStore

    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        return await RunStore(client, settings.queue_name).get(run_id)
    finally:
        await client.aclose()
