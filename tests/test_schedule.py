"""Scheduled retrains: cron expressions, source fingerprints, and real workers ticking."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import producer_for, settings_for, wait_until, worker_process
from modfactory.cli import app
from modfactory.crontab import CronError, parse_cron
from modfactory.data import synthetic
from modfactory.data.sources import fingerprint, parse_source
from modfactory.triggers.schedule import Decision, ScheduleLog


def test_cron_fields_become_arq_sets_and_ticks() -> None:
    daily = parse_cron("30 3 * * mon-fri")
    assert daily.arq_fields() == {
        "second": {0},
        "minute": {30},
        "hour": {3},
        "day": None,
        "month": None,
        "weekday": {0, 1, 2, 3, 4},  # arq counts Monday as 0
    }
    sunday = datetime(2026, 11, 29, 12, 0)
    assert daily.next_times(sunday, 2) == [
        datetime(2026, 11, 30, 3, 30),
        datetime(2026, 12, 1, 3, 30),
    ]
    assert parse_cron("0 0 * * 0").weekday == parse_cron("0 0 * * 7").weekday == {6}
    assert parse_cron("*/15 9-17/4 1,15 jan-mar *").arq_fields()["hour"] == {9, 13, 17}
    assert parse_cron("*/2 * * * * *").arq_fields()["second"] == set(range(0, 60, 2))
    assert parse_cron("@daily").arq_fields() == parse_cron("0 0 * * *").arq_fields()


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * *", "has 3 fields; expected 5"),
        ("61 * * * *", "minute field '61': 61 is outside 0-59"),
        ("0 25 * * *", "hour field '25': 25 is outside 0-23"),
        ("0 0 * * funday", "weekday field 'funday': 'funday' is not a number"),
        ("*/0 * * * *", "step '0' must be a number > 0"),
        ("0 0 10-5 * *", "range '10-5' runs backwards"),
        ("0 0 1 * mon", "restricts both the day of the month and the weekday"),
    ],
)
def test_a_bad_cron_expression_names_the_field(expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_cron(expression)


def test_a_bad_cron_setting_is_named_when_the_settings_load() -> None:
    result = CliRunner().invoke(app, ["schedule"], env={"MODFACTORY_RETRAIN_CRON": "99 * * * *"})
    assert result.exit_code == 2
    assert "setting MODFACTORY_RETRAIN_CRON: Value error, minute field '99'" in result.output


def test_a_directory_fingerprint_follows_content_not_mtimes(tmp_path: Path) -> None:
    source = parse_source(str(synthetic.write_source(tmp_path / "src", 300)))
    first = fingerprint(source, tmp_path / "cache")
    train = tmp_path / "src" / "train.jsonl"
    os.utime(train, (1, 1))  # touched, same content
    assert fingerprint(source, tmp_path / "cache") == first
    train.write_text(train.read_text().replace('"text": "', '"text": "edited ', 1))
    assert fingerprint(source, tmp_path / "cache") != first
    assert fingerprint(parse_source("synthetic:500"), tmp_path) == "synthetic:500"
    assert fingerprint(parse_source("hf:google/civil_comments"), tmp_path) is None  # offline


async def _decision(
    log: ScheduleLog, wanted: Callable[[Decision], bool], timeout: float = 90
) -> Decision:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = [d for d in await log.recent(200) if wanted(d)]
        if found:
            return found[-1]  # the oldest such decision
        await asyncio.sleep(0.2)
    recent = [(d.action, d.reason) for d in await log.recent(5)]
    pytest.fail(f"no such scheduled decision; latest: {recent}")


@pytest.mark.slow
async def test_two_workers_on_a_fast_cron_decide_once_per_tick(
    redis_db: str, tmp_path: Path
) -> None:
    source = synthetic.write_source(tmp_path / "source", 3000)
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        retrain_cron="*/2 * * * * *",
        source=str(source),
        job_timeout=120,  # two workers share two cores: no stage may time out here
    )
    producer = await producer_for(settings)
    log = ScheduleLog(producer.redis, settings.queue_name)
    with (
        worker_process(settings, tmp_path / "worker-1.log"),
        worker_process(settings, tmp_path / "worker-2.log"),
    ):
        first = await _decision(log, lambda d: d.action == "started")
        assert first.reason == "no champion yet"
        busy = await _decision(log, lambda d: "is unfinished" in d.reason)
        assert busy.action == "skipped" and first.run_id in busy.reason
        await wait_until(producer.store, first.run_id, lambda r: r.state.terminal)
        same = await _decision(log, lambda d: "unchanged since champion" in d.reason)
        assert same.action == "skipped" and first.run_id in same.reason

        train = source / "train.jsonl"
        rows = [json.loads(line) for line in train.read_text().splitlines()]
        train.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))  # new data
        second = await _decision(log, lambda d: d.action == "started" and d.run_id != first.run_id)
        assert second.reason == f"source or recipe changed since champion {first.run_id}"
        ended = await wait_until(producer.store, second.run_id, lambda r: r.state.terminal)
        # Promoted or kept as a candidate, the second run has seen this data: no third run.
        settled = await _decision(
            log, lambda d: "unchanged since" in d.reason and d.at > ended.finished_at
        )
        assert second.run_id in settled.reason

    decisions = await log.recent(200)
    ticks = [d.tick for d in decisions]
    assert len(ticks) == len(set(ticks)) and len(ticks) >= 4  # two workers, one decision each
    assert [d.run_id for d in decisions if d.action == "started"] == [
        second.run_id,
        first.run_id,
    ]
    runs = await producer.store.list()
    assert sorted(r.id for r in runs) == sorted([first.run_id, second.run_id])
    assert all(r.state == "succeeded" for r in runs)
    assert await log.counts() == {
        "started": 2,
        "skipped": len(decisions) - 2,
    }
