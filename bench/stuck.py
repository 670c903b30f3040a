"""Benchmark: how long a run whose arq job vanished waits before it runs again.

With the default reconciler period (MODFACTORY_RECONCILE_INTERVAL=60), on an embedded
Redis with one ``modfactory worker`` process that is never restarted: (1) a run is stored
but never queued (a producer lost mid-way); (2) a training run's next look is deleted
from Redis by hand. Prints, for each, the seconds until it was queued again (target:
under 2 minutes), then cancels what is left.

    python bench/stuck.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modfactory.backends.local.trainer import PAUSE_ENV
from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.store import queue
from modfactory.store.embedded_redis import EmbeddedRedis
from modfactory.store.health import worker_heartbeat
from modfactory.store.run import RunSpec
from modfactory.values import RecipeParams


async def queued_again(producer: Producer, run_id: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` until the run's events say the reconciler queued it."""
    while time.monotonic() - since < timeout:
        run = await producer.store.get(run_id)
        if any("again: no worker had it" in e.message for e in run.events):
            return time.monotonic() - since
        await asyncio.sleep(0.5)
    return float("inf")


async def bench(url: str, data: Path) -> None:
    settings = Settings(redis_url=url, data_dir=data)
    pool = await queue.open_pool(url, settings.queue_name)
    producer = Producer(pool, settings)
    env = {**os.environ, "MODFACTORY_REDIS_URL": url, "MODFACTORY_DATA_DIR": str(data)}
    env[PAUSE_ENV] = "1000"  # a trainer that goes on until the run is cancelled
    with (data / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "modfactory", "worker"], env=env, stdout=log, stderr=log
        )
    try:
        while await worker_heartbeat(pool, settings.queue_name) is None:
            await asyncio.sleep(0.2)
        print(f"worker up; reconciler every {settings.reconcile_interval} s", flush=True)

        orphan = await producer.store.create(
            RunSpec(
                source="synthetic:3000",
                backend="local",
                recipe=RecipeParams.from_settings(settings),
                model_name="orphan",
            )
        )
        created = time.monotonic()
        run = (await producer.submit(producer.spec(source="synthetic:30000"))).run
        deleted_at = None
        while deleted_at is None:
            for raw in await pool.zrange(settings.queue_name, 0, -1):
                job_id = raw.decode()
                if job_id.startswith(f"{run.id}:poll:"):
                    await pool.delete(f"arq:job:{job_id}")
                    await pool.zrem(settings.queue_name, job_id)
                    deleted_at = time.monotonic()
                    print(f"deleted {job_id} by hand", flush=True)
            await asyncio.sleep(0.1)
        never_queued = await queued_again(producer, orphan.id, created, 180)
        lost_look = await queued_again(producer, run.id, deleted_at, 180)
        print(f"run stored but never queued: queued after {never_queued:.1f} s")
        print(f"deleted look at a training job: queued again after {lost_look:.1f} s")
        worst = max(never_queued, lost_look)
        print(f"within 2 minutes: {'yes' if worst < 120 else 'NO'}")
        for run_id in (orphan.id, run.id):
            if not (await producer.store.get(run_id)).state.terminal:
                await producer.cancel(run_id)
    finally:
        worker.terminate()
        worker.wait(30)
        await pool.aclose()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as url:
        asyncio.run(bench(url, Path(tmp)))


if __name__ == "__main__":
    main()
