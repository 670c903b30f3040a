"""The README documents every setting, and CI runs the README's own commands."""

from __future__ import annotations

from pathlib import Path

from modfactory.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        variable = "MISTRAL_API_KEY" if name == "mistral_api_key" else f"MODFACTORY_{name.upper()}"
        assert f"`{variable}`" in README, variable


def test_ci_runs_the_quick_start_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci  # a half that fails stops CI, as `&&` would
    for command in (
        "pip install . && modfactory run --source synthetic",
        "pip install '.[test]' && python -m pytest",
    ):
        assert command in README, command
        # CI runs each command word for word, or its halves in order (to time them apart).
        halves = command.split(" && ")
        at = [ci.find(half) for half in halves]
        assert command in ci or (-1 not in at and at == sorted(at)), command
