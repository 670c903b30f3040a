"""Losing the Redis primary (real processes: a primary, a replica, three sentinels): runs in
flight on both backends go on and succeed with nothing done twice, ``serve`` answers every
moderation request, and every correction it acknowledged is in the next build; with the
replica gone stale on purpose, MODFACTORY_REDIS_MIN_REPLICAS decides what can be lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from emulator_jobs import Timing
from failover import KEY, ReplicatedRedis, run_failover
from helpers import producer_for, settings_for, wait_until, worker_process
from mistral_emulator import MistralEmulator
from modfactory.producer import Producer
from modfactory.redis_connections import async_client
from modfactory.redis_replication import HISTORY, NotReplicated, replicated
from modfactory.store import queue
from modfactory.store.feedback import Correction, FeedbackLog
from modfactory.store.runs import RunStore

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("failover")]  # one Redis set, shared


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedRedis]:
    """A primary, a replica and three sentinels, whole again after each test's failovers;
    each test works in a database of its own."""
    replicated = ReplicatedRedis(tmp_path_factory.mktemp("ha"))
    replicated.start()
    yield replicated
    replicated.stop()


async def test_runs_serve_and_corrections_come_through_two_failovers(
    ha: ReplicatedRedis, tmp_path: Path
) -> None:
    report = await run_failover(tmp_path, ha=ha, db=1)
    print(report)
    assert report.states and set(report.states.values()) == {"succeeded"}, report.errors
    assert len(report.failovers) == 2
    assert report.mistral == {"jobs": 1, "starts": 1, "uploads": 2}
    assert report.trainers_finished == ["succeeded"] * 3
    assert report.trainers_ran == [1, 1, 1], report.trainer_starts  # one trainer per job
    assert set(report.moderation) == {200}, report.moderation  # every one answered ...
    assert report.moderation_in_outages[200] > 20  # ... those sent with no primary too
    assert report.corrections_accepted > 10
    assert report.corrections_missing == []  # every 202 is in the next build


async def test_with_a_stale_replica_min_replicas_decides_whether_an_acknowledged_write_is_lost(
    ha: ReplicatedRedis, tmp_path: Path
) -> None:
    """The replica takes nothing from the primary for a while (replication held still), then
    the primary dies and that replica is made primary. A correction and a run created in
    that while are acknowledged (202, "run … started") or not as their writes are:
    with MODFACTORY_REDIS_MIN_REPLICAS=1 they are refused and nothing acknowledged is lost;
    with 0 they are acknowledged and lost — the caveat the README gives."""
    url = ha.url_for(2)
    settings = settings_for(url, tmp_path / "data")
    outcomes = {}
    for min_replicas in (1, 0):
        pool = await queue.open_pool(
            url, settings.queue_name, patience=0.5, min_replicas=min_replicas
        )
        feedback = FeedbackLog(pool, settings.queue_name)
        before = await feedback.add(correction(f"before the pause, {min_replicas}"))
        await on_the_replica(url)
        ha.stale_replica()
        stale_text = f"while the replica is stale, {min_replicas}"
        acknowledged: list[str] = []  # "correction", and the run's id
        try:
            await feedback.add(correction(stale_text))
            acknowledged.append("correction")
        except NotReplicated as exc:
            assert "0 of 1 replicas acknowledged it" in str(exc)
        try:
            spec = Producer(pool, settings).spec(model_name=f"stale-{min_replicas}")
            acknowledged.append((await RunStore(pool, settings.queue_name).create(spec)).id)
        except NotReplicated:
            pass
        await asyncio.to_thread(ha.kill_primary, stale_replica=True)
        texts = [c.text for c in await feedback.after("moderation", 0)]
        runs = [r.id for r in await RunStore(pool, settings.queue_name).list(20)]
        there = {"correction": stale_text in texts} | {run_id: True for run_id in runs}
        kept = [what for what in acknowledged if there.get(what)]
        assert f"before the pause, {min_replicas}" in texts and before[1]
        outcomes[min_replicas] = (acknowledged, kept)
        await pool.aclose()
    acknowledged, kept = outcomes[1]
    assert acknowledged == [] and kept == []  # refused, so the caller knows to try again
    acknowledged, kept = outcomes[0]
    assert len(acknowledged) == 2 and kept == []  # acknowledged, then lost with the primary


async def test_a_write_the_old_primary_took_is_not_acknowledged_by_the_new_ones_replicas(
    ha: ReplicatedRedis,
) -> None:
    """A write taken by the primary just before it dies, checked on the primary Sentinel
    names after it: the new primary's replica acknowledges everything the new primary has,
    yet that write may not be among it — it is not acknowledged. (Two primaries at once,
    when Sentinel promotes a replica while the old primary is only slow, look the same.)"""
    client = async_client(ha.url_for(4), patience=10, min_replicas=1)
    await client.set("taken", "by the old primary")
    taken_by = await client.eval(HISTORY, 0)  # as a write notes it, in its transaction
    await replicated(client, "a write on the primary that took it", taken_by)
    await asyncio.to_thread(ha.kill_primary)
    with pytest.raises(NotReplicated, match="the Redis primary changed before its replicas"):
        await replicated(client, "a write on the old primary", taken_by)
    await client.set("taken", "by the new primary")
    await replicated(client, "a write on the new primary", await client.eval(HISTORY, 0))
    await client.aclose()


async def on_the_replica(url: str) -> None:
    """Return once the replica holds every write made so far (whatever the writer waited
    for)."""
    durable = async_client(url, patience=5, min_replicas=1)
    await replicated(durable, "what came before", await durable.eval(HISTORY, 0))
    await durable.aclose()


def correction(text: str) -> Correction:
    return Correction(model_name="moderation", text=text, labels=["toxicity"], at=datetime.now(UTC))


async def test_a_run_whose_document_went_back_in_time_is_brought_forward_without_doing_twice(
    ha: ReplicatedRedis, tmp_path: Path
) -> None:
    """With MODFACTORY_REDIS_MIN_REPLICAS=0 and the replica held still, a Mistral run builds,
    uploads, creates and starts its job on the primary alone; the primary dies, and on the
    new one the run is back where it was created. It is brought forward again from what the
    API says: the files, the job and its start are found, not made a second time."""
    emulator = MistralEmulator(api_key=KEY)
    emulator.timing = Timing(step=1.0, checkpoints=4)
    settings = settings_for(
        ha.url_for(3), tmp_path / "data", source="synthetic:2000", mistral_api_key=KEY,
        mistral_server_url=emulator.url, mistral_rps=50, classify_rps=None,
    )  # fmt: skip
    with emulator:
        producer = await producer_for(settings)
        run = (await producer.submit(producer.spec(backend="mistral"))).run
        await on_the_replica(settings.redis_url)
        ha.stale_replica()  # from here on, the run's progress is on the primary alone
        with worker_process(settings, tmp_path / "worker.log"):
            started = await wait_until(
                producer.store, run.id, lambda r: r.training.status == "RUNNING"
            )
            await asyncio.to_thread(ha.kill_primary, stale_replica=True)
            back = await producer.store.get(run.id)
            done = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
        await producer.redis.aclose()
    assert started.artifacts.training_job_id and back.artifacts.training_job_id is None
    assert str(done.state) == "succeeded", done.error
    assert done.artifacts.training_job_id == started.artifacts.training_job_id
    assert len(emulator.jobs) == 1 and emulator.counts["starts"] == 1
    assert emulator.counts["uploads"] == 2
