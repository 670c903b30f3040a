"""Backends are plugins: the registry's names, and a package installed beside modfactory
(the example under ``examples/``) that trains a champion with no file of modfactory changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modfactory import plugins
from modfactory.backends import BackendError, backend_class, get_backend
from modfactory.plugins import backend_names, check_backend_name
from modfactory.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "keyword-backend"


def test_the_built_in_backends_are_found_by_name(tmp_path: Path) -> None:
    assert backend_names()[:2] == ("local", "mistral")  # modfactory's own entry points
    backend = get_backend("local", Settings(data_dir=tmp_path))
    assert backend.name == "local" and backend_class("local") is type(backend)
    assert backend.job_files(Settings(data_dir=tmp_path), "ftjob-x") == ["local/jobs/ftjob-x"]
    assert backend.job_records(Settings(data_dir=tmp_path), "ftjob-x") == [
        "modfactory:local:job:ftjob-x",
        "modfactory:local:job:ftjob-x:progress",
        "modfactory:local:job:ftjob-x:trainer",
    ]


def test_an_unknown_backend_is_refused_naming_the_ones_installed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'nope'; installed: local, mistral"):
        check_backend_name("nope")
    with pytest.raises(ValueError, match=r"backend\n.*unknown backend 'nope'"):
        Settings(backend="nope", data_dir=tmp_path)
    with pytest.raises(BackendError, match="unknown backend 'nope'; installed: local, mistral"):
        get_backend("nope", Settings(data_dir=tmp_path))
    assert Settings(backend="auto", data_dir=tmp_path).default_backend == "local"


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch):
    """Entry points as installed packages would declare them (``name=value`` pairs)."""
    from importlib.metadata import EntryPoint

    def declare(**points: str) -> None:
        found = [EntryPoint(n, v, plugins.ENTRY_POINT_GROUP) for n, v in points.items()]
        monkeypatch.setattr(plugins, "_declared", lambda: found)
        plugins.backend_targets.cache_clear()

    yield declare
    plugins.backend_targets.cache_clear()


def test_a_plugin_is_found_by_its_entry_point_and_a_bad_one_is_named(declared) -> None:
    declared(
        local="somebody.else:Backend",  # a built-in's name: ignored
        **{"Bad Name": "x:Y"},  # not a name: ignored
        fine="modfactory.backends.local:LocalBackend",
        gone="modfactory_no_such_module:Backend",
        odd="modfactory.values:TrainingJob",
    )
    assert backend_names() == ("local", "mistral", "fine", "gone", "odd")
    assert backend_class("local").__module__ == "modfactory.backends.local.backend"
    assert backend_class("fine").name == "local"
    with pytest.raises(
        BackendError,
        match=r"backend 'gone' \(modfactory_no_such_module:Backend\) "
        r"cannot be loaded: ModuleNotFoundError",
    ):
        backend_class("gone")
    with pytest.raises(BackendError, match=r"'odd' .* is not a modfactory Backend class"):
        backend_class("odd")


@pytest.mark.slow  # pip builds the example, then a whole pipeline runs in a process
def test_an_installed_backend_plugin_trains_a_promoted_champion(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, EXAMPLE],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "MODFACTORY_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "120",
    }

    def modfactory(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "modfactory", *args],
            env=env,
            text=True,
            capture_output=True,
            timeout=300,
            cwd=tmp_path,
        )

    done = modfactory("run", "--backend", "keyword", "--source", "synthetic:3000", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["state"] == "succeeded" and run["spec"]["backend"] == "keyword"
    assert run["artifacts"]["model_id"].startswith("ft:keyword:kwjob-")
    assert run["metrics"]["macro"]["roc_auc"] > 0.9  # its words are the labels' words

    models = json.loads(modfactory("models", "--json").stdout)
    assert models[0]["champion"]["model_id"] == run["artifacts"]["model_id"]

    refused = modfactory("run", "--backend", "nope", "--source", "synthetic:3000")
    assert refused.returncode == 2 and "keyword" in refused.stderr  # among those installed
