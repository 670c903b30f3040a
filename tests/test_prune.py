"""Bounded growth: finished runs beyond the retention limits are pruned, champions and the
runs a rollback needs are kept (real Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.stages.context import StageContext
from modfactory.stages.reconciler import reconcile_once
from modfactory.store import queue
from modfactory.store.registry import ModelRecord, Promotion
from modfactory.store.run import STAGES, Run, RunSpec, RunState, StageStatus
from modfactory.values import RecipeParams


async def stored_runs(producer: Producer, n: int, unfinished: int = 0) -> list[str]:
    """``n`` finished runs (and ``unfinished`` queued ones), oldest first, as the run store
    writes them (document, index, state), in a few pipelines."""
    store, start = producer.store, datetime(2026, 1, 1, tzinfo=UTC)
    spec = RunSpec(source="synthetic", backend="local", recipe=RecipeParams())
    ids = []
    async with store.redis.pipeline(transaction=False) as pipe:
        for i in range(n + unfinished):
            at = start + timedelta(minutes=i)
            run = Run(id=f"run-{i:05d}", spec=spec, created_at=at, updated_at=at)
            if i < n:
                run.state, run.finished_at = RunState.SUCCEEDED, at
                for stage in STAGES:
                    run.stages[stage].state = StageStatus.SUCCEEDED
            pipe.set(store._key(run.id), run.model_dump_json())
            pipe.zadd(store._index, {run.id: at.timestamp()})
            store._index_writes(pipe, run)
            ids.append(run.id)
        await pipe.execute()
    return ids


@pytest.mark.slow
async def test_ten_thousand_finished_runs_are_pruned_to_the_limit_keeping_the_champion_chain(
    redis_db: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_db, data_dir=tmp_path, keep_runs=500)
    pool = await queue.open_pool(redis_db, "modfactory")
    producer = Producer(pool, settings)
    ids = await stored_runs(producer, 10_000, unfinished=3)
    finished, unfinished = ids[:10_000], ids[10_000:]
    champion, earlier, earliest = finished[9000], finished[4000], finished[10]
    promoted = [
        Promotion(run_id=r, model_id=f"m-{r}", at=datetime.now(UTC), reason="x")
        for r in (earliest, earlier, champion)
    ]
    record = ModelRecord(
        name="moderation",
        champion=promoted[-1],
        history=promoted[:-1],
        candidates={finished[20]: "lost", finished[9999]: "lost"},
    )
    await pool.set(producer.registry.key("moderation"), record.model_dump_json())
    for run_id in (finished[30], finished[9999], earliest):
        (tmp_path / "runs" / run_id / "evaluate").mkdir(parents=True)

    would = await producer.prune(dry_run=True)
    assert len(would) == 10_000 - 500 - 3  # the champion and the two before it are kept
    assert await pool.zcard(producer.store._index) == 10_003  # nothing deleted yet

    pruned = await producer.prune()
    assert pruned == would
    assert set(pruned) == set(finished[:9500]) - {earliest, earlier, champion}
    left = {i.decode() for i in await pool.zrange(producer.store._index, 0, -1)}
    assert left == set(finished[9500:]) | {earliest, earlier, champion} | set(unfinished)
    assert await pool.hlen(producer.store.states_key) == len(left)
    counts = await producer.store.state_counts()  # what /metrics shows, counted, not read
    assert {state: n for state, n in counts.items() if n} == {
        "succeeded": len(left) - 3,
        "queued": 3,
    }
    for run_id in (champion, earlier, earliest, *unfinished):
        assert (await producer.store.get(run_id)).id == run_id
    assert not await pool.exists(producer.store._key(finished[30]))
    assert not (tmp_path / "runs" / finished[30]).exists()  # its directory went too
    assert (tmp_path / "runs" / finished[9999]).exists() and (tmp_path / "runs" / earliest).exists()
    kept = await producer.registry.get("moderation")
    assert kept.candidates == {finished[9999]: "lost"}  # the pruned candidate is forgotten
    assert (await producer.rollback()).champion.run_id == earlier  # the chain still works
    assert await producer.prune() == []  # the rolled-back champion was a champion: kept
    await pool.aclose()


async def test_young_runs_are_kept_by_age_and_the_reconciler_prunes_once_a_day(
    redis_db: str, tmp_path: Path
) -> None:
    pool = await queue.open_pool(redis_db, "modfactory")
    settings = Settings(redis_url=redis_db, data_dir=tmp_path, keep_runs=10, keep_days=30)
    producer = Producer(pool, settings)
    old = await stored_runs(producer, 40)  # made in January 2026: older than 30 days
    young = await producer.store.create(
        RunSpec(source="synthetic", backend="local", recipe=RecipeParams()), exclusive=False
    )
    await producer.store.cancel(young.id, "by hand")

    sc = StageContext(settings, producer.store, pool)
    first = await reconcile_once(sc)
    assert set(first.pruned) == set(old[:-9])  # the 10 newest (young among them) stay
    assert (await reconcile_once(sc)).pruned == []  # once a day
    unlimited = Producer(pool, Settings(redis_url=redis_db, keep_runs=None))
    assert await unlimited.prune(dry_run=True) == []
    by_age_only = Producer(pool, Settings(redis_url=redis_db, keep_runs=None, keep_days=30))
    assert await by_age_only.prune(dry_run=True) == old[-9:][::-1]  # the young run stays
    await pool.aclose()


async def test_the_prune_command_lists_then_deletes(redis_db: str, tmp_path: Path) -> None:
    pool = await queue.open_pool(redis_db, "modfactory")
    ids = await stored_runs(Producer(pool, Settings(redis_url=redis_db)), 5)
    env = {**os.environ, "MODFACTORY_REDIS_URL": redis_db, "MODFACTORY_KEEP_RUNS": "2"}

    def prune(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modfactory", "prune", *args, "--data-dir", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = prune("--dry-run", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"dry_run": True, "runs": ids[:3][::-1]}
    assert await pool.zcard("modfactory:runs") == 5
    done = prune()
    assert done.returncode == 0 and "deleted 3 finished run(s)" in done.stdout
    assert await pool.zcard("modfactory:runs") == 2
    await pool.aclose()


async def test_a_run_promoted_while_prune_runs_is_kept(redis_db: str, tmp_path: Path) -> None:
    """prune reads which runs to keep, then deletes one by one; a run promoted by hand in
    between is checked again in the transaction that would delete it."""
    pool = await queue.open_pool(redis_db, "modfactory")
    producer = Producer(pool, Settings(redis_url=redis_db, data_dir=tmp_path, keep_runs=2))
    ids = await stored_runs(producer, 6)
    old = ids[0]
    run = await producer.store.get(old)
    run.artifacts.model_id = f"model-{old}"
    await pool.set(producer.store._key(old), run.model_dump_json())
    (tmp_path / "runs" / old).mkdir(parents=True)
    before_the_promotion = await producer.registry.kept_runs()
    await producer.promote(old, force=True)  # by hand, while prune is under way

    async def as_read_before() -> set[str]:
        return before_the_promotion

    producer.registry.kept_runs = as_read_before  # prune's look came before the promotion
    assert old in await producer.prune(dry_run=True)  # it was doomed by that look
    pruned = await producer.prune()
    assert set(pruned) == set(ids[1:4])
    assert (await producer.store.get(old)).id == old and (tmp_path / "runs" / old).exists()
    assert (await producer.registry.get("moderation")).champion_run == old
    await pool.aclose()


async def test_prune_deletes_a_run_s_objects_and_its_local_job_in_a_bucket(
    redis_db: str, s3_bucket: str, tmp_path: Path
) -> None:
    """With the artifacts in S3: a pruned run's objects go, and its local training job's
    model and record; the kept run's stay."""
    from modfactory.artifacts import ArtifactStore, backend_key, run_key

    settings = Settings(
        redis_url=redis_db, data_dir=tmp_path, artifacts_url=f"{s3_bucket}/p", keep_runs=1
    )
    pool = await queue.open_pool(redis_db, "modfactory")
    producer = Producer(pool, settings)
    ids = await stored_runs(producer, 3)
    store = ArtifactStore.from_settings(settings)
    for run_id in ids:
        store.save_text(run_key(run_id, "report.html"), "<html>")
        store.save_text(run_key(run_id, "dataset", "train.jsonl"), "{}")
    await producer.store.record_artifacts(ids[0], "trained", training_job_id="ftjob-old")
    store.save(backend_key("local", "jobs", "ftjob-old", "model.joblib"), b"model")
    await pool.set("modfactory:local:job:ftjob-old", "{}")

    assert set(await producer.prune()) == set(ids[:2])
    assert store.list("runs") == [
        f"runs/{ids[2]}/dataset/train.jsonl",
        f"runs/{ids[2]}/report.html",
    ]
    assert store.list("local") == [] and not await pool.exists("modfactory:local:job:ftjob-old")
    await pool.aclose()
