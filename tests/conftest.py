"""Shared fixtures: a real redis-server per test process, a real S3 API (moto's server) per
test process, isolated settings, generated data, the Mistral emulator."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mistral_emulator import MistralEmulator
from redis_process import RedisProcess
from s3_server import S3Server

# Compiled bytecode is kept, by these processes and the workers and servers they start (an
# environment with PYTHONDONTWRITEBYTECODE would otherwise compile every test module, and an
# editable install's every module, again in each process: seconds per run).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Nothing in the tests may reach the network: datasets and the hub stay offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
for _name in list(os.environ):
    if _name.startswith(("MODFACTORY_", "AWS_")) or _name == "MISTRAL_API_KEY":
        del os.environ[_name]


# The longest tests start first, so that none of them is what the suite waits for at the end
# (pytest-xdist hands tests out in collection order). Keep in step with the slowest list
# printed at the end of each run.
LONGEST_FIRST = (
    "test_failover.py::",
    "test_secrets.py::",
    "test_scale_out.py::",
    "test_scoring.py::",
    "test_chaos.py::",
    "test_fast_build.py::test_a_changed_shuffle",
    "test_pipeline.py::test_a_killed_worker",
    "test_mistral.py::test_chaos",
    "test_cli.py::test_an_interrupted_run",
    "test_local_backend.py::",
    "test_fast_build.py::test_an_hf_source",
    "test_cookbook_equivalence.py::",
)


@pytest.hookimpl(trylast=True)  # after pytest-xdist has named each test's group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first, then the other slow ones, then the fast tier (each in its
    collection order). And a loud stop if ``xdist_group`` is ignored (pytest 9.1 broke
    pytest-xdist 3.8's groups): a module's processes would then start once per test process."""
    grouped = [item for item in items if item.get_closest_marker("xdist_group")]
    if getattr(config.option, "loadgroup", False) and grouped and "@" not in grouped[0].nodeid:
        raise pytest.UsageError(
            f"pytest-xdist ignores xdist_group under this pytest ({pytest.__version__}): "
            "install the versions pyproject.toml's test extra pins"
        )

    def rank(item: pytest.Item) -> int:
        where = item.nodeid.rpartition("/")[2]
        longest = [i for i, prefix in enumerate(LONGEST_FIRST) if where.startswith(prefix)]
        if longest:
            return longest[0]
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, for this test process's session (each
    xdist process has its own)."""
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url.removesuffix("/0")
    server.stop()


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """Database 0 of this process's server, flushed before and after the test (tests of one
    process run one at a time, so they never share it)."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield f"{redis_url}/0"
    client.flushall()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server (a real S3 API over HTTP) behind a proxy a test may take away, for
    this test process's session."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, request) -> Iterator[str]:
    """A new bucket, and the standard AWS variables pointing this process at the server
    (``s3_server.env()`` gives them to a child process); its ``s3://`` URL."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = "mf-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    bucket += f"-{os.getpid()}"
    s3_server.create_bucket(bucket)
    if s3_server.proxy is None or s3_server.proxy.poll() is not None:
        s3_server.start_proxy()
    yield f"s3://{bucket}"


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


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[MistralEmulator]:
    """The Mistral emulator in its own thread, accepting the test module's ``KEY``; every
    request a test sent must have followed the spec."""
    with MistralEmulator(api_key=request.module.KEY) as emulator:
        yield emulator
    assert emulator.invalid_requests == [], "requests that do not follow the spec"
