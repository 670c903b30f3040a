"""Benchmark: the human loop. How many corrections ``POST /v1/feedback`` accepts per second,
and how long from the N-th correction to the new champion being served.

Starts an embedded redis-server (fsync every second, as in production), a worker and
``modfactory serve`` (real uvicorn, their own processes); trains a champion on synthetic
data; then

1. sends ``--texts`` corrections to a ``serve`` with no retrain threshold (on a Redis
   database of its own), 1, 16 and 64 in flight (one keep-alive client in this process):
   corrections accepted per second and p50 / p99 latency;
2. with ``MODFACTORY_RETRAIN_AFTER_FEEDBACK=N``, sends N corrections (a made-up word, toxic)
   and times, from the N-th's answer: the run started by them, its build, train and
   evaluate, and the first answer of ``/v1/moderations`` from the new champion.

    python bench/feedback.py [--texts 3000] [--n 300] [--rows 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import httpx

from modfactory.store.embedded_redis import EmbeddedRedis, free_port

SERVE = "bench-serve-token-0123456789abcdef0123456"
REVIEW = "bench-review-token-0123456789abcdef01234"
NEUTRAL = [
    "the", "council", "meeting", "about", "new", "budget", "was", "long", "but", "vote",
]  # fmt: skip


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "modfactory", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"modfactory {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def process(stack: ExitStack, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    out = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "modfactory", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    stack.callback(lambda: (proc.terminate(), proc.wait(20)))
    return proc


def correction(i: int, rng: random.Random, case: str) -> dict:
    words = rng.choices(NEUTRAL, k=rng.randint(5, 15))
    toxic = i % 3 != 2
    if toxic:
        words.insert(rng.randint(0, len(words)), "zorblax")
    return {
        "input": f"{' '.join(words)} #{case}-{i}",
        "labels": {"toxicity": toxic, "insult": toxic},
        "request_id": f"{case}-{i}",
    }


async def send(url: str, bodies: list[dict], in_flight: int) -> tuple[float, list[float]]:
    """(seconds for all, each request's latency); every answer must be 202."""
    latencies: list[float] = []
    todo = iter(bodies)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    headers = {"Authorization": f"Bearer {REVIEW}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:

        async def worker() -> None:
            for body in todo:
                started = time.perf_counter()
                answer = await c.post("/v1/feedback", json=body)
                if answer.status_code != 202:
                    sys.exit(f"feedback answered {answer.status_code}: {answer.text}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - started, latencies


async def accepted_per_second(url: str, texts: int) -> None:
    rng = random.Random(0)
    print("\ncorrections accepted (POST /v1/feedback, one keep-alive client here):")
    print("| in flight | corrections/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|")
    for in_flight in (1, 16, 64):
        bodies = [correction(i, rng, f"rate{in_flight}") for i in range(texts)]
        seconds, latencies = await send(url, bodies, in_flight)
        q = statistics.quantiles(latencies, n=100)
        print(
            f"| {in_flight} | {texts / seconds:,.0f} | {q[49] * 1000:.1f} | {q[98] * 1000:.1f} |",
            flush=True,
        )


async def loop_closes(url: str, env: dict[str, str], n: int, champion: str) -> None:
    rng = random.Random(1)
    bodies = [correction(i, rng, "loop") for i in range(n)]
    await send(url, bodies[:-1], 16)
    await send(url, bodies[-1:], 1)
    sent = time.time()
    headers = {"Authorization": f"Bearer {SERVE}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        while True:
            answer = await client.post("/v1/moderations", json={"input": "you zorblax"})
            served_by = answer.headers.get("x-modfactory-champion-run")
            if served_by and served_by != champion:
                break
            if time.time() - sent > 600:
                sys.exit("no new champion within 10 minutes")
            await asyncio.sleep(0.05)
    served = time.time()
    run = json.loads(cli(env, "status", served_by, "--json"))
    created = datetime.fromisoformat(run["created_at"]).timestamp()
    stages = {
        name: datetime.fromisoformat(s["finished_at"]).timestamp()
        - datetime.fromisoformat(s["started_at"]).timestamp()
        for name, s in run["stages"].items()
        if s.get("started_at") and s.get("finished_at")
    }
    flagged = answer.json()["results"][0]["categories"]
    print(f"\nfrom the {n}-th correction's answer to the new champion served:")
    print(f"- run {served_by} created after {created - sent:.2f} s")
    print("- stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
    print(f"- first answer from the new champion after **{served - sent:.1f} s**")
    print(f"- it flags 'you zorblax': toxicity {flagged['toxicity']}, insult {flagged['insult']}")
    print(f"- promotion: {run['metrics']['promotion']['reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000, help="corrections per rate case")
    parser.add_argument("--n", type=int, default=300, help="MODFACTORY_RETRAIN_AFTER_FEEDBACK")
    parser.add_argument("--rows", type=int, default=3000, help="synthetic rows to train on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        redis = EmbeddedRedis(Path(tmp) / "redis", fsync="everysec")
        stack.callback(redis.stop)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODFACTORY_")},
            "MODFACTORY_DATA_DIR": str(Path(tmp) / "data"),
            "MODFACTORY_REDIS_URL": redis.start(),
            "MODFACTORY_SERVE_TOKEN": SERVE,
            "MODFACTORY_REVIEW_TOKEN": REVIEW,
            "MODFACTORY_FEEDBACK_RATE": "1000000",
            "MODFACTORY_RETRAIN_AFTER_FEEDBACK": str(args.n),
            "MODFACTORY_PROMOTION_MARGIN": "0.05",
            "MODFACTORY_SOURCE": f"synthetic:{args.rows}",
            "MODFACTORY_POLL_INTERVAL": "0.5",
            "MODFACTORY_LOG_FORMAT": "json",
        }
        print(f"training a champion on synthetic:{args.rows}…", flush=True)
        champion = json.loads(cli(env, "run", "--worker", "--json"))["id"]
        rate_env = {
            **env,
            "MODFACTORY_REDIS_URL": env["MODFACTORY_REDIS_URL"].rsplit("/", 1)[0] + "/1",
        }
        del rate_env["MODFACTORY_RETRAIN_AFTER_FEEDBACK"]
        with ExitStack() as rate_stack:
            url = serve(rate_stack, rate_env, Path(tmp) / "serve-rate.log")
            asyncio.run(accepted_per_second(url, args.texts))
        process(stack, env, Path(tmp) / "worker.log", "worker")
        url = serve(stack, env, Path(tmp) / "serve.log")
        asyncio.run(loop_closes(url, env, args.n, champion))


def serve(stack: ExitStack, env: dict[str, str], log: Path) -> str:
    port = free_port()
    process(stack, env, log, "serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return url
        except httpx.TransportError:
            time.sleep(0.1)
    sys.exit(f"modfactory serve did not start: {log.read_text()[-2000:]}")


if __name__ == "__main__":
    main()
