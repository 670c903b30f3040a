"""MODFACTORY_REDIS_URL's grammar and the one factory of Redis clients: every form parses to
what it says, every malformed one stops `worker`, `serve` and `run` with one line, and a
Sentinel URL reaches the primary the sentinels name (real `redis-server` processes)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modfactory.redis_connections import (
    RedisTarget,
    RedisUrlError,
    async_client,
    parse_redis_url,
    redacted,
    sync_client,
)
from modfactory.store import queue
from redis_process import RedisProcess, SentinelProcess

SECRET = "pw-9f3c1e"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://localhost", RedisTarget("redis", (("localhost", 6379),))),
        ("redis://h:6380/3", RedisTarget("redis", (("h", 6380),), 3)),
        (
            f"rediss://alice:{SECRET}@cache.example:6390/1",
            RedisTarget("rediss", (("cache.example", 6390),), 1, "alice", SECRET),
        ),
        (f"redis://:{SECRET}@[::1]:7000", RedisTarget("redis", (("::1", 7000),), 0, None, SECRET)),
        ("unix:///run/redis.sock?db=2", RedisTarget("unix", db=2, socket_path="/run/redis.sock")),
        (
            f"redis+sentinel://:{SECRET}@s1:26379,s2,s3:26380/mymaster/4",
            RedisTarget(
                "redis+sentinel",
                (("s1", 26379), ("s2", 26379), ("s3", 26380)),
                4,
                None,
                SECRET,
                service="mymaster",
            ),
        ),
    ],
)
def test_every_url_form_parses_to_what_it_says(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target


MALFORMED = {
    f"redis://:{SECRET}@host/0/1": "the path is one database number",
    f"http://:{SECRET}@host:6379": "is not a Redis URL",
    f"redis+sentinel://:{SECRET}@s1:26379,s2:26379": "names the service",
    f"redis+sentinel://:{SECRET}@s1:26379/": "names the service",
    f"redis://:{SECRET}@host:99999/0": "port",
    f"redis://:{SECRET}@host/zero": "database must be a number",
    f"redis://:{SECRET}@h1,h2/0": "several hosts need redis+sentinel",
    f"redis://:{SECRET}@host/0?ssl_cert_reqs=none": "query options are not read",
}


@pytest.mark.parametrize(("url", "why"), MALFORMED.items())
def test_a_malformed_url_is_refused_saying_why_without_the_password(url: str, why: str) -> None:
    with pytest.raises(RedisUrlError, match=re.escape(why)) as raised:
        parse_redis_url(url)
    assert SECRET not in str(raised.value)


def test_a_password_is_masked_in_every_form() -> None:
    assert redacted(f"redis://:{SECRET}@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted(f"redis+sentinel://u:{SECRET}@a:1,b:2/m") == "redis+sentinel://u:***@a:1,b:2/m"
    assert redacted("redis://localhost:6379") == "redis://localhost:6379"


@pytest.mark.parametrize("command", [["worker"], ["serve"], ["run", "--source", "synthetic"]])
@pytest.mark.parametrize("url", list(MALFORMED)[:3])
def test_a_malformed_url_stops_worker_serve_and_run_with_one_line(
    command: list[str], url: str, tmp_path: Path
) -> None:
    from modfactory.cli import app

    env = {
        "MODFACTORY_REDIS_URL": url,
        "MODFACTORY_DATA_DIR": str(tmp_path),
        "MODFACTORY_SERVE_TOKEN": "t" * 32,
    }
    done = CliRunner().invoke(app, command, env=env)
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and "MODFACTORY_REDIS_URL" in lines[0], done.output
    assert "Traceback" not in done.output and SECRET not in done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    from modfactory.cli import app

    env = {
        "MODFACTORY_REDIS_URL": "rediss://cache:6380/0",
        "MODFACTORY_REDIS_CA_FILE": str(tmp_path / "nope.pem"),
        "MODFACTORY_DATA_DIR": str(tmp_path),
    }
    done = CliRunner().invoke(app, ["worker"], env=env)
    assert done.exit_code == 2
    assert "MODFACTORY_REDIS_CA_FILE" in done.output and "is not a file" in done.output


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    primary = RedisProcess(tmp_path / "primary", password=SECRET)
    primary.start()
    sentinel = SentinelProcess(tmp_path / "sentinel", primary, "cache")
    sentinel.start()
    try:
        yield f"redis+sentinel://:{SECRET}@127.0.0.1:{sentinel.port}/cache/2"
    finally:
        sentinel.stop()
        primary.stop()


async def test_a_sentinel_url_reaches_the_primary_it_names(sentinel_url: str) -> None:
    pool = await queue.open_pool(sentinel_url, "modfactory", retries=0)
    try:
        assert pool.default_queue_name == "modfactory"
        assert await queue.enqueue_stage(pool, "modfactory", "build", "run-1")
        assert await pool.zcard("modfactory") == 1
    finally:
        await pool.aclose()
    blocking = sync_client(sentinel_url)
    assert blocking.zcard("modfactory") == 1  # the same primary, database 2
    assert blocking.connection_pool.connection_kwargs["db"] == 2
    client = async_client(sentinel_url)
    assert await client.zcard("modfactory") == 1
    await client.aclose()
