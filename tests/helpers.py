"""Helpers for the end-to-end tests: worker processes, producers, waiting for runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from arq.connections import create_pool

from modfactory import jobs
from modfactory.producer import Producer
from modfactory.runs import Run, RunStore
from modfactory.settings import Settings


def settings_for(redis_url: str, data_dir: Path, **more: object) -> Settings:
    """Test settings: fast looks, a short job timeout (crash recovery in 25 s)."""
    return Settings(
        redis_url=redis_url, data_dir=data_dir, poll_interval=0.3, job_timeout=15, **more
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a worker process the same settings."""
    env = {
        "MODFACTORY_REDIS_URL": settings.redis_url,
        "MODFACTORY_DATA_DIR": str(settings.data_dir),
        "MODFACTORY_POLL_INTERVAL": str(settings.poll_interval),
        "MODFACTORY_POLL_MAX_INTERVAL": str(settings.poll_max_interval),
        "MODFACTORY_JOB_TIMEOUT": str(settings.job_timeout),
        "MODFACTORY_LOG_FORMAT": settings.log_format,
    }
    if settings.mistral_server_url:
        env["MODFACTORY_MISTRAL_SERVER_URL"] = settings.mistral_server_url
    if settings.mistral_api_key:
        env["MISTRAL_API_KEY"] = settings.mistral_api_key.get_secret_value()
    return env


@contextmanager
def worker_process(settings: Settings, log: Path) -> Iterator[subprocess.Popen]:
    """``modfactory worker`` in a subprocess, logging to ``log``; terminated on exit."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modfactory", "worker"],
            env={**os.environ, **settings_env(settings)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


async def wait_until(
    store: RunStore, run_id: str, condition: Callable[[Run], bool], timeout: float = 180
) -> Run:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        run = await store.get(run_id)
        if condition(run):
            return run
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(
                f"run {run_id} stuck: {run.state} at {run.current_stage}: {run.events[-3:]}"
            )
        await asyncio.sleep(0.2)


async def producer_for(settings: Settings) -> Producer:
    pool = await create_pool(
        jobs.redis_settings(settings.redis_url),
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        default_queue_name=settings.queue_name,
    )
    return Producer(pool, settings)
