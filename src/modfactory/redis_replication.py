"""Writes that must outlive a failover: acknowledged only once replicas hold them.

Redis acknowledges a write as soon as the primary has it; a primary lost a moment later
takes the writes its replicas had not yet received with it, and the replica promoted in its
place never saw them. The writes whose loss would be felt — a run created, a correction
taken, a file uploaded, a training job created or started, a promotion, a trainer's lease —
are followed by ``replicated``: a small write on any connection and ``WAIT`` for it. The
replication stream is one ordered log, so a replica that acknowledged the later write holds
every write finished before it, whichever connection made them.

How many replicas is the client's (``redis_connections``: ``MODFACTORY_REDIS_MIN_REPLICAS``),
0 by default: nothing waits. A write not replicated within the client's patience raises
NotReplicated, a ConnectionError: it may or may not survive a failover, so it is not
acknowledged (``serve`` answers 503, a stage is attempted again, a trainer does not start).
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import ConnectionError

PROBE_KEY = "modfactory:replication-probe"  # the small write that WAIT waits for
WAIT_MS = 1000  # one WAIT; tried again until the client's patience is spent


class NotReplicated(ConnectionError):
    """Too few replicas acknowledged a write in time (the message says how many)."""


def wanted(redis: Any) -> int:
    """How many replicas ``redis``'s acknowledged writes wait for (0: none)."""
    return int(getattr(redis, "min_replicas", 0) or 0)


def _give_up(what: str, got: int, need: int, waited: float) -> NotReplicated:
    return NotReplicated(
        f"{what}: {got} of {need} replicas acknowledged it within {waited:.1f} s "
        "(MODFACTORY_REDIS_MIN_REPLICAS); it may be lost in a failover, so it is not "
        "acknowledged: try again"
    )


def _wait_ms(until: float) -> int:
    """One WAIT's time-out: at most WAIT_MS, at most what is left until ``until``."""
    return max(1, min(WAIT_MS, int((until - time.monotonic()) * 1000)))


def _until(redis: Any) -> float:
    return time.monotonic() + float(getattr(redis, "patience", 0) or 0)


async def replicated(redis: Any, what: str) -> None:
    """Return once ``wanted(redis)`` replicas hold every write made before this call."""
    need = wanted(redis)
    if not need:
        return
    started, until = time.monotonic(), _until(redis)
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(PROBE_KEY)
            pipe.execute_command("WAIT", need, _wait_ms(until))
            _, got = await pipe.execute()
        if got >= need:
            return
        if time.monotonic() >= until:
            raise _give_up(what, got, need, time.monotonic() - started)


def replicated_sync(redis: Any, what: str, until: float | None = None) -> None:
    """``replicated`` for a blocking client; ``until``: a ``time.monotonic()`` to give up at
    (default: the client's patience from now)."""
    need = wanted(redis)
    if not need:
        return
    started, until = time.monotonic(), _until(redis) if until is None else until
    while True:
        with redis.pipeline(transaction=False) as pipe:
            pipe.incr(PROBE_KEY)
            pipe.execute_command("WAIT", need, _wait_ms(until))
            _, got = pipe.execute()
        if got >= need:
            return
        if time.monotonic() >= until:
            raise _give_up(what, got, need, time.monotonic() - started)
