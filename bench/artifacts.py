"""Benchmark: the main job with its artifacts on local disk, then in S3 (moto's S3 server on
loopback, over HTTP), on the same data.

Each run is ``modfactory run --source synthetic --json`` in a fresh data dir (embedded
Redis, local backend, default grid): the only difference is MODFACTORY_ARTIFACTS_URL. Prints
each run's wall time and stage durations, the objects the S3 run left in the bucket, and
the ratio (target: S3 at most 1.3x the local-disk time).

    python bench/artifacts.py [--repeat 1] [--source synthetic]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from s3_server import CREDENTIALS, S3Server  # noqa: E402

TARGET = 1.3


def run_once(data_dir: Path, source: str, env: dict[str, str]) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "modfactory", "run", "--source", source, "--json"],
        env={**os.environ, **env, "MODFACTORY_DATA_DIR": str(data_dir)},
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the run failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def stage_seconds(run: dict) -> str:
    parts = []
    for name, stage in run["stages"].items():
        took = datetime.fromisoformat(stage["finished_at"]) - datetime.fromisoformat(
            stage["started_at"]
        )
        parts.append(f"{name} {took.total_seconds():.1f}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind, alternated")
    parser.add_argument("--source", default="synthetic")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"local disk": [], "S3 (moto)": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "s3")
        server.start()
        try:
            server.create_bucket("bench")
            s3 = {
                **CREDENTIALS,
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.moto_port}",  # no proxy
                "MODFACTORY_ARTIFACTS_URL": "s3://bench/modfactory",
            }
            for i in range(args.repeat):
                for kind, env in (("local disk", {}), ("S3 (moto)", s3)):
                    data_dir = Path(tmp) / f"{kind.split()[0]}-{i}" / "data"
                    data_dir.parent.mkdir()
                    print(f"{kind}: run {i + 1} of {args.repeat}…", flush=True)
                    wall, run = run_once(data_dir, args.source, env)
                    walls[kind].append(wall)
                    print(f"  {wall:.1f} s ({stage_seconds(run)})", flush=True)
            keys = server.keys("bench")
            sizes = server.client().list_objects_v2(Bucket="bench", MaxKeys=1000)["Contents"]
        finally:
            server.stop()
    local, remote = (statistics.median(w) for w in walls.values())
    print()
    print(f"source {args.source}, {args.repeat} run(s) of each, median wall time")
    print(f"{'artifacts on':<14}{'wall (s)':>10}")
    print(f"{'local disk':<14}{local:>10.1f}")
    print(f"{'S3 (moto)':<14}{remote:>10.1f}")
    total = sum(o["Size"] for o in sizes)
    print(f"objects in the bucket: {len(keys)} ({total / 1e6:.1f} MB)")
    ratio = remote / local
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"S3 / local: {ratio:.2f}x (target <= {TARGET}x: {verdict})")


if __name__ == "__main__":
    main()
