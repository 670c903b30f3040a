"""Acknowledged writes and replicas (``redis_replication``), and a trainer's lease while
Redis is away — against a real redis-server that has no replica (the failover tests,
with one, are in ``test_failover.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import settings_for
from modfactory.backends.local.jobs import LeaseLost, TrainerLease, TrainerProgress
from modfactory.producer import Producer
from modfactory.redis_connections import async_client, sync_client
from modfactory.redis_replication import NotReplicated, replicated
from modfactory.store.embedded_redis import free_port
from modfactory.store.runs import RunStore


async def test_a_write_no_replica_holds_is_refused_and_with_none_asked_for_nothing_waits(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_db, tmp_path)
    waiting = async_client(redis_db, patience=0.3, min_replicas=1)
    spec = Producer(waiting, settings).spec()
    with pytest.raises(NotReplicated, match=r"0 of 1 replicas acknowledged it within 0\.\d s"):
        await RunStore(waiting, settings.queue_name).create(spec)
    # written on the primary all the same: not acknowledged is "unknown", not "not done"
    assert len(await RunStore(waiting, settings.queue_name).list()) == 1
    await waiting.aclose()

    plain = async_client(redis_db, min_replicas=0)
    other = Producer(plain, settings).spec(model_name="another")
    run = await RunStore(plain, settings.queue_name).create(other)
    assert (await RunStore(plain, settings.queue_name).get(run.id)).id == run.id
    await plain.aclose()
    nowhere = async_client(f"redis://127.0.0.1:{free_port()}/0", patience=0)
    await replicated(nowhere, "nothing", None)  # none asked for: not even a command is sent


def test_a_trainer_away_from_redis_gives_up_its_lease_before_it_can_lapse() -> None:
    """Redis unreachable: the trainer's calls wait while the lease is safe, then raise
    LeaseLost — within three quarters of a lease of its last renewal, never after."""
    nowhere = sync_client(f"redis://127.0.0.1:{free_port()}/0", patience=0, answer_within=0.2)
    lease = TrainerLease(nowhere, "modfactory", "ftjob-away", "host:1:token", seconds=0.4)
    with pytest.raises(LeaseLost, match="Redis unreachable until the lease is unsafe"):
        lease.write(TrainerProgress())
    assert time.monotonic() > lease.safe_until  # it waited as long as it was safe to
    with pytest.raises(LeaseLost, match="not renewed in time"):
        lease.renew()
