"""Benchmark: scoring an archive with a local champion, one worker then two, against the
same model scoring the same texts in one process.

Trains a local model (``modfactory run``, embedded redis-server), writes ``--rows``
synthetic comments (default 1,000,000) as one parquet file, then:

- the ceiling: the model's own batch predict over every text in this process, 10,000 at a
  time, without Redis, files or workers;
- ``modfactory score`` with one ``modfactory worker``, then with two: rows/s while the
  shards are scored (from the first shard's start to the last shard's end; the plan, which
  reads the source once and writes the shard inputs, is timed apart), and each worker's
  peak RSS (VmHWM).

Prints one table, the ratios (goals: one worker >= 0.8 of the ceiling; two >= 1.6 of one
where the machine has a core for each), and checks that every row's scores equal the
ceiling's.

    python bench/score.py [--rows 1000000] [--shard-rows 50000] [--workers 1,2]

(``--rows 5000000 --workers 1``: the one-worker memory claim, peak RSS under 1 GB.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from modfactory.artifacts import ArtifactStore
from modfactory.backends.local.models import SavedModels
from modfactory.backends.local.selection import scores as batch_predict
from modfactory.data.synthetic import generate_split
from modfactory.store.embedded_redis import EmbeddedRedis


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "modfactory", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"modfactory {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def write_archive(path: Path, rows: int) -> list[str]:
    writer, texts = None, []
    for seed, start in enumerate(range(0, rows, 100_000)):
        table = generate_split(min(100_000, rows - start), 900 + seed).select(["text"])
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        texts.extend(table.column("text").to_pylist())
    if writer is not None:
        writer.close()
    return texts


def ceiling(data_dir: Path, model_id: str, texts: list[str]) -> tuple[float, dict]:
    """Rows/s of the model's batch predict in this process, and its scores by label."""
    bundle = SavedModels(ArtifactStore(data_dir)).load(model_id)
    batch_predict(bundle, texts[:100])  # warm
    columns: dict[str, list[float]] = {label: [] for label in bundle["labels"]}
    start = time.perf_counter()
    for i in range(0, len(texts), 10_000):
        for row in batch_predict(bundle, texts[i : i + 10_000]):
            for label, value in row.items():
                columns[label].append(value)
    return len(texts) / (time.perf_counter() - start), columns


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def score_with(env: dict[str, str], workers: int, archive: Path, log_dir: Path) -> dict:
    """One scoring job of ``archive`` by ``workers`` worker processes."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "modfactory", "worker"],
            env=env,
            stdout=(log_dir / f"worker-{workers}-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(workers)
    ]
    try:
        time.sleep(3)  # both up before the shards are queued (the window counts the workers)
        score_id = cli(env, "score", str(archive), "--detach").strip()
        while True:
            job = json.loads(cli(env, "status", score_id, "--json"))
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1)
        rss = [peak_rss_mb(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    if job["state"] != "succeeded":
        sys.exit(f"scoring job {score_id} ended {job['state']}: {job['error']}")
    from datetime import datetime

    def at(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    shard_ends = [at(s["finished_at"]) for s in job["shards"]]
    took = max(shard_ends) - at(job["started_at"])
    planned = at(job["started_at"]) - at(job["created_at"])
    return {
        "id": score_id,
        "rows": job["progress"]["rows_total"],
        "rate": job["progress"]["rows_total"] / took,
        "plan": planned,
        "rss": rss,
        "parts": job["parts"],
    }


def check_equal(result: dict, expected: dict) -> bool:
    table = pa.concat_tables(pq.read_table(p) for p in result["parts"])
    order = np.argsort(table.column("id").to_numpy())
    return all(
        np.array_equal(table.column(f"{label}_score").to_numpy()[order], np.asarray(values))
        for label, values in expected.items()
        if f"{label}_score" in table.column_names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, in order")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        redis = EmbeddedRedis(Path(tmp) / "redis", fsync="everysec")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODFACTORY_")},
            "MODFACTORY_DATA_DIR": str(data_dir),
            "MODFACTORY_REDIS_URL": redis.start(),
            "MODFACTORY_SCORE_SHARD_ROWS": str(args.shard_rows),
            "MODFACTORY_LOG_FORMAT": "json",
        }
        try:
            print("training a local champion on synthetic:30000…", flush=True)
            run = json.loads(cli(env, "run", "--source", "synthetic:30000", "--worker", "--json"))
            print(f"writing {args.rows:,} synthetic comments…", flush=True)
            archive = Path(tmp) / "archive.parquet"
            texts = write_archive(archive, args.rows)
            print("the ceiling: batch predict in this process…", flush=True)
            top, expected = ceiling(data_dir, run["artifacts"]["model_id"], texts)
            del texts
            results = {}
            for workers in counts:
                print(f"modfactory score with {workers} worker(s)…", flush=True)
                results[workers] = score_with(env, workers, archive, Path(tmp))
        finally:
            redis.stop()
        print(f"\n{args.rows:,} rows, shards of {args.shard_rows:,}, {os.cpu_count()} cores")
        print(f"{'':28} {'rows/s':>10} {'of ceiling':>11} {'plan s':>7} {'peak RSS/worker MB':>20}")
        print(f"{'in-process batch predict':28} {top:>10,.0f} {1:>11.2f} {'':>7} {'':>20}")
        for n, r in results.items():
            rss = ", ".join(f"{m:.0f}" for m in r["rss"])
            label = f"{n} worker{'s' if n > 1 else ''}"
            ratio = r["rate"] / top
            print(f"{label:28} {r['rate']:>10,.0f} {ratio:>11.2f} {r['plan']:>7.1f} {rss:>20}")
        if 1 in results:
            print(f"\none worker / ceiling: {results[1]['rate'] / top:.2f} (goal >= 0.8)")
        if 1 in results and 2 in results:
            two_over_one = results[2]["rate"] / results[1]["rate"]
            print(f"two workers / one:    {two_over_one:.2f} (goal >= 1.6 with a core each)")
        same = all(check_equal(r, expected) for r in results.values())
        print(f"every row's scores equal the ceiling's: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
