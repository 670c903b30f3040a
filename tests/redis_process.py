"""A real redis-server process for the tests: started, SIGKILLed, restarted, stopped."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis as sync_redis

from modfactory.store.embedded_redis import free_port, redis_server_binary


class RedisProcess:
    """redis-server on a free loopback port, kept when restarted; ``append_only``: with an
    append-only file fsynced on every write (else no persistence at all)."""

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

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
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
                "--dir",
                str(self.directory),
                *(("--requirepass", self.password) if self.password else ()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port, password=self.password)
        for _ in range(200):
            try:
                client.ping()
                return
            except sync_redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
