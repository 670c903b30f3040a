"""docker-compose.yml, Dockerfile and .env.example, checked statically (no Docker engine here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modfactory.settings import Settings

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
