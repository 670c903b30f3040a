"""The audit trail on a real Redis and an artifact store: entries appended, read with
filters, compacted into one object per day (a compaction cut short is merged again, never
doubled), kept through FLUSHALL, days past retention deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from modfactory.artifacts import ArtifactStore, audit_key
from modfactory.store.audit import Actor, AuditAction, AuditEntry, AuditLog, parse_since

ALICE = Actor(name="alice@example.com", role="admin", client="10.0.0.7", request_id="req-1")


@pytest.fixture
async def audit(redis_db: str):
    client = Redis.from_url(redis_db)
    yield AuditLog(client, "t")
    await client.aclose()


async def test_entries_are_read_back_with_filters_newest_last(
    audit: AuditLog, tmp_path: Path
) -> None:
    store = ArtifactStore(tmp_path)
    await audit.record(ALICE, AuditAction.RUN_START, "run-1", "synthetic")
    await audit.record(Actor(name="trigger:cron"), AuditAction.RUN_START, "run-2")
    await audit.record(ALICE, AuditAction.MODEL_PROMOTE, "run-1", "moderation")
    everything = await audit.read(store)
    assert [(e.actor, e.action, e.target) for e in everything] == [
        ("alice@example.com", "run.start", "run-1"),
        ("trigger:cron", "run.start", "run-2"),
        ("alice@example.com", "model.promote", "run-1"),
    ]
    first = everything[0]
    assert (first.role, first.client, first.request_id) == ("admin", "10.0.0.7", "req-1")
    assert [e.target for e in await audit.read(store, actor="trigger:cron")] == ["run-2"]
    assert len(await audit.read(store, action="run")) == 2  # a prefix: every run.*
    assert [e.action for e in await audit.read(store, limit=1)] == ["model.promote"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert await audit.read(store, since=future) == []


async def test_the_trail_outlives_redis_once_compacted(
    audit: AuditLog, tmp_path: Path, redis_db: str
) -> None:
    store = ArtifactStore(tmp_path)
    for n in range(5):
        await audit.record(ALICE, AuditAction.RUN_CANCEL, f"run-{n}")
    assert await audit.compact(store, retention_days=30) == 5
    assert await audit.redis.xlen(audit.key) == 0  # trimmed once stored
    await audit.record(ALICE, AuditAction.USER_ADD, "bob")  # after the compaction
    before = await audit.read(store)
    assert len(before) == 6
    await audit.redis.xadd(audit.key, {"entry": before[0].model_dump_json()})  # cut short
    assert await audit.compact(store, retention_days=30) == 2
    await audit.redis.flushall()
    after = await audit.read(store)
    assert [e.id for e in after] == [e.id for e in before]  # each once, from the bucket


async def test_days_past_retention_are_deleted(audit: AuditLog, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    old = AuditEntry(actor="x", action="run.start", at=datetime.now(UTC) - timedelta(days=40))
    store.save_text(audit_key(old.day), old.model_dump_json() + "\n")
    await audit.record(ALICE, AuditAction.RUN_START, "run-new")
    assert len(await audit.read(store)) == 2
    await audit.compact(store, retention_days=30)
    assert [e.target for e in await audit.read(store)] == ["run-new"]
    assert store.list(audit_key()) == [audit_key(f"{datetime.now(UTC):%Y-%m-%d}")]


async def test_a_second_compaction_at_the_same_time_does_nothing(
    audit: AuditLog, tmp_path: Path
) -> None:
    await audit.record(ALICE, AuditAction.RUN_START, "run-1")
    await audit.redis.set(f"{audit.key}-lock", "another", ex=60)  # another worker's round
    assert await audit.compact(ArtifactStore(tmp_path), retention_days=30) == 0
    assert await audit.redis.xlen(audit.key) == 1


def test_since_takes_an_age_or_an_iso_moment() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_since("2026-12-01T10:00:00+01:00").hour == 10
    for bad in ("yesterday", "5x", "", "1e999d"):
        with pytest.raises(ValueError, match="neither an age"):
            parse_since(bad, now)
