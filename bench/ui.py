"""Benchmark: how fast ``/ui`` answers with many runs in Redis.

Starts an embedded redis-server and ``modfactory serve`` (real uvicorn), stores ``--runs``
runs (each with a finished run's metrics, so the pages have their numbers to draw),
signs in once, then asks each page ``--repeat`` times, one request at a time: the runs
page, its refreshing fragment, filtered lists, a run's page, models, schedule and review.
Prints p50 / p95.

    python bench/ui.py [--runs 1000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from modfactory.evaluation.metrics import evaluate_scores
from modfactory.store import queue
from modfactory.store.embedded_redis import EmbeddedRedis, free_port
from modfactory.store.run import RunSpec
from modfactory.store.runs import RunStore
from modfactory.values import RecipeParams

ADMIN = "bench-ui-webhook-token-0123456789abcdef01"


async def fill(url: str, runs: int) -> str:
    pool = await queue.open_pool(url, "modfactory")
    store = RunStore(pool, "modfactory")
    labels = ["toxicity", "insult", "threat"]
    truth = [["toxicity"], ["insult"], ["safe"], ["threat", "insult"]] * 50
    scores = [{label: (i * 37 % 100) / 100 for label in labels} for i in range(len(truth))]
    metrics = evaluate_scores(truth, scores, labels, {label: 0.5 for label in labels})
    last = ""
    for i in range(runs):
        spec = RunSpec(source="synthetic:3000", backend="local", recipe=RecipeParams())
        run = await store.create(spec, exclusive=False)
        if i % 2 == 0:  # half of them finished, with numbers
            await pool.set(
                store._key(run.id),
                run.model_copy(update={"metrics": metrics, "state": "succeeded"}).model_dump_json(),
            )
            await pool.hset(store.states_key, run.id, "succeeded")
        last = run.id
    await pool.aclose()
    return last


def timed(client: httpx.Client, path: str, repeat: int) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        took.append(time.perf_counter() - started)
        if answer.status_code != 200:
            sys.exit(f"{path}: {answer.status_code} {answer.text[:300]}")
    q = statistics.quantiles(took, n=20)
    return statistics.median(took) * 1000, q[18] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis")
        url = redis.start()
        serve = None
        try:
            last = asyncio.run(fill(url, args.runs))
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("MODFACTORY_")},
                "MODFACTORY_DATA_DIR": str(Path(tmp) / "data"),
                "MODFACTORY_REDIS_URL": url,
                "MODFACTORY_WEBHOOK_TOKEN": ADMIN,
                "MODFACTORY_LOG_FORMAT": "json",
            }
            port = free_port()
            serve = subprocess.Popen(
                [sys.executable, "-m", "modfactory", "serve", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=30) as client:
                for _ in range(300):
                    try:
                        client.get("/healthz")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                form = client.get("/ui/login").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
                client.post("/ui/login", data={"token": ADMIN, "csrf": csrf, "next": "/ui/runs"})
                print(
                    f"{args.runs:,} runs in Redis; {args.repeat} requests per page, one at a time"
                )
                print("| page | p50 ms | p95 ms |\n|---|---:|---:|")
                for title, path in (
                    ("runs (newest 50)", "/ui/runs"),
                    ("runs, refreshing fragment", "/ui/runs?fragment=1"),
                    ("runs, state=succeeded", "/ui/runs?state=succeeded"),
                    ("runs, a model with no run (reads them all)", "/ui/runs?model=none"),
                    ("a run", f"/ui/runs/{last}"),
                    ("models", "/ui/models"),
                    ("schedule", "/ui/schedule"),
                    ("review (nothing waiting)", "/ui/review"),
                ):
                    p50, p95 = timed(client, path, args.repeat)
                    print(f"| {title} | {p50:.1f} | {p95:.1f} |", flush=True)
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(20)
            redis.stop()


if __name__ == "__main__":
    main()
