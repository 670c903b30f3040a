"""Benchmark: the chaos test at a larger scale.

``--runs`` Mistral-backend runs (one model name each) on ``--workers`` worker processes,
one of them SIGKILLed every ``--kill-every`` seconds (±50 %) and started again, a Redis
with an append-only file SIGKILLed and restarted ``--redis-restarts`` times, and the
Mistral emulator (tests/mistral_emulator.py) losing ``--lose-rate`` of its answers after
carrying the requests out. Prints runs succeeded, the remote objects created per run
(target: 1 job, 1 start, 2 uploads each), kills, lost answers and wall time.

    python bench/chaos.py [--runs 20] [--workers 3] [--kill-every 4] [--lose-rate 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from chaos import run_chaos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--lose-rate", type=float, default=0.3)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--rows", type=int, default=2000, help="synthetic rows per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(
            run_chaos(
                Path(tmp),
                runs=args.runs,
                workers=args.workers,
                kill_every=args.kill_every,
                lose_rate=args.lose_rate,
                redis_restarts=args.redis_restarts,
                rows=args.rows,
                timeout=max(600, 60 * args.runs),
            )
        )
    print()
    print(f"runs succeeded        {report.succeeded}/{report.runs}  {dict(report.states)}")
    print(f"jobs created per run  {dict(Counter(report.jobs_per_run))}  (want {{1: {args.runs}}})")
    print(f"job starts            {report.starts}  (want {args.runs})")
    print(
        f"uploads per run       {dict(Counter(report.uploads_per_run))}  (want {{2: {args.runs}}})"
    )
    print(f"workers SIGKILLed     {report.worker_kills}; Redis restarts {report.redis_restarts}")
    print(f"answers lost          {report.answers_lost} of {report.requests} requests")
    print(f"API key written       {len(report.key_leaks)} files")
    print(f"wall time             {report.wall:.1f} s")
    for run_id, error in report.errors.items():
        print(f"  {run_id}: {error}")
    ok = (
        report.succeeded == report.runs
        and set(report.jobs_per_run) == {1}
        and report.starts == report.runs
        and set(report.uploads_per_run) == {2}
        and not report.key_leaks
    )
    print("exactly once, every run done:", "yes" if ok else "NO")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
