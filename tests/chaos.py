"""A chaos harness: Mistral-backend runs on worker processes that keep being SIGKILLed, a
Redis (append-only, fsync always) SIGKILLed and restarted, and a Mistral emulator that
carries requests out and then loses their answers. Used by ``test_chaos.py`` and
``bench/chaos.py``; it plays the process supervisor (Compose's ``restart: always``): a
worker that dies, killed or because Redis went away, is started again at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from helpers import producer_for, settings_env, settings_for
from mistral_emulator import MistralEmulator
from redis_process import RedisProcess

KEY = "sk-chaos-0123456789abcdef0123"


@dataclass
class ChaosReport:
    runs: int
    states: Counter[str]
    uploads_per_run: list[int]  # files uploaded for each run, by the names that carry its id
    jobs_per_run: list[int]  # fine-tuning jobs created for each run (by suffix)
    starts: int  # job starts over all runs
    worker_kills: int
    redis_restarts: int
    answers_lost: int
    requests: int
    wall: float
    key_leaks: list[str] = field(default_factory=list)  # files that contain the API key
    errors: dict[str, str | None] = field(default_factory=dict)  # run id -> error

    @property
    def succeeded(self) -> int:
        return self.states.get("succeeded", 0)


async def run_chaos(
    work: Path,
    *,
    runs: int = 6,
    workers: int = 2,
    kill_every: float = 4.0,
    kill_for: float | None = None,
    lose_rate: float = 0.2,
    redis_restarts: int = 1,
    rows: int = 2000,
    timeout: float = 600.0,
    say=print,
) -> ChaosReport:
    """Submit ``runs`` runs (one model name each), then kill a random worker every
    ``kill_every`` seconds (±50 %) — for the first ``kill_for`` seconds, or until all runs
    are over — and Redis ``redis_restarts`` times."""
    rng = random.Random(7)
    redis = RedisProcess(work / "redis", append_only=True)
    redis.start()
    emulator = MistralEmulator(api_key=KEY)
    emulator.faults.lose_rate = lose_rate
    emulator.__enter__()
    settings = settings_for(
        redis.url,
        work / "data",
        mistral_api_key=KEY,
        mistral_server_url=emulator.url,
        poll_interval=0.2,
        poll_max_interval=1.0,
        job_timeout=20,  # a killed worker's job runs again after 30 s
        reconcile_interval=2,
        mistral_rps=50,
        classify_rps=None,
        mistral_max_retries=10,
        log_format="json",
    )
    env = {**os.environ, **settings_env(settings)}
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes] | None] = [None] * workers
    started = 0

    def spawn(slot: int) -> None:
        nonlocal started
        started += 1
        with (logs / f"worker-{started}.log").open("wb") as out:
            procs[slot] = subprocess.Popen(
                [sys.executable, "-m", "modfactory", "worker"],
                env=env,
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    producer = await producer_for(settings)
    ids = []
    for i in range(runs):
        spec = producer.spec(source=f"synthetic:{rows}", backend="mistral", model_name=f"chaos-{i}")
        ids.append((await producer.submit(spec)).run.id)
    say(f"submitted {runs} runs; {workers} workers, a kill every ~{kill_every:g} s")

    begin = time.monotonic()
    kills = restarts = 0
    next_kill = begin + kill_every * rng.uniform(0.5, 1.5)
    redis_kills = [begin + (k + 1) * 12.0 for k in range(redis_restarts)]
    states: dict[str, str] = {}
    try:
        for slot in range(workers):
            spawn(slot)
        while time.monotonic() - begin < timeout:
            now = time.monotonic()
            for slot, proc in enumerate(procs):
                if proc is None or proc.poll() is not None:
                    spawn(slot)
            if now >= next_kill and (kill_for is None or now - begin < kill_for):
                victim = procs[rng.randrange(workers)]
                if victim is not None and victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(10)
                    kills += 1
                next_kill = now + kill_every * rng.uniform(0.5, 1.5)
            if redis_kills and now >= redis_kills[0]:
                redis_kills.pop(0)
                redis.kill()
                say(f"{now - begin:.0f} s: Redis SIGKILLed; restarting it")
                await asyncio.sleep(1.5)
                redis.start()
                restarts += 1
            try:
                states = {i: str((await producer.store.get(i)).state) for i in ids}
            except Exception:  # Redis away: look again
                await asyncio.sleep(0.3)
                continue
            over = sum(s in ("succeeded", "failed", "cancelled") for s in states.values())
            if over == runs and not redis_kills:
                break
            await asyncio.sleep(0.3)
        wall = time.monotonic() - begin
        errors = {}
        for run_id in ids:
            run = await producer.store.get(run_id)
            if str(run.state) != "succeeded":
                errors[run_id] = run.error or f"{run.state} at {run.current_stage}"
    finally:
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in procs:
            if proc is not None:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        await producer.redis.aclose()
        emulator.__exit__(None, None, None)
        redis.stop()

    run_of_file = {fid: f["filename"].rsplit("-", 1)[0] for fid, f in emulator.files.items()}
    jobs_of_run = Counter(
        run_of_file.get(job.body["training_files"][0]["file_id"]) for job in emulator.jobs.values()
    )
    jobs_per_run = [jobs_of_run[run_id] for run_id in ids]
    uploads = [
        sum(n for k, n in emulator.counts.items() if k.startswith(f"upload:{run_id}-"))
        for run_id in ids
    ]
    leaks = [
        str(path)
        for path in work.rglob("*")
        if path.is_file()
        and path.suffix not in (".png", ".joblib", ".parquet")
        and KEY.encode() in path.read_bytes()
    ]
    return ChaosReport(
        runs=runs,
        states=Counter(states.values()),
        uploads_per_run=uploads,
        jobs_per_run=jobs_per_run,
        starts=emulator.counts["starts"],
        worker_kills=kills,
        redis_restarts=restarts,
        answers_lost=emulator.counts["answers_lost"],
        requests=emulator.counts["requests"],
        wall=wall,
        key_leaks=leaks,
        errors=errors,
    )
