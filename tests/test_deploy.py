"""docker-compose.yml, docker-compose.ha.yml, Dockerfile and .env.example, checked statically
(no Docker engine here; the sentinels' configuration by a real sentinel)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from modfactory.backends.local.jobs import outage_ridden_out
from modfactory.redis_connections import parse_redis_url
from modfactory.settings import Settings
from redis_process import RedisProcess, SentinelProcess

pytestmark = pytest.mark.slow  # every service's command is run for its --help

ROOT = Path(__file__).resolve().parent.parent
AWS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
SETTINGS = {
    "MISTRAL_API_KEY" if name == "mistral_api_key" else f"MODFACTORY_{name.upper()}"
    for name in Settings.model_fields
}


def test_every_modfactory_service_runs_a_real_command_with_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "webhook"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    for name, service in services.items():
        command = service["command"]
        if command[0] != "modfactory":
            continue
        assert "volumes" not in service, f"{name}: shares a volume; only Redis and a bucket"
        help_ = subprocess.run(
            [sys.executable, "-m", "modfactory", *command[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert help_.returncode == 0, f"{name}: {command} is not a modfactory command"
        for variable in service.get("environment", {}):
            standard = variable in AWS  # the S3 driver's own configuration
            assert variable in SETTINGS or standard, f"{name}: {variable} is not a setting"
        environment = service["environment"]
        assert environment["MODFACTORY_ARTIFACTS_URL"] == "s3://modfactory/artifacts"
        assert environment["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert service["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        assert int(service["environment"].get("MODFACTORY_HEALTH_CHECK_INTERVAL", 30)) <= 60
    assert set(compose["volumes"]) == {"redis-data", "artifacts"}
    assert services["minio"]["volumes"] == ["artifacts:/data"]
    assert "mc mb --ignore-existing store/modfactory" in services["bucket"]["command"][0]
    for service in ("minio", "bucket"):  # an empty password is no password
        password = services[service]["environment"]["MINIO_ROOT_PASSWORD"]
        assert password.startswith("${MINIO_ROOT_PASSWORD:?"), password
    webhook = services["webhook"]
    assert webhook["command"][:2] == ["modfactory", "serve"] and "0.0.0.0" in webhook["command"]
    port = webhook["command"][webhook["command"].index("--port") + 1]
    assert any(mapping.endswith(f":{port}") for mapping in webhook["ports"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(webhook["healthcheck"]["test"])
    assert webhook["environment"]["MODFACTORY_REDIS_URL"].startswith("redis://redis:")


def test_the_image_starts_a_worker_and_env_example_lists_every_setting() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["modfactory", "worker"]' in dockerfile
    assert "pip install --no-cache-dir '.[s3,mistral]'" in dockerfile  # S3, and Mistral
    listed = set(re.findall(r"^# ?([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert listed == SETTINGS


def test_the_ha_file_runs_a_primary_a_replica_three_sentinels_and_points_everyone_at_them(
    tmp_path: Path,
) -> None:
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ha = yaml.safe_load((ROOT / "docker-compose.ha.yml").read_text())
    services = ha["services"]
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    replica = services["redis-replica"]["command"]
    assert replica[:4] == ["redis-server", "--replicaof", "redis", "6379"]
    for server in ("redis", "redis-replica"):
        command = services[server]["command"]
        assert command[0] == "redis-server" and "--appendonly" in command
        assert command[command.index("--repl-diskless-sync-delay") + 1] == "0"
    script = services["sentinel-1"]["command"][0]
    lines = re.findall(r"'([^']*)'", script.split(">")[0])[1:]  # the sentinels' config
    down_after_s = next(
        int(line.split()[-1]) / 1000
        for line in lines
        if line.startswith("sentinel down-after-milliseconds ")
    )
    for name in ("worker", "webhook"):  # overrides of services the base file defines
        assert name in base
        environment = services[name]["environment"]
        target = parse_redis_url(environment["MODFACTORY_REDIS_URL"])
        assert target.sentinel and target.service == "modfactory"
        assert sorted(host for host, _ in target.hosts) == sentinels
        assert {port for _, port in target.hosts} == {26379}
        assert environment["MODFACTORY_REDIS_MIN_REPLICAS"] == "1"
        named = {k.removeprefix("MODFACTORY_").lower(): v for k, v in environment.items()}
        assert Settings(**named).redis_min_replicas == 1
        # a trainer works through a failover: down-after, an election, and then some
        assert outage_ridden_out(Settings(**named).worker_lease) >= 4 * down_after_s
        assert set(sentinels) <= set(services[name]["depends_on"])
    assert "redis-replica-data" in ha["volumes"]

    # the sentinels' configuration, as their command writes it, is one a real sentinel takes
    assert "sentinel monitor modfactory redis 6379 2" in lines
    assert script.rstrip().endswith("exec redis-server /tmp/sentinel.conf --sentinel")
    primary = RedisProcess(tmp_path / "primary")
    primary.start()
    sentinel = SentinelProcess(tmp_path / "sentinel", primary, "modfactory")
    sentinel.lines = [
        line.replace("6379", str(primary.port)).replace(" redis ", " 127.0.0.1 ")
        if "monitor" in line
        else f"port {sentinel.port}"
        if line.startswith("port ")
        else line
        for line in lines
    ]
    try:
        sentinel.start()
        answer = redis.Redis(port=sentinel.port).sentinel_master("modfactory")
        assert answer["port"] == primary.port and answer["quorum"] == 2
        assert answer["down-after-milliseconds"] == 5000
    finally:
        sentinel.stop()
        primary.stop()
