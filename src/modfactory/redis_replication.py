"""Writes that must outlive a failover: acknowledged only once replicas hold them.

Redis acknowledges a write as soon as the primary has it; a primary lost a moment later
takes the writes its replicas had not yet received with it, and the replica promoted in its
place never saw them. The writes whose loss would be felt — a run created, a correction
taken, a file uploaded, a training job created or started, a promotion, a trainer's lease —
read the primary's replication history (``note_history``: its ``master_replid``) on the
connection and in the transaction that writes, and are then followed by ``replicated``: a
small write and ``WAIT`` for it, on any connection. The replication stream is one ordered
log, so a replica that acknowledged the later write holds every write finished before it,
whichever connection made them — provided both went to the same primary in the same
history. A failover between the two (or two primaries at once, when Sentinel promoted a
replica while the old primary was only slow) shows as another history: the write is then
not acknowledged, since the primary that took it may be the one whose writes are dropped.

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
HISTORY = "return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')"


class NotReplicated(ConnectionError):
    """Too few replicas acknowledged a write in time, or the primary changed before they
    did (the message says which)."""


def wanted(redis: Any) -> int:
    """How many replicas ``redis``'s acknowledged writes wait for (0: none)."""
    return int(getattr(redis, "min_replicas", 0) or 0)


def note_history(pipe: Any, redis: Any) -> bool:
    """Queue into the transaction ``pipe`` a read of the primary's replication history,
    when ``redis`` waits for replicas (else nothing is sent): True if it did. Queue it
    last; its answer, ``execute()``'s last, is what ``replicated`` is given."""
    if wanted(redis):
        pipe.eval(HISTORY, 0)
    return bool(wanted(redis))


async def read_history(pipe: Any, redis: Any) -> Any:
    """The primary's replication history, read at once on ``pipe`` (a pipeline that
    WATCHes: before it reads what it will act on); None when ``redis`` waits for none."""
    return await pipe.eval(HISTORY, 0) if wanted(redis) else None


def _text(history: Any) -> str:
    return history.decode() if isinstance(history, bytes) else str(history)


def _give_up(what: str, got: int, need: int, waited: float) -> NotReplicated:
    return NotReplicated(
        f"{what}: {got} of {need} replicas acknowledged it within {waited:.1f} s "
        "(MODFACTORY_REDIS_MIN_REPLICAS); it may be lost in a failover, so it is not "
        "acknowledged: try again"
    )


def _moved(what: str) -> NotReplicated:
    return NotReplicated(
        f"{what}: the Redis primary changed before its replicas acknowledged it; it may be "
        "lost in the failover, so it is not acknowledged: try again"
    )


def _wait_ms(until: float) -> int:
    """One WAIT's time-out: at most WAIT_MS, at most what is left until ``until``."""
    return max(1, min(WAIT_MS, int((until - time.monotonic()) * 1000)))


def _until(redis: Any) -> float:
    return time.monotonic() + float(getattr(redis, "patience", 0) or 0)


async def replicated(redis: Any, what: str, history: Any) -> None:
    """Return once ``wanted(redis)`` replicas hold every write made before this call, on
    the primary whose replication history is ``history`` (``note_history``)."""
    need = wanted(redis)
    if not need:
        return
    if history is None:
        raise ValueError(f"{what}: no replication history noted with the write")
    started, until = time.monotonic(), _until(redis)
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.eval(HISTORY, 0)
            pipe.incr(PROBE_KEY)
            pipe.execute_command("WAIT", need, _wait_ms(until))
            now, _, got = await pipe.execute()
        if _text(now) != _text(history):
            raise _moved(what)
        if got >= need:
            return
        if hasattr(redis.connection_pool, "get_master_address"):
            await redis.connection_pool.get_master_address()  # still the one Sentinel names?
        if time.monotonic() >= until:
            raise _give_up(what, got, need, time.monotonic() - started)


def replicated_sync(redis: Any, what: str, history: Any, until: float | None = None) -> None:
    """``replicated`` for a blocking client; ``until``: a ``time.monotonic()`` to give up at
    (default: the client's patience from now)."""
    need = wanted(redis)
    if not need:
        return
    if history is None:
        raise ValueError(f"{what}: no replication history noted with the write")
    started, until = time.monotonic(), _until(redis) if until is None else until
    while True:
        with redis.pipeline(transaction=False) as pipe:
            pipe.eval(HISTORY, 0)
            pipe.incr(PROBE_KEY)
            pipe.execute_command("WAIT", need, _wait_ms(until))
            now, _, got = pipe.execute()
        if _text(now) != _text(history):
            raise _moved(what)
        if got >= need:
            return
        if hasattr(redis.connection_pool, "get_master_address"):
            redis.connection_pool.get_master_address()  # still the one Sentinel names?
        if time.monotonic() >= until:
            raise _give_up(what, got, need, time.monotonic() - started)
