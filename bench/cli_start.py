"""Benchmark: how fast the CLI answers — ``modfactory --help``, and ``modfactory runs``
against a running Redis holding 3 runs (targets: 0.5 s and 0.8 s, best of ``--repeat``).

Starts a private redis-server, queues 3 runs (3 model names, no worker), then times each
command as a user's shell runs it (a new process each time) and prints best and median.

    python bench/cli_start.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from modfactory.store.embedded_redis import EmbeddedRedis

TARGETS = {"--help": 0.5, "runs": 0.8}


def modfactory() -> list[str]:
    found = shutil.which("modfactory", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "modfactory"]


def timed(command: list[str], env: dict[str, str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as url:
        env = {
            **os.environ,
            "MODFACTORY_REDIS_URL": url,
            "MODFACTORY_DATA_DIR": str(Path(tmp) / "data"),
            "COLUMNS": "80",
        }
        for name in ("a", "b", "c"):
            subprocess.run(
                [*modfactory(), "enqueue", "pipeline", "--source", "synthetic:1000"],
                env={**env, "MODFACTORY_MODEL_NAME": name},
                check=True,
                capture_output=True,
            )
        print(f"{'command':<18} {'best':>7} {'median':>7} {'target':>7}")
        for what, target in TARGETS.items():
            times = timed([*modfactory(), what], env, args.repeat)
            verdict = "ok" if min(times) <= target else "SLOW"
            print(
                f"modfactory {what:<7} {min(times):>6.2f}s {statistics.median(times):>6.2f}s "
                f"{target:>6.1f}s  {verdict}"
            )


if __name__ == "__main__":
    main()
