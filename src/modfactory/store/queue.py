"""arq plumbing shared by the producer and the stages: names, ids, serializer, enqueue.

Job ids are deterministic (``<run>:<stage>``, ``<run>:poll:<n>``), so enqueuing the same
step twice (a retried stage, a restarting worker) queues it once. Results are not kept
(``keep_result=0``), which frees an id for reuse as soon as its job ends. Jobs are JSON,
never pickle: whoever can write to Redis must not be able to run code on the workers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from arq import cron
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.cron import CronJob
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import RedisError

from modfactory.redis_connections import PATIENCE, async_client, set_patience

POLL_JOB = "poll_training"


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    return json.loads(data)


async def open_pool(
    url: str,
    queue_name: str,
    *,
    ca_file: Path | None = None,
    patience: float = PATIENCE,
    min_replicas: int = 0,
    first_answer_within: float | None = None,
) -> ArqRedis:
    """The one arq pool (JSON jobs on ``queue_name``) of the CLI, ``serve``, the workers and the
    tests, made by ``redis_connections`` (``patience``, ``min_replicas``: see there) and
    answering a PING — waited for ``first_answer_within`` seconds (default: ``patience``)."""
    first = patience if first_answer_within is None else first_answer_within
    pool: ArqRedis = async_client(  # type: ignore[assignment]
        url, ca_file, ArqRedis, patience=first, min_replicas=min_replicas
    )
    pool.job_serializer = serialize
    pool.job_deserializer = deserialize
    pool.default_queue_name = queue_name
    try:
        await pool.ping()
    except (TimeoutError, RedisError, OSError):
        await pool.aclose()
        raise
    if first != patience:
        set_patience(pool, patience)
    return pool


def stage_job_id(run_id: str, stage: str) -> str:
    return f"{run_id}:{stage}"


def poll_job_id(run_id: str, seq: int) -> str:
    return f"{run_id}:poll:{seq}"


async def job_exists(redis: ArqRedis, job_id: str) -> bool:
    """Is the job queued, deferred or in progress (arq's job and in-progress keys)?"""
    return bool(await redis.exists(job_key_prefix + job_id, in_progress_key_prefix + job_id))


async def clear_stale_result(redis: ArqRedis, job_id: str) -> None:
    """Drop a kept result of a job that is not queued: it would refuse the job's id."""
    await redis.delete(result_key_prefix + job_id)


async def enqueue_stage(redis: ArqRedis, queue: str, stage: str, run_id: str) -> bool:
    """Queue ``stage`` for ``run_id``; False when it is queued or running already."""
    job = await redis.enqueue_job(
        stage, run_id, _job_id=stage_job_id(run_id, stage), _queue_name=queue
    )
    return job is not None


def score_plan_job_id(score_id: str) -> str:
    return f"{score_id}:plan"


async def enqueue_score_plan(redis: ArqRedis, queue: str, score_id: str) -> bool:
    """Queue a scoring job's plan step (of a job planned already: what it waits for next)."""
    job_id = score_plan_job_id(score_id)
    return (
        await redis.enqueue_job("score_plan", score_id, _job_id=job_id, _queue_name=queue)
        is not None
    )


# arq's enqueue_job in one round trip instead of three (WATCH, EXISTS, MULTI/EXEC): the
# same keys, the same refusal of an id that is queued or has a kept result, atomically.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


async def enqueue_poll(redis: ArqRedis, queue: str, run_id: str, seq: int, delay: float) -> bool:
    """Queue look number ``seq`` at a training job, ``delay`` seconds (±10 %) from now
    (False when it is queued already). The one job queued many times a second, so it is
    queued by one script; what it writes is exactly what ``ArqRedis.enqueue_job`` writes."""
    job_id = poll_job_id(run_id, seq)
    now = timestamp_ms()
    score = now + (round(delay * random.uniform(0.9, 1.1) * 1000) if delay else 0)
    job = serialize_job(POLL_JOB, (run_id, seq), {}, None, now, serializer=serialize)
    queued = await redis.register_script(_ENQUEUE)(
        keys=[job_key_prefix + job_id, result_key_prefix + job_id, queue],
        args=[score - now + redis.expires_extra_ms, job, score, job_id],
    )
    return bool(queued)


def every(seconds: int) -> dict[str, set[int]]:
    """arq cron fields for "every ``seconds``" (a divisor of 60, or whole minutes of 60)."""
    if seconds < 60:
        return {"second": set(range(0, 60, seconds))}
    return {"second": {0}, "minute": set(range(0, 60, seconds // 60))}


def once_per_tick(
    job: Any, name: str, fields: dict[str, Any], timeout: int, keep_result: float
) -> CronJob:
    """An arq cron job that runs once per tick however many workers there are: a unique
    job id per tick, its result kept ``keep_result`` seconds so that no other worker runs
    the tick again, never retried, never at start-up."""
    return cron(
        job,
        name=name,
        **fields,
        unique=True,
        run_at_startup=False,
        timeout=timeout,
        keep_result=keep_result,
        max_tries=1,
    )
