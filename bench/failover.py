"""Benchmark: losing the Redis primary, measured.

The failover test's scenario (tests/failover.py), ``--repeat`` times: a primary, a replica
and three sentinels (``down-after-milliseconds`` 1000) on loopback; three local runs and
one Mistral run (emulator) on two workers, a ``serve`` answering moderation requests back
to back and taking corrections; the primary SIGKILLed while the runs train and again while
one evaluates. Prints, per failover: seconds until the sentinels name a new primary, until
a worker takes a job again (a run written by a job), until a training job is looked at
again; then the moderation requests that did not get a 200 (goal 0), corrections
acknowledged and missing from the next build (goal 0), and what each run created.

    python bench/failover.py [--repeat 3] [--min-replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from failover import run_failover  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-replicas", type=int, default=1, choices=(0, 1))
    args = parser.parse_args()
    failovers, taken, looked, failed = [], [], [], 0
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            report = asyncio.run(
                run_failover(Path(tmp), min_replicas=args.min_replicas, say=lambda _: None)
            )
        bad = sum(count for status, count in report.moderation.items() if status != 200)
        failed += bad
        failovers += report.failovers
        taken += report.job_taken
        looked += report.training_looked_at
        print(f"run {n + 1}: {report.wall:.0f} s, runs {sorted(set(report.states.values()))}")
        for k, (f, t, lk) in enumerate(
            zip(report.failovers, report.job_taken, report.training_looked_at, strict=True)
        ):
            print(
                f"  failover {k + 1} ({report.kills_at[k]}): new primary {f:.2f} s, "
                f"a job taken {t:.2f} s, a training job looked at {lk:.2f} s"
            )
        print(
            f"  moderation: {sum(report.moderation.values())} requests "
            f"({sum(report.moderation_in_outages.values())} during the outages), "
            f"{bad} not 200; corrections: {report.corrections_accepted} acknowledged, "
            f"{dict(report.corrections_refused)} refused, "
            f"{len(report.corrections_missing)} missing from the next build"
        )
        print(
            f"  Mistral run: {report.mistral}; local trainers ran {report.trainers_ran} "
            f"(leases taken {report.trainer_starts}), "
            f"finished {report.trainers_finished}"
        )
    print()
    for name, values in (
        ("new primary named", failovers),
        ("first job taken again", taken),
        ("first look at a training job", looked),
    ):
        print(
            f"{name:30s} median {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"({len(values)} failovers)"
        )
    print(f"{'failed moderation requests':30s} {failed}  (goal 0)")


if __name__ == "__main__":
    main()
