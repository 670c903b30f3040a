"""Benchmark: worker start-up and a /metrics scrape with 10 runs stored, and with 10,000.

Stores ``--runs`` finished runs (default 10,000; and 3 unfinished) in an embedded Redis as
the run store writes them, then times what grows with the keyspace if anything does: a
worker's start-up round (the reconciler over the unfinished runs) and a Prometheus scrape
— first with 10 finished runs, then with ``--runs``; then ``prune`` with the default
MODFACTORY_KEEP_RUNS. Prints each time (target: about the same for both sizes).

    python bench/growth.py [--runs 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from modfactory.producer import Producer  # noqa: E402
from modfactory.settings import Settings  # noqa: E402
from modfactory.stages.context import StageContext  # noqa: E402
from modfactory.stages.reconciler import reconcile_once  # noqa: E402
from modfactory.store import queue  # noqa: E402
from modfactory.store.embedded_redis import EmbeddedRedis  # noqa: E402
from modfactory.web.monitoring import prometheus_text  # noqa: E402
from test_prune import stored_runs  # noqa: E402


async def timed(what, repeat: int = 5) -> float:
    """Median milliseconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await what()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def measure(url: str, data: Path, runs: int) -> tuple[float, float]:
    settings = Settings(redis_url=url, data_dir=data, keep_runs=None)
    pool = await queue.open_pool(url, "modfactory")
    await pool.flushdb()
    producer = Producer(pool, settings)
    await stored_runs(producer, runs, unfinished=3)
    sc = StageContext(settings, producer.store, pool)
    await reconcile_once(sc)  # the first round also indexes once; then steady state

    async def start_up() -> None:
        await pool.delete(f"{settings.queue_name}:reconcile-lock")
        await reconcile_once(sc)

    startup = await timed(start_up)
    scrape = await timed(lambda: prometheus_text(pool, settings.queue_name))
    await pool.aclose()
    return startup, scrape


async def bench(url: str, data: Path, runs: int) -> None:
    print(f"{'finished runs stored':>22}{'start-up round (ms)':>22}{'/metrics (ms)':>16}")
    for n in (10, runs):
        startup, scrape = await measure(url, data, n)
        print(f"{n:>22,}{startup:>22.1f}{scrape:>16.1f}")
    settings = Settings(redis_url=url, data_dir=data)
    pool = await queue.open_pool(url, "modfactory")
    start = time.perf_counter()
    pruned = await Producer(pool, settings).prune()
    took = time.perf_counter() - start
    left = await pool.zcard(f"{settings.queue_name}:runs")
    print(
        f"prune (MODFACTORY_KEEP_RUNS={settings.keep_runs}): {len(pruned):,} deleted in "
        f"{took:.1f} s, {left:,} runs left"
    )
    await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as url:
        asyncio.run(bench(url, Path(tmp), args.runs))


if __name__ == "__main__":
    main()
