"""Configuration: environment, .env, the key's usual name, and secrets kept secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modfactory.backends import BackendError, get_backend
from modfactory.settings import Settings


def test_environment_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "MODFACTORY_N_TRAIN=1234\nMODFACTORY_LABEL_COLUMNS=spam, abuse\n"
    )
    monkeypatch.setenv("MODFACTORY_SEED", "7")
    settings = Settings()
    assert settings.n_train == 1234 and settings.seed == 7
    assert settings.label_columns == ("spam", "abuse")
    monkeypatch.setenv("MODFACTORY_LABEL_COLUMNS", '["x", "y"]')
    assert Settings().label_columns == ("x", "y")
    assert settings.default_backend == "local"


def test_the_key_is_read_under_its_usual_name_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-very-secret")
    settings = Settings()
    assert settings.mistral_api_key.get_secret_value() == "sk-very-secret"
    assert settings.default_backend == "mistral"
    assert (
        "sk-very-secret" not in repr(settings)
        and "sk-very-secret" not in settings.model_dump_json()
    )
    backend = get_backend("mistral", settings)
    assert "sk-very-secret" not in repr(vars(backend))
    with pytest.raises(BackendError, match=r"learning_rate=2 is out of range") as raised:
        backend.hyperparameters({"learning_rate": 2})
    assert "sk-very-secret" not in str(raised.value)


def test_the_mistral_backend_without_a_key_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="needs MISTRAL_API_KEY"):
        get_backend("mistral", Settings())


def test_an_invalid_setting_is_named_by_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "MODFACTORY_N_TRAIN": "0", "MODFACTORY_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "modfactory", "runs"],
        env=env,
        text=True,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2
    assert "MODFACTORY_N_TRAIN" in done.stderr and "Traceback" not in done.stderr


def test_a_redis_password_never_reaches_a_message() -> None:
    from modfactory.redis_connections import redacted

    assert redacted("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("rediss://user:s3cret@host/1") == "rediss://user:***@host/1"
    assert redacted("redis://localhost:6379") == "redis://localhost:6379"


def test_the_reconciler_period_must_tile_a_minute_or_an_hour() -> None:
    from modfactory.worker import worker_options

    for good, fields in ((5, {"second": set(range(0, 60, 5))}), (120, {"minute": {0, 2}})):
        options = worker_options(Settings(reconcile_interval=good))
        reconcile = next(c for c in options["cron_jobs"] if c.name == "reconcile")
        assert reconcile.second == fields.get("second", {0})
        if "minute" in fields:
            assert reconcile.minute == set(range(0, 60, 2))
    for bad in (7, 90, 0):
        with pytest.raises(ValueError, match="reconcile_interval"):
            Settings(reconcile_interval=bad)


def test_no_secret_appears_in_a_settings_error_or_repr() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        Settings(wandb_api_key="wandb-short-secret-value")
    assert "wandb_api_key" in str(raised.value)
    assert "wandb-short-secret-value" not in str(raised.value)
    shown = repr(
        Settings(
            redis_url="redis://:redis-pass-42@redis:6379/0",
            mistral_api_key="sk-mistral-secret-42",
            webhook_secret="whsec-" + "x" * 40,
            webhook_token="tok-" + "y" * 40,
        )
    )
    for secret in ("redis-pass-42", "sk-mistral-secret-42", "x" * 40, "y" * 40):
        assert secret not in shown


def test_without_the_mistral_sdk_a_key_asks_for_the_extra_before_anything_runs(
    tmp_path: Path,
) -> None:
    """The SDK is an extra (``modfactory[mistral]``): without it, a run on the Mistral backend
    is refused at once with the command that installs it, and a local run with a key set
    leaves Mistral's moderation baseline out instead of failing its evaluation."""
    hide_sdk = "import sys; sys.modules['mistralai'] = None; from modfactory.cli import app; app()"
    env = {
        **os.environ,
        "MISTRAL_API_KEY": "sk-very-secret",
        "MODFACTORY_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-c", hide_sdk, "run", "--source", "synthetic:300"],
        env=env, text=True, capture_output=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'modfactory[mistral]'" in done.stderr and "Traceback" not in done.stderr
    assert "sk-very-secret" not in done.stderr + done.stdout
    assert not list((tmp_path / "data").glob("runs/*"))  # nothing was built

    assert Settings(mistral_api_key="k").moderation_baseline == "mistral"  # installed here
    with pytest.MonkeyPatch.context() as hidden:
        hidden.setitem(sys.modules, "mistralai", None)  # as if not installed
        assert Settings(mistral_api_key="k").moderation_baseline is None
        with pytest.raises(BackendError, match=r"pip install 'modfactory\[mistral\]'"):
            get_backend("mistral", Settings(mistral_api_key="k"))
