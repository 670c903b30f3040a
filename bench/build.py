"""Benchmark: the cookbook's dataset code vs ``modfactory dataset build``, same source.

Generates a civil_comments-sized parquet source once (1.8M / 97k / 97k rows, two shards a
split, the civil_comments schema), then runs each procedure in its own process with the
cookbook's numbers (1,000,000 / 50,000 / 50,000, seed 42) and prints wall time, peak RSS
and whether both wrote the same rows (targets: 15x faster, half the memory). The fast
engine's one-time guard is run first, untimed (its verdict is cached per datasets version).

    python bench/build.py [--dir /tmp/modfactory-bench] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLITS = {"train": 1_804_874, "validation": 97_320, "test": 97_320}
TAKE = {"train": 1_000_000, "validation": 50_000, "test": 50_000}


def make_source(directory: Path, scale: float) -> Path:
    import pyarrow.parquet as pq

    from modfactory.data.synthetic import generate_split

    source = directory / f"civil_comments-x{scale:g}"
    if (source / "done").exists():
        return source
    source.mkdir(parents=True, exist_ok=True)
    for offset, (split, rows) in enumerate(SPLITS.items()):
        rows = max(10, int(rows * scale))
        print(f"generating {split}: {rows:,} rows", flush=True)
        table = generate_split(rows, seed=7 + offset)
        half = rows // 2
        pq.write_table(table.slice(0, half), source / f"{split}-00000-of-00002.parquet")
        pq.write_table(table.slice(half), source / f"{split}-00001-of-00002.parquet")
    (source / "done").touch()
    return source


def measured(
    command: list[str], env: dict[str, str], stdout: Path | None = None
) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in MB, CPU seconds) of one child process (stdout to
    ``stdout`` or dropped)."""
    start = time.perf_counter()
    sink = stdout.open("wb") if stdout else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, stdout=sink)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}")
    return wall, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime


def cookbook_child(source: str, out: str, scale: float) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import importlib

    import datasets.config

    from cookbook import cookbook_build

    # The cookbook as its users run it: datasets' own pause after each stream (the test
    # oracle shortens it), so its wall time is what a user of the tutorial waits.
    importlib.reload(datasets.config)
    from modfactory.values import CIVIL_COMMENTS_LABELS

    files = {s: sorted(str(p) for p in Path(source).glob(f"{s}-*.parquet")) for s in SPLITS}
    take = {s: max(1, int(n * scale)) for s, n in TAKE.items()}
    rows = cookbook_build("parquet", files, take, CIVIL_COMMENTS_LABELS, seed=42)
    Path(out).write_bytes(pickle.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/modfactory-bench"))
    parser.add_argument("--scale", type=float, default=1.0, help="shrink everything (quick look)")
    parser.add_argument("--cookbook-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--source-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cookbook_child:
        cookbook_child(*args.cookbook_child, args.scale)
        return
    if args.source_child:
        make_source(args.dir, args.scale)
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # Generated in a child: a child's peak RSS (wait4) starts at its parent's when it is
    # forked, so a parent that held the 2 M generated rows would inflate both figures.
    subprocess.run(
        [sys.executable, __file__, "--source-child", "--dir", str(args.dir),
         "--scale", str(args.scale)],
        check=True,
    )  # fmt: skip
    source = make_source(args.dir, args.scale)  # made: only its path
    work = args.dir / f"run-x{args.scale:g}"
    work.mkdir(parents=True, exist_ok=True)
    take = {s: max(1, int(n * args.scale)) for s, n in TAKE.items()}

    # The fast engine's guard (datasets itself shuffling a few small index sets) runs once
    # per datasets version and data dir, then its verdict is cached: warmed, not timed.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from modfactory.data.shuffle_guard import mismatch; "
            "print('shuffle guard:', mismatch(Path(sys.argv[1])) or 'the fast engine is trusted')",
            str(work / "data" / "cache"),
        ],
        env=env,
        check=True,
    )
    print("running the cookbook procedure…", flush=True)
    cookbook_out = work / "cookbook.pickle"
    cookbook_wall, cookbook_rss, cookbook_cpu = measured(
        [
            sys.executable,
            __file__,
            "--scale",
            str(args.scale),
            "--cookbook-child",
            str(source),
            str(cookbook_out),
        ],
        env,
    )
    print("running modfactory dataset build…", flush=True)
    stage_out = work / "modfactory"
    stage_wall, stage_rss, stage_cpu = measured(
        [
            sys.executable,
            "-m",
            "modfactory",
            "dataset",
            "build",
            "--source",
            str(source),
            "--out",
            str(stage_out),
            "--data-dir",
            str(work / "data"),
            "--json",
            "--n-train",
            str(take["train"]),
            "--n-validation",
            str(take["validation"]),
            "--n-test",
            str(take["test"]),
        ],
        {**env, "COLUMNS": "120"},
        stdout=work / "summary.json",
    )
    summary = json.loads((work / "summary.json").read_text())

    expected = pickle.loads(cookbook_out.read_bytes())
    equal = {}
    for split in SPLITS:
        lines = (stage_out / f"{split}.jsonl").read_text().splitlines()
        got = Counter((r["text"], tuple(r["labels"]["moderation"])) for r in map(json.loads, lines))
        equal[split] = got == Counter(expected[split])

    rows = {s: len(expected[s]) for s in SPLITS}
    print()
    print(f"source: {sum(int(n * args.scale) for n in SPLITS.values()):,} rows in {source}")
    print(f"{'procedure':<28}{'wall (s)':>10}{'CPU (s)':>10}{'peak RSS (MB)':>16}")
    print(
        f"{'cookbook (datasets+pandas)':<28}{cookbook_wall:>10.1f}{cookbook_cpu:>10.1f}"
        f"{cookbook_rss:>16,}"
    )
    print(f"{'modfactory dataset build':<28}{stage_wall:>10.1f}{stage_cpu:>10.1f}{stage_rss:>16,}")
    speed_up, rss_ratio = cookbook_wall / stage_wall, stage_rss / cookbook_rss
    print(f"speed-up: {speed_up:.2f}x   peak RSS ratio: {rss_ratio:.2f}")
    print(
        f"engine: {summary['engine']}"
        + (f" ({summary['engine_note']})" if summary.get("engine_note") else "")
        + "; targets (>= 15x faster, <= 0.5 of the RSS): "
        + ("met" if speed_up >= 15 and rss_ratio <= 0.5 else "NOT met")
    )
    print(f"rows written: {rows}")
    print(f"identical rows per split: {equal}")
    sys.exit(0 if all(equal.values()) else 1)


if __name__ == "__main__":
    main()
