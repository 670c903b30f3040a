"""The fast build selects exactly what ``datasets``' streaming shuffle selects, or streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from datasets.iterable_dataset import BufferShuffledExamplesIterable

from cookbook import cookbook_build
from fake_hub import FakeHub
from modfactory.data import shuffle_guard, synthetic
from modfactory.data.build import build_dataset
from modfactory.data.recipe import RecipeError
from modfactory.data.shuffle_indices import shuffled_take
from modfactory.data.sources import parse_source
from modfactory.data.synthetic import generate_split
from modfactory.store.embedded_redis import free_port
from modfactory.values import CIVIL_COMMENTS_LABELS, RecipeParams

pytestmark = pytest.mark.slow  # full builds through both engines


def index_shards(directory: Path, sizes: tuple[int, ...], fmt: str) -> list[str]:
    """Shards whose only column is the global row number."""
    directory.mkdir(parents=True, exist_ok=True)
    files, start = [], 0
    for number, size in enumerate(sizes):
        rows = list(range(start, start + size))
        path = directory / f"train-{number:05d}.{fmt}"
        if fmt == "parquet":  # small row groups: the reader's batches differ from ours
            pq.write_table(pa.table({"i": rows}), path, row_group_size=97)
        else:
            path.write_text("".join(json.dumps({"i": i}) + "\n" for i in rows))
        files.append(str(path))
        start += size
    return files


@pytest.mark.parametrize(
    ("sizes", "seed", "buffer_size", "n"),
    [
        ((5000,), 42, 1000, 3000),  # one shard, buffer smaller than the split
        ((5000,), 42, 5000, 5000),  # the cookbook's buffer_size = n
        ((2500, 2500), 42, 3000, 3000),  # two shards, buffer = n < split
        ((1200, 800, 3000), 7, 2048, 4000),  # uneven shards
        ((300,) * 13, 0, 1000, 2500),  # more shards than the 10 read at once
        ((700, 300), 3, 5000, 600),  # buffer larger than the split
        ((700, 300), 11, 400, 5000),  # n larger than the split
        ((1,) * 3, 5, 1, 3),  # degenerate: a buffer of one row
    ],
)
def test_shuffled_take_equals_datasets_streaming(
    tmp_path: Path, sizes: tuple[int, ...], seed: int, buffer_size: int, n: int
) -> None:
    files = index_shards(tmp_path, sizes, "jsonl")
    stream = load_dataset("json", data_files={"train": files}, streaming=True)["train"]
    expected = [row["i"] for row in stream.shuffle(seed=seed, buffer_size=buffer_size).take(n)]
    assert shuffled_take(sizes, seed, buffer_size, n).tolist() == expected


def test_shuffled_take_equals_datasets_streaming_over_parquet_row_groups(tmp_path: Path) -> None:
    sizes = (1500, 1000, 2500)
    files = index_shards(tmp_path, sizes, "parquet")
    stream = load_dataset("parquet", data_files={"train": files}, streaming=True)["train"]
    expected = [row["i"] for row in stream.shuffle(seed=42, buffer_size=2000).take(2000)]
    assert shuffled_take(sizes, 42, 2000, 2000).tolist() == expected


def civil_comments_parquet(directory: Path, rows: int, shards: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for offset, split in enumerate(("train", "validation", "test")):
        table = generate_split(rows, seed=300 + offset)
        step = -(-rows // shards)
        for k in range(shards):
            part = table.slice(k * step, step)
            pq.write_table(part, directory / f"{split}-{k:05d}-of-{shards:05d}.parquet")
    return directory


def written(out: Path) -> dict[str, list[str]]:
    return {
        s: (out / f"{s}.jsonl").read_text().splitlines() for s in ("train", "validation", "test")
    }


def test_fast_and_stream_engines_write_identical_files(tmp_path: Path) -> None:
    source = parse_source(str(civil_comments_parquet(tmp_path / "src", 6000, shards=3)))
    params = RecipeParams(n_train=4000, n_validation=1500, n_test=1500, seed=5)
    fast = build_dataset(source, params, tmp_path / "fast", tmp_path / "data", engine="fast")
    stream = build_dataset(source, params, tmp_path / "stream", tmp_path / "data", engine="stream")
    assert (fast.engine, stream.engine) == ("fast", "stream")
    assert written(tmp_path / "fast") == written(tmp_path / "stream")  # same rows, same order
    assert fast.splits["train"].rows > 500


@pytest.fixture
def changed_datasets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Simulate a ``datasets`` release whose shuffle buffer yields in another order."""
    original = BufferShuffledExamplesIterable._iter_arrow

    def reversed_batches(self: BufferShuffledExamplesIterable) -> Iterator:
        for key, table in original(self):
            yield key, table.take(pa.array(range(len(table) - 1, -1, -1)))

    monkeypatch.setattr(BufferShuffledExamplesIterable, "_iter_arrow", reversed_batches)
    shuffle_guard._mismatch.cache_clear()
    yield
    shuffle_guard._mismatch.cache_clear()


def test_a_changed_shuffle_algorithm_makes_the_build_stream_the_new_rows(
    tmp_path: Path, changed_datasets: None
) -> None:
    directory = civil_comments_parquet(tmp_path / "src", 1500)
    params = RecipeParams(n_train=900, n_validation=300, n_test=300)
    summary = build_dataset(parse_source(str(directory)), params, tmp_path / "out", tmp_path / "d")
    assert summary.engine == "stream"
    assert "differently from modfactory's fast build" in summary.engine_note

    files = {
        s: sorted(str(p) for p in directory.glob(f"{s}-*")) for s in ("train", "validation", "test")
    }
    n = {"train": 900, "validation": 300, "test": 300}
    expected = cookbook_build("parquet", files, n, CIVIL_COMMENTS_LABELS, seed=42)
    for split, lines in written(tmp_path / "out").items():
        got = sorted((r["text"], tuple(r["labels"]["moderation"])) for r in map(json.loads, lines))
        assert got == sorted(expected[split])  # the rows the (changed) cookbook code selects

    with pytest.raises(RecipeError, match="the fast engine would not select the cookbook's rows"):
        build_dataset(
            parse_source(str(directory)), params, tmp_path / "o2", tmp_path / "d", engine="fast"
        )


def test_fast_engine_errors_name_the_file_and_row(tmp_path: Path) -> None:
    directory = civil_comments_parquet(tmp_path / "src", 300, shards=1)
    params = RecipeParams(n_train=200, n_validation=50, n_test=50)
    test_file = directory / "test-00000-of-00001.parquet"
    table = pq.read_table(test_file)
    scores = table.column("insult").to_pylist()
    scores[17] = None
    pq.write_table(
        table.set_column(table.schema.get_field_index("insult"), "insult", pa.array(scores)),
        test_file,
    )
    with pytest.raises(
        RecipeError,
        match=r"'test': label column 'insult' has no score in test-00000-of-00001.parquet row 17",
    ):
        build_dataset(
            parse_source(str(directory)), params, tmp_path / "out", tmp_path / "d", engine="fast"
        )

    pq.write_table(table.drop_columns(["threat"]), test_file)
    with pytest.raises(
        RecipeError, match=r"test-00000-of-00001.parquet\): column 'threat' not found"
    ):
        build_dataset(
            parse_source(str(directory)), params, tmp_path / "out", tmp_path / "d", engine="fast"
        )

    jsonl = synthetic.write_source(tmp_path / "jsonl", 300)  # JSONL files: no fast engine
    with pytest.raises(
        RecipeError, match=f"--engine fast cannot run: source {jsonl} is not made of parquet"
    ):
        build_dataset(
            parse_source(str(jsonl)), params, tmp_path / "out", tmp_path / "d", engine="fast"
        )
    built = build_dataset(  # a synthetic source is written once as parquet, and built fast
        parse_source("synthetic:300"), params, tmp_path / "out", tmp_path / "d", engine="fast"
    )
    assert built.engine == "fast" and built.synthetic


def test_the_guard_trusts_the_installed_datasets() -> None:
    assert shuffle_guard.mismatch() is None


def test_an_unreachable_hub_is_named_before_anything_is_built(tmp_path: Path) -> None:
    """hf: sources fetch their parquet files once; offline, the fast engine says why not."""
    params = RecipeParams(n_train=10, n_validation=10, n_test=10)
    with pytest.raises(
        RecipeError, match=r"source hf:google/civil_comments cannot be reached \(ConnectionError"
    ):
        build_dataset(
            parse_source("hf:google/civil_comments"),
            params,
            tmp_path / "o",
            tmp_path / "d",
            engine="fast",
        )
    assert not (tmp_path / "o").exists()


def test_an_hf_source_is_fetched_once_and_built_fast_with_the_streamed_rows(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    civil_comments_parquet(repo / "data", 3000, shards=2)
    hub = FakeHub({"acme/civil": repo})
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }

    def build(engine: str) -> dict:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "modfactory",
                "dataset",
                "build",
                "--source",
                "hf:acme/civil",
                "--out",
                str(tmp_path / engine),
                "--data-dir",
                str(tmp_path / "data"),
                "--n-train",
                "2000",
                "--n-validation",
                "200",
                "--n-test",
                "200",
                "--engine",
                engine,
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    try:
        fast = build("fast")
        fetched = dict(hub.downloads)
        assert fast["engine"] == "fast" and len(fetched) == 6  # every parquet file, once
        again = build("fast")
        assert dict(hub.downloads) == fetched  # the second build reads the local cache
        stream = build("stream")
    finally:
        hub.close()
    assert stream["engine"] == "stream"
    assert written(tmp_path / "fast") == written(tmp_path / "stream")
    assert again["splits"] == fast["splits"]


@pytest.mark.parametrize("hub", ["closed port", "unresolvable host"])
def test_an_unreachable_hub_is_one_line_and_exit_2_for_a_build_and_a_run(
    tmp_path: Path, hub: str
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}" if hub == "closed port" else "https://hub.invalid"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_HUB_OFFLINE")
    env.pop("HF_DATASETS_OFFLINE")

    def modfactory(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modfactory", *args, "--data-dir", str(tmp_path / "data")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    built = modfactory(
        "dataset", "build", "--source", "hf:google/civil_comments", "--out", str(tmp_path / "o")
    )
    assert built.returncode == 2
    lines = built.stderr.strip().splitlines()
    assert len(lines) == 1, built.stderr  # no traceback, no retry warnings, no second route
    assert lines[0].startswith("error: source hf:google/civil_comments cannot be reached (")
    assert "HF_HUB_OFFLINE=1" in lines[0] and "--source DIR" in lines[0]

    run = modfactory("run", "--source", "hf:google/civil_comments", "--json")
    assert run.returncode == 1, run.stderr
    failed = json.loads(run.stdout)
    assert failed["state"] == "failed" and failed["stages"]["build"]["state"] == "failed"
    assert failed["error"] == "build: " + lines[0].removeprefix("error: ")


@pytest.mark.parametrize("trouble", ["hub down", "unknown dataset"])
def test_a_hub_that_answers_an_error_is_one_line_exit_2_and_one_request(
    tmp_path: Path, trouble: str
) -> None:
    repo = tmp_path / "repo"
    civil_comments_parquet(repo / "data", 100, shards=1)
    hub = FakeHub({"acme/civil": repo})
    if trouble == "hub down":
        hub.down_with, name, why = 503, "acme/civil", "answered HTTP 503"
    else:
        name, why = "acme/nothing", "has no dataset acme/nothing this machine may read (HTTP 404"
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }
    try:
        built = subprocess.run(
            [
                *(sys.executable, "-m", "modfactory", "dataset", "build", "--source", f"hf:{name}"),
                *("--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "data")),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        hub.close()
    assert built.returncode == 2
    lines = built.stderr.strip().splitlines()
    assert len(lines) == 1, built.stderr  # no retry warnings (once or twice), no traceback
    assert lines[0].startswith(f"error: source hf:{name} cannot be reached (the Hub at ")
    assert why in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert hub.requests[f"/api/datasets/{name}"] == 1  # asked once: no retries, no second route
    assert not any("/resolve/" in path for path in hub.requests)
    assert not (tmp_path / "o").exists()


def test_the_data_libraries_log_lines_are_printed_once_in_our_format() -> None:
    script = (
        "import logging\n"
        "from modfactory.logs import configure_logging\n"
        "from modfactory.data.sources import _import_datasets\n"
        "configure_logging('json')\n"
        "_import_datasets()\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s')\n"
        "logging.getLogger('datasets.load').warning('trying by streaming')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    lines = done.stderr.strip().splitlines()
    assert [json.loads(line)["message"] for line in lines] == [
        "Retrying in 1s",
        "trying by streaming",
    ]
