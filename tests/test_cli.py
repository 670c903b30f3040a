"""The ``modfactory`` command as a user runs it: embedded Redis, no key, no network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from modfactory.backends.local.trainer import PAUSE_ENV
from modfactory.values import CIVIL_COMMENTS_LABELS

pytestmark = pytest.mark.slow  # the `modfactory` command in processes


def modfactory(
    *args: str, data_dir: Path, timeout: float = 300, columns: int = 200
) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODFACTORY_DATA_DIR": str(data_dir), "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "modfactory", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        cwd=data_dir.parent,
    )


def test_run_json_status_and_runs_agree_across_an_embedded_redis_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = modfactory("run", "--source", "synthetic:3000", "--json", data_dir=data)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert {"id", "state", "spec", "stages", "artifacts", "metrics"} <= set(run)
    assert run["state"] == "succeeded" and run["spec"]["backend"] == "local"
    for stage in ("build", "upload", "train", "evaluate"):
        entry = run["stages"][stage]
        assert entry["state"] == "succeeded" and entry["error"] is None
        assert datetime.fromisoformat(entry["started_at"]) <= datetime.fromisoformat(
            entry["finished_at"]
        )
    assert run["dataset"]["synthetic"] is True
    assert set(run["metrics"]["labels"]) == set(run["dataset"]["labels"])

    # The embedded Redis was stopped with the command; its append-only file kept the run.
    status = modfactory("status", run["id"], "--json", data_dir=data)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == run
    listed = modfactory("runs", "--json", data_dir=data)
    assert [r["id"] for r in json.loads(listed.stdout)] == [run["id"]]
    for columns in (80, 60):  # in a narrow terminal the other columns fold, never the id
        for command in ("runs", "models"):
            table = modfactory(command, data_dir=data, columns=columns).stdout
            assert run["id"] in table, table
            assert max(map(len, table.splitlines())) <= columns

    # The report: JSON for scripts, one self-contained HTML page for people.
    shown = modfactory("report", run["id"], "--json", data_dir=data)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    urls = run["artifact_urls"]  # the store is the data dir: its URLs are paths
    assert run["artifacts"]["report_json"] == f"runs/{run['id']}/report.json"
    assert urls["report_json"] == str((data / "runs" / run["id"] / "report.json").resolve())
    assert report == json.loads(Path(urls["report_json"]).read_text())
    assert report["metrics"]["thresholds_from"] == "validation" and report["synthetic"] is True
    page = Path(urls["report_html"]).read_text()
    assert page.count('src="data:image/svg+xml;base64,') == 3  # distribution, loss, PR curves
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert all(label in page for label in run["dataset"]["labels"]) and "SYNTHETIC" in page

    table = modfactory("status", run["id"], data_dir=data)
    assert "macro" in table.stdout and "toxicity" in table.stdout and "SYNTHETIC" in table.stdout


def test_run_human_output_prints_the_metrics_table(tmp_path: Path) -> None:
    """At 80 columns, piped: every header and number whole, a blank line before each table."""
    done = modfactory("run", "--source", "synthetic:2000", data_dir=tmp_path / "data", columns=80)
    assert done.returncode == 0, done.stderr
    for word in ("prec.", "recall", "ROC-AUC", "PR-AUC", "insult", "micro", "macro", "succeeded"):
        assert word in done.stdout
    tables = done.stdout.split("random baseline")[0]  # then one line each, and paths
    assert max(map(len, tables.splitlines())) <= 80
    assert (
        done.stdout.startswith("\ntest metrics") and "\n\nbootstrap 95 % intervals" in done.stdout
    )


def test_dataset_build_needs_no_redis_and_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = modfactory(
        "dataset",
        "build",
        "--source",
        "synthetic:2000",
        "--out",
        str(out),
        "--n-train",
        "1500",
        "--json",
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["synthetic"] and summary["splits"]["train"]["rows"] > 100
    assert {p.name for p in out.iterdir()} >= {
        "train.jsonl",
        "validation.jsonl",
        "test.jsonl",
        "distribution.svg",
        "dataset.json",
    }
    assert not (tmp_path / "data" / "redis").exists()


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "mine"
    source.mkdir()
    for split in ("train", "validation", "test"):
        (source / f"{split}.csv").write_text("comment,toxicity\nhello,0.9\n")
    done = modfactory(
        "dataset",
        "build",
        "--source",
        str(source),
        "--out",
        str(tmp_path / "o"),
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 2
    assert "'text'" in done.stderr and "columns found: comment, toxicity" in done.stderr
    assert "Traceback" not in done.stderr

    unknown = modfactory("run", "--source", "nowhere", data_dir=tmp_path / "data")
    assert unknown.returncode == 2 and "neither hf:<dataset>, synthetic" in unknown.stderr
    hyper = modfactory(
        "run", "--source", "synthetic", "-H", "training_steps=200", data_dir=tmp_path / "data"
    )
    assert hyper.returncode == 2 and "no hyperparameter 'training_steps'" in hyper.stderr
    for value, expected in (("seed=-1", "seed=-1 is out"), ("seed=0.5", "seed=0.5 is out")):
        out_of_range = modfactory(
            "run", "--source", "synthetic", "-H", value, data_dir=tmp_path / "data"
        )
        assert out_of_range.returncode == 2 and expected in out_of_range.stderr
    huge = modfactory("run", "--source", "synthetic:1000000000", data_dir=tmp_path / "data")
    assert huge.returncode == 2 and "synthetic takes 10 to 1,000,000 rows" in huge.stderr
    listed = modfactory("runs", "--json", data_dir=tmp_path / "data")
    assert json.loads(listed.stdout) == []  # none of the refused runs was created
    missing = modfactory("status", "run-nope", data_dir=tmp_path / "data")
    assert missing.returncode == 2 and "no run 'run-nope'" in missing.stderr


def test_a_failed_run_exits_1_with_the_reason(tmp_path: Path) -> None:
    source = tmp_path / "quiet"
    source.mkdir()
    for split in ("train", "validation", "test"):
        rows = [
            {"text": f"fine {i}", **dict.fromkeys(CIVIL_COMMENTS_LABELS, 0.0)} for i in range(20)
        ]
        (source / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = modfactory("run", "--source", str(source), "--json", data_dir=tmp_path / "data")
    assert done.returncode == 1
    run = json.loads(done.stdout)
    assert run["state"] == "failed" and run["stages"]["build"]["state"] == "failed"
    assert "no row flagged" in run["stages"]["build"]["error"]


def _wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_an_interrupted_run_stops_cleanly_and_the_next_worker_finishes_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "MODFACTORY_DATA_DIR": str(data), "MODFACTORY_LOCAL_GRID": "off"}
    env[PAUSE_ENV] = "0.5"  # a slow trainer: the run is interrupted while it trains
    command = [sys.executable, "-m", "modfactory"]
    run = subprocess.Popen(
        [*command, "run", "--source", "synthetic:30000"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for(lambda: any((data / "logs").glob("local-trainer-*.log")))  # a trainer started
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130 and "interrupted" in stderr.decode()
    assert not (data / "redis" / "redis-server.pid").exists()  # the embedded Redis stopped
    run_id = next((data / "runs").iterdir()).name

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*command, "worker"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:  # the worker logs each event of a run once it is stored
        _wait_for(lambda: "run succeeded" in log.read_text(errors="replace"), timeout=180)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    status = modfactory("status", run_id, "--json", data_dir=data)
    assert json.loads(status.stdout)["state"] == "succeeded", status.stdout


def test_a_second_trigger_for_a_busy_model_exits_4_or_coalesces(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = modfactory("enqueue", "pipeline", "--source", "synthetic:2000", data_dir=data)
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.strip()
    again = modfactory("enqueue", "pipeline", "--source", "synthetic:2000", data_dir=data)
    assert again.returncode == 4
    assert f"already has an unfinished run: {run_id} (queued at build)" in again.stderr
    assert f"modfactory cancel {run_id}" in again.stderr

    env_file = data.parent / ".env"  # the CLI reads .env from its working directory
    env_file.write_text("MODFACTORY_ACTIVE_RUN_POLICY=coalesce\n")
    coalesced = modfactory("enqueue", "pipeline", "--json", data_dir=data)
    assert coalesced.returncode == 0, coalesced.stderr
    assert json.loads(coalesced.stdout)["id"] == run_id
    listed = modfactory("runs", "--json", data_dir=data)
    assert [r["id"] for r in json.loads(listed.stdout)] == [run_id]


def test_the_recipe_options_come_from_the_recipe_itself(tmp_path: Path) -> None:
    from modfactory.values import RecipeParams

    shown = modfactory("dataset", "build", "--help", data_dir=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for name in RecipeParams.model_fields:  # every number of the recipe, and its variable
        assert f"--{name.replace('_', '-')}" in shown.stdout
    assert "MODFACTORY_N_TRAIN" in shown.stdout and "1,000,000" in shown.stdout
    built = modfactory(
        "dataset",
        "build",
        "--source",
        "synthetic:500",
        "--out",
        str(tmp_path / "o"),
        "--n-train",
        "200",
        "--label-columns",
        "toxicity, insult",
        "--json",
        data_dir=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert set(summary["labels"]) <= {"toxicity", "insult"} and summary["splits"]["train"]["rows"]
    refused = modfactory(
        "dataset",
        "build",
        "--source",
        "synthetic:500",
        "--out",
        str(tmp_path / "p"),
        "--n-train",
        "0",
        data_dir=tmp_path,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: n_train: Input should be greater than or equal to 1"
    for empty in ("", " , "):
        none = modfactory(
            "dataset",
            "build",
            "--source",
            "synthetic:500",
            "--out",
            str(tmp_path / "q"),
            "--label-columns",
            empty,
            data_dir=tmp_path,
        )
        assert none.returncode == 2 and "name at least one score column" in none.stderr
