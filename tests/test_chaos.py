"""Every promise at once, under faults: Mistral-backend runs on two worker processes that are
SIGKILLed every 2 s (±50 %) for 20 s — attempts cut short before they could make
progress, which must not count against a stage — Redis (AOF) SIGKILLed and restarted, a
fifth of the API's answers lost after the work was done. Every run succeeds, with exactly
one job created and started and two files uploaded per run, and the API key written
nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import run_chaos

pytestmark = pytest.mark.slow


async def test_runs_survive_killed_workers_a_killed_redis_and_lost_answers(
    tmp_path: Path,
) -> None:
    report = await run_chaos(
        tmp_path, runs=6, workers=2, kill_every=2.0, kill_for=20, lose_rate=0.2, redis_restarts=1
    )
    assert report.worker_kills >= 6 and report.redis_restarts == 1
    assert report.answers_lost >= 0.1 * report.requests
    assert report.succeeded == 6, report.errors
    assert report.jobs_per_run == [1] * 6
    assert report.starts == 6
    assert report.uploads_per_run == [2] * 6
    assert report.key_leaks == []
