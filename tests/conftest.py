"""Shared fixtures: a real redis-server per session, isolated settings, generated data."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from modfactory.embedded_redis import free_port, redis_server_binary

# Nothing in the tests may reach the network: datasets and the hub stay offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
for _name in list(os.environ):
    if _name.startswith("MODFACTORY_") or _name == "MISTRAL_API_KEY":
        del os.environ[_name]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for the whole session."""
    directory = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:  # pragma: no cover
        process.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """A flushed database of the session's server (one per test, numbered by use)."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield f"{redis_url}/0"
    client.flushall()


def write_split_files(directory: Path, splits: dict[str, list[dict]], fmt: str = "jsonl") -> Path:
    """Write civil_comments-schema rows as ``<split>.<fmt>`` files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), directory / f"{split}.parquet")
        else:
            with (directory / f"{split}.jsonl").open("w") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
    return directory
