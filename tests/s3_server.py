"""A real S3 API for the tests: moto's server (``moto_server``, an S3-compatible HTTP server)
in its own process on a free loopback port, reached through a TCP proxy that a test can take
away and bring back (``S3Server.outage``), or slow down so that an upload can be cut half-way.

Moto keeps its objects in memory, so a restart of moto itself would be a new, empty store;
a real S3 (or MinIO) keeps them. What a client sees of a restarted endpoint — connections
refused, those in flight dropped, then the same objects again — is what stopping and
starting the proxy does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from modfactory.store.embedded_redis import free_port

HERE = Path(__file__).resolve().parent
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "modfactory-test",
    "AWS_SECRET_ACCESS_KEY": "modfactory-test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen within 30 s")


class S3Server:
    """moto's S3 server and the proxy in front of it; ``endpoint`` is the proxy's URL."""

    def __init__(self, log_dir: Path, *, auth: bool = False) -> None:
        self.log_dir = log_dir
        self.auth = auth  # requests signed with unknown credentials are refused
        self.moto_port = free_port()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.moto: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.rate: int | None = None  # bytes per second the proxy forwards (None: no limit)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "moto.log").open("ab") as log:
            self.moto = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    **CREDENTIALS,
                    **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.auth else {}),
                },
            )
        _wait_for_port(self.moto_port, self.moto, "moto_server")
        self.start_proxy()

    def start_proxy(self, rate: int | None = None) -> None:
        self.rate = rate
        with (self.log_dir / "proxy.log").open("ab") as log:
            self.proxy = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "tcp_proxy.py"),
                    str(self.port),
                    str(self.moto_port),
                    *(["--rate", str(rate)] if rate else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_for_port(self.port, self.proxy, "the S3 proxy")

    def stop_proxy(self) -> None:
        """The endpoint goes away: connections refused, those in flight cut."""
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGKILL)
            self.proxy.wait(10)

    @contextmanager
    def outage(self) -> Iterator[None]:
        self.stop_proxy()
        try:
            yield
        finally:
            self.start_proxy()

    def stop(self) -> None:
        self.stop_proxy()
        if self.moto is not None and self.moto.poll() is None:
            self.moto.terminate()
            self.moto.wait(10)

    def client(self, direct: bool = True):
        """A boto3 S3 client (``direct``: to moto itself, past the proxy)."""
        import boto3

        port = self.moto_port if direct else self.port
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str) -> list[str]:
        """Every object in ``bucket``, asked of moto directly."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a process at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.moto_port}/moto-api/", timeout=2).is_success
        except httpx.TransportError:
            return False
