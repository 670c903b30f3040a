"""End to end, with real worker processes: the reconciler revives runs without a worker
restart, gives up on a stage after its attempts, and the shared rate limit holds for two
workers evaluating three runs at once."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from helpers import producer_for, settings_for, wait_until, worker_process
from mistral_emulator import MistralEmulator
from modfactory.backends.local.trainer import PAUSE_ENV
from modfactory.backends.mistral import shared_limiter
from modfactory.backends.ratelimit import SPACING
from modfactory.store.health import worker_heartbeat
from modfactory.store.run import RunSpec, RunState
from modfactory.values import RecipeParams
from test_ratelimit import all_apart

pytestmark = pytest.mark.slow
KEY = "sk-recovery-0123456789abcdef"


async def wait_for_heartbeat(redis: Redis, queue: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await worker_heartbeat(redis, queue) is None:
        assert time.monotonic() < deadline, "the worker did not start"
        await asyncio.sleep(0.2)


async def test_a_run_never_queued_and_a_deleted_job_run_again_without_a_worker_restart(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        reconcile_interval=2,
        poll_interval=3,
        health_check_interval=5,
        local_grid="off",
    )
    producer = await producer_for(settings)
    redis = producer.redis
    slow = {PAUSE_ENV: "1"}  # training lasts long enough to lose a look
    with worker_process(settings, tmp_path / "worker.log", **slow):
        await wait_for_heartbeat(redis, settings.queue_name)
        # Created after the worker started, and never queued (a producer lost mid-way).
        orphan = await producer.store.create(
            RunSpec(
                source="synthetic:3000",
                backend="local",
                recipe=RecipeParams.from_settings(settings),
                model_name="orphan",
            )
        )
        assert not await redis.exists(f"arq:job:{orphan.id}:build")
        # A run whose next look at its training job is deleted from Redis by hand.
        run = (await producer.submit(producer.spec(source="synthetic:3000"))).run
        await wait_until(producer.store, run.id, lambda r: r.training.status == "RUNNING")
        deleted = None
        deadline = time.monotonic() + 60
        while deleted is None and time.monotonic() < deadline:
            for raw in await redis.zrange(settings.queue_name, 0, -1):
                job_id = raw.decode()
                running = f"arq:in-progress:{job_id}"
                if job_id.startswith(f"{run.id}:poll:") and not await redis.exists(running):
                    await redis.delete(f"arq:job:{job_id}")
                    await redis.zrem(settings.queue_name, job_id)
                    # a look the worker took meanwhile queues its successor: try that one
                    deleted = None if await redis.exists(running) else job_id
            await asyncio.sleep(0.05)
        assert deleted is not None
        gone_at = time.monotonic()
        revived = await wait_until(
            producer.store,
            run.id,
            lambda r: any(
                "at the training job again: no worker had it" in e.message for e in r.events
            ),
            timeout=120,
        )
        assert time.monotonic() - gone_at < 120
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
        orphaned = await wait_until(producer.store, orphan.id, lambda r: r.state.terminal)
    assert revived.state == RunState.RUNNING
    assert final.state == RunState.SUCCEEDED, final.error
    assert orphaned.state == RunState.SUCCEEDED, orphaned.error
    assert any(e.message == "queued build again: no worker had it" for e in orphaned.events)


async def test_a_stage_that_keeps_failing_ends_the_run_after_its_attempts(
    emulator: MistralEmulator, redis_db: str, tmp_path: Path
) -> None:
    emulator.faults.rate = 1.0  # every request refused: 429 or 503
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        mistral_api_key=KEY,
        mistral_server_url=emulator.url,
        mistral_max_retries=0,
        reconcile_interval=1,
    )
    producer = await producer_for(settings)
    run = (await producer.submit(producer.spec(source="synthetic:1000", backend="mistral"))).run
    with worker_process(settings, tmp_path / "worker.log"):
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal, timeout=120)
    assert final.state == RunState.FAILED
    assert final.stages["upload"].attempts == 5
    assert final.error.startswith(
        "upload: gave up after 5 attempts that ran and made no progress (5 in all; "
        "MODFACTORY_STAGE_MAX_ATTEMPTS); the last: Mistral did not "
    )
    assert emulator.counts["uploads"] == 0


async def test_two_workers_evaluating_three_runs_stay_under_one_shared_rate_limit(
    emulator: MistralEmulator, redis_db: str, tmp_path: Path
) -> None:
    emulator.faults.rate_limit = 10  # requests in any one second, over all endpoints; then 429
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        mistral_api_key=KEY,
        mistral_server_url=emulator.url,
        mistral_rps=10,
        classify_batch_size=16,
        poll_interval=0.3,
        poll_max_interval=1,
    )
    producer = await producer_for(settings)
    runs = [
        (
            await producer.submit(
                producer.spec(source="synthetic:2000", backend="mistral", model_name=f"m{i}")
            )
        ).run
        for i in range(3)
    ]
    with (
        worker_process(settings, tmp_path / "worker-1.log"),
        worker_process(settings, tmp_path / "worker-2.log"),
    ):
        finals = [
            await wait_until(producer.store, r.id, lambda r: r.state.terminal, timeout=300)
            for r in runs
        ]
    assert [f.state for f in finals] == [RunState.SUCCEEDED] * 3, [f.error for f in finals]
    # What was sent, from the shared limiter's own record (Redis's clock): every request of
    # both workers in a slot of its own, slots 1/rate apart (x SPACING) — exactly, however
    # busy this machine; an emulator on it cannot time arrivals that precisely.
    limiter = shared_limiter(settings, producer.redis)
    granted = await limiter.granted("api")
    # Every request sent had a slot of its own (429s and retries too); a caller woken too
    # late for its slot takes a new one rather than send late, so there may be more slots.
    assert len(granted) >= emulator.counts["requests"]
    assert all_apart([g.slot for g in granted], SPACING / 10)
    turns = [g.limiter for g in sorted(granted, key=lambda g: g.slot)]
    assert len(set(turns)) == 2  # both workers sent…
    # …taking turns: one's requests fell between the other's (A…B…A). How often they
    # alternate depends on which worker took which evaluation; once is the proof.
    assert sum(a != b for a, b in itertools.pairwise(turns)) >= 2
    for held_from, held_until in await limiter.held():  # any 429 that came back anyway…
        late = [g.slot for g in granted if g.reserved >= held_from]
        assert all(slot >= held_until for slot in late)  # …paused every worker
    batches = sum(
        -(-f.dataset.splits[s].rows // 16) for f in finals for s in ("validation", "test")
    )
    assert emulator.counts["classify_requests"] == batches  # each batch paid for once
