"""Benchmark: many runs following their training jobs, and the latency of other jobs meanwhile.

Puts ``--runs`` runs (default 200) in the training-poll state against the Mistral emulator
(tests/mistral_emulator.py, in its own process; its jobs stay RUNNING), on one in-process
worker with ``max_jobs=10``, then enqueues a short unrelated job every 100 ms for
``--seconds`` and prints the enqueue-to-start latency percentiles (target: p95 < 1 s),
with the poll rate the worker sustained meanwhile.

    python bench/polling.py [--runs 200] [--poll-interval 2] [--seconds 30] [--profile F]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arq import func

from modfactory.backends.mistral import MistralBackend
from modfactory.settings import Settings
from modfactory.store import queue
from modfactory.store.embedded_redis import EmbeddedRedis
from modfactory.store.run import RunSpec
from modfactory.store.runs import RunStore
from modfactory.values import RecipeParams
from modfactory.worker import build_worker, stop_worker, worker_options

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
latencies: list[float] = []


async def probe(ctx: dict, enqueued_at: float) -> None:
    """The unrelated short job: notes how long it waited."""
    latencies.append(time.time() - enqueued_at)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(args: argparse.Namespace, redis_url: str, emulator_url: str, data: Path) -> None:
    settings = Settings(
        redis_url=redis_url,
        data_dir=data,
        mistral_api_key=KEY,
        mistral_server_url=emulator_url,
        poll_interval=args.poll_interval,
        poll_max_interval=args.poll_interval,
        max_jobs=10,
        job_timeout=60,
        mistral_rps=args.rps,  # the rate measured at: one API key's (see --rps)
    )
    pool = await queue.open_pool(redis_url, settings.queue_name)
    store = RunStore(pool, settings.queue_name)

    sample = data / "train.jsonl"
    sample.write_text(
        "".join(
            f'{{"text": "comment {i} stupid", "labels": {{"moderation": ["toxicity"]}}}}\n'
            if i % 2
            else f'{{"text": "comment {i}", "labels": {{"moderation": ["safe"]}}}}\n'
            for i in range(100)
        )
    )
    backend = MistralBackend(settings)
    uploaded = await backend.upload_file(sample, tag="bench")
    await backend.close()

    spec = RunSpec(
        source="synthetic",
        backend="mistral",
        recipe=RecipeParams(),
        hyperparameters={"training_steps": 10, "learning_rate": 1e-4},
    )
    run_ids = []
    for _ in range(args.runs):
        run = await store.create(spec, exclusive=False)  # 200 runs of one model at once
        for stage in ("build", "upload"):
            await store.start_stage(run.id, stage)
            await store.finish_stage(
                run.id,
                stage,
                artifacts={"train_file_id": uploaded.id, "validation_file_id": uploaded.id},
            )
        await queue.enqueue_stage(pool, settings.queue_name, "train", run.id)
        run_ids.append(run.id)

    options = worker_options(settings)
    worker = build_worker(
        settings,
        handle_signals=False,
        functions=[*options["functions"], func(probe, name="probe", keep_result=0)],
    )
    task = asyncio.create_task(worker.async_run())

    start = time.monotonic()
    while True:
        runs = [await store.get(i) for i in run_ids]
        following = sum(r.training.status == "RUNNING" for r in runs)
        if following == len(run_ids):
            break
        if time.monotonic() - start > 300:
            sys.exit(f"only {following} of {len(run_ids)} runs reached the poll state")
        await asyncio.sleep(0.5)
    ramp = time.monotonic() - start
    seq_before = sum(r.training.poll_seq for r in runs)

    sent = 0
    t0 = time.monotonic()
    cpu0 = time.process_time()  # this process is the worker (and the probes' producer)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    while time.monotonic() - t0 < args.seconds:
        await pool.enqueue_job(
            "probe", time.time(), _job_id=f"probe:{sent}", _queue_name=settings.queue_name
        )
        sent += 1
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    runs = [await store.get(i) for i in run_ids]
    polls = sum(r.training.poll_seq for r in runs) - seq_before
    still = sum(r.training.status == "RUNNING" and r.state == "running" for r in runs)
    await stop_worker(worker)
    task.cancel()

    print()
    print(
        f"runs following a RUNNING training job: {still} of {len(run_ids)} "
        f"(all reached it {ramp:.1f} s after enqueue)"
    )
    print(
        f"worker: max_jobs=10, poll interval {args.poll_interval} s, "
        f"MODFACTORY_MISTRAL_RPS={args.rps:g}; "
        f"{polls / elapsed:.1f} looks/s sustained over {elapsed:.0f} s"
    )
    print(
        f"worker CPU: {cpu / elapsed * 100:.0f} % of a core, {cpu / max(polls, 1) * 1000:.2f} ms "
        f"per look (the probes' share included)"
    )
    if not latencies:
        sys.exit(f"unrelated short jobs: none of {sent} started")
    print(
        f"unrelated short jobs: {len(latencies)} of {sent} started; enqueue-to-start latency "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    print(f"target p95 < 1 s: {'met' if percentile(latencies, 0.95) < 1 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--rps",
        type=float,
        default=1000.0,
        help="MODFACTORY_MISTRAL_RPS for the run (the emulator has no limit; Mistral's "
        "default tier allows far less: one key follows about rps x poll interval jobs)",
    )
    parser.add_argument(
        "--profile", help="write a cProfile of the measured window to this file (slower)"
    )
    args = parser.parse_args()
    emulator = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "mistral_emulator.py"),
            "--key",
            KEY,
            "--validating",
            "0.05",
            "--queued",
            "0.05",
            "--step",
            "100000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = emulator.stdout.readline().strip()
        with (
            tempfile.TemporaryDirectory() as tmp,
            EmbeddedRedis(Path(tmp) / "redis", fsync="everysec") as redis_url,
        ):
            asyncio.run(bench(args, redis_url, url, Path(tmp)))
    finally:
        emulator.terminate()


if __name__ == "__main__":
    main()
