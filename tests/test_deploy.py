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
        help_ = subprocess.run(
            [sys.executable, "-m", "modfactory", *command[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert help_.returncode == 0, f"{name}: {command} is not a modfactory command"
        for variable in service.get("environment", {}):
            assert variable in SETTINGS, f"{name}: {variable} is not a setting"
        assert int(service["environment"].get("MODFACTORY_HEALTH_CHECK_INTERVAL", 30)) <= 60
    assert set(compose["volumes"]) >= {"redis-data", "modfactory-data"}
    webhook = services["webhook"]
    assert webhook["command"][:2] == ["modfactory", "serve"] and "0.0.0.0" in webhook["command"]
    port = webhook["command"][webhook["command"].index("--port") + 1]
    assert any(mapping.endswith(f":{port}") for mapping in webhook["ports"])
    assert f"127.0.0.1:{port}/healthz" in " ".join(webhook["healthcheck"]["test"])
    assert webhook["environment"]["MODFACTORY_REDIS_URL"].startswith("redis://redis:")


def test_the_image_starts_a_worker_and_env_example_lists_every_setting() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["modfactory", "worker"]' in dockerfile and "pip install" in dockerfile
    listed = set(re.findall(r"^# ?([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert listed == SETTINGS
