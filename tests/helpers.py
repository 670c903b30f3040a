"""Helpers for the end-to-end tests: worker processes, producers, waiting for runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr

from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.store import queue
from modfactory.store.embedded_redis import free_port
from modfactory.store.run import Run
from modfactory.store.runs import RunStore


def settings_for(redis_url: str, data_dir: Path, **more: object) -> Settings:
    """Test settings: fast looks, a short job timeout, a killed worker's job taken up again
    within seconds (a 4 s lease, a reconcile round every 2 s), Mistral's retries at a tenth
    of their backoff."""
    values = {
        "poll_interval": 0.3,
        "mistral_retry_backoff": 0.05,
        "job_timeout": 15,
        "worker_lease": 4,
        "reconcile_interval": 2,
        **more,
    }
    return Settings(redis_url=redis_url, data_dir=data_dir, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a worker process the same settings (those set explicitly,
    plus what ``settings_for`` sets)."""
    env = {}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple):
            value = ",".join(value)
        variable = "MISTRAL_API_KEY" if name == "mistral_api_key" else f"MODFACTORY_{name.upper()}"
        env[variable] = str(value)
    return env


@contextmanager
def worker_process(
    settings: Settings, log: Path, *, machine: bool = False, **env: str
) -> Iterator[subprocess.Popen]:
    """``modfactory worker`` in a subprocess (``env``: more variables), logging to ``log``;
    terminated on exit. ``machine``: in a process group of its own, working in its data
    dir, as a worker alone on its machine (``os.killpg`` loses the machine's processes)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modfactory", "worker"],
            env={**os.environ, **settings_env(settings), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=machine,
            cwd=settings.data_dir if machine else None,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:  # a stage's thread outliving arq's cancel
                process.kill()
                process.wait(10)
        if machine:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its trainers, if any outlived it


@contextmanager
def serve_process(
    settings: Settings, log: Path, **env: str
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``modfactory serve`` (real uvicorn) on a free loopback port; yields it and its URL."""
    import httpx

    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modfactory", "serve", "--port", str(port)],
            env={**os.environ, **settings_env(settings), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"modfactory serve did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield process, url
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
    pool = await queue.open_pool(settings.redis_url or "", settings.queue_name)
    return Producer(pool, settings)
