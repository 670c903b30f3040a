"""The artifact store, on a directory and on a real S3 API (moto's server over HTTP): keys,
whole-or-nothing writes, listing, deleting, the errors people see, and the start-up check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modfactory.artifacts import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    ArtifactsUnavailable,
    Folder,
    dataset_key,
    run_key,
)
from modfactory.settings import Settings
from s3_server import S3Server


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path: Path) -> ArtifactStore:
    """The same tests on both kinds of store."""
    if request.param == "directory":
        return ArtifactStore(tmp_path / "artifacts", scratch=tmp_path)
    bucket = request.getfixturevalue("s3_bucket")
    return ArtifactStore(f"{bucket}/prefix", scratch=tmp_path)


def test_keys_are_made_here_and_only_of_plain_segments() -> None:
    assert run_key("run-1", "report.html") == "runs/run-1/report.html"
    assert dataset_key("run-1", "train.jsonl") == "runs/run-1/dataset/train.jsonl"
    for bad in ("..", "", "a/../b", "/etc", ".hidden"):
        with pytest.raises(ArtifactError, match="not a valid artifact key"):
            run_key("run-1", bad)


def test_save_load_list_delete(store: ArtifactStore, tmp_path: Path) -> None:
    store.check()
    assert store.save_text(run_key("r1", "a.json"), "{}") == "runs/r1/a.json"
    store.save(run_key("r1", "sub", "b.bin"), b"\x00\x01")
    scratch_file = tmp_path / "c.jsonl"
    scratch_file.write_text("x\n")
    store.save_file(scratch_file, run_key("r2", "c.jsonl"), move=True)
    assert store.load_text("runs/r1/a.json") == "{}"
    assert store.load("runs/r1/sub/b.bin") == b"\x00\x01"
    assert store.list("runs/r1") == ["runs/r1/a.json", "runs/r1/sub/b.bin"]
    assert store.list("runs/none") == []
    with store.scratch() as scratch:
        copy = store.local_copy("runs/r2/c.jsonl", scratch)
        assert copy.read_text() == "x\n" and copy.name == "c.jsonl"
    folder = Folder(store, run_key("r1", "sub"))
    assert folder.names() == ["b.bin"] and folder.read("none") is None
    store.delete(run_key("r1"))
    assert store.list("runs") == ["runs/r2/c.jsonl"]
    assert not store.exists("runs/r1/a.json")
    with pytest.raises(ArtifactNotFound, match=r"runs/r1/a.json: no such artifact"):
        store.load("runs/r1/a.json")
    store.delete(run_key("r1"))  # nothing there: nothing done


def test_a_path_in_an_earlier_run_document_still_reads(tmp_path: Path) -> None:
    old = tmp_path / "modfactory-data" / "runs" / "r0" / "report.html"
    old.parent.mkdir(parents=True)
    old.write_text("<html>")
    store = ArtifactStore("s3://elsewhere/prefix", scratch=tmp_path)  # never contacted
    assert store.load_text(str(old)) == "<html>" and store.url_of(str(old)) == str(old)


def test_urls_name_no_user_or_password(tmp_path: Path) -> None:
    store = ArtifactStore("s3://AKIA:s3cr3t@bucket/p", scratch=tmp_path)
    assert store.url_of("runs/r/x") == "s3://bucket/p/runs/r/x"
    assert "s3cr3t" in Settings(artifacts_url="s3://AKIA:s3cr3t@bucket/p").secret_values()
    local = ArtifactStore(tmp_path / "d")
    assert local.url_of("runs/r/x") == f"{tmp_path}/d/runs/r/x"


WRITER = """
import sys, time
from pathlib import Path
from modfactory.artifacts import ArtifactStore
store = ArtifactStore(sys.argv[1], scratch=Path(sys.argv[2]))
def chunks():
    print("writing", flush=True)
    for _ in range(400):
        time.sleep(0.01)
        yield b"x" * 65536
# A writer killed half-way through its object: a file being written beside its key.
with store._local_tmp("runs/r/model.joblib") as tmp, tmp.open("wb") as f:
    for chunk in chunks():
        f.write(chunk)
"""


def test_a_writer_killed_half_way_leaves_no_visible_object_on_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(tmp_path)], stdout=subprocess.PIPE
    )
    assert writer.stdout.readline() == b"writing\n"
    while not any(root.rglob("*.tmp")):  # bytes are on the disk, beside the key
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    store = ArtifactStore(root)
    assert store.list("runs") == [] and not store.exists("runs/r/model.joblib")


def test_an_upload_cut_half_way_leaves_no_visible_object_on_s3(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    big = tmp_path / "model.joblib"
    big.write_bytes(os.urandom(1_200_000))
    s3_server.stop_proxy()
    s3_server.start_proxy(rate=400_000)  # about 3 s for the file: time to cut it
    proxy_log = s3_server.log_dir / "proxy.log"
    before = proxy_log.read_text().count("\n")
    store = ArtifactStore(s3_bucket, {"config_kwargs": {"retries": {"max_attempts": 1}}})
    failed: list[BaseException] = []

    def upload() -> None:
        try:
            store.save_file(big, "local/jobs/j/model.joblib")
        except BaseException as exc:  # what the uploader saw, checked below
            failed.append(exc)

    uploading = threading.Thread(target=upload)
    uploading.start()
    deadline = time.monotonic() + 60
    while True:  # wait until a good part of the body went through the proxy
        lines = proxy_log.read_text().splitlines()[before:]
        if lines and int(lines[-1].split()[1]) > 300_000:
            break
        assert time.monotonic() < deadline and uploading.is_alive()
        time.sleep(0.05)
    s3_server.stop_proxy()  # the endpoint goes away mid-upload
    uploading.join(60)
    assert [type(exc).__name__ for exc in failed] == ["ArtifactsUnavailable"]
    s3_server.start_proxy()
    bucket = s3_bucket.removeprefix("s3://")
    assert s3_server.keys(bucket) == []  # asked of moto itself: nothing, not half a model
    assert not store.exists("local/jobs/j/model.joblib")


def test_a_missing_bucket_or_an_unreachable_endpoint_is_named_at_start(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError) as missing:
        ArtifactStore("s3://no-such-bucket-here/x").check()
    assert str(missing.value) == (
        "MODFACTORY_ARTIFACTS_URL=s3://no-such-bucket-here/x: the bucket or directory does "
        "not exist"
    )
    options = {
        "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(ArtifactError) as away:
        ArtifactStore(s3_bucket, options).check()
    assert str(away.value).startswith(f"MODFACTORY_ARTIFACTS_URL={s3_bucket} cannot be used: ")
    assert "unreachable" in str(away.value)
    with pytest.raises(
        ArtifactError, match=r"no driver for gs:// \(pip install 'modfactory\[gcs\]'\)"
    ):
        ArtifactStore("gs://bucket").check()
    with pytest.raises(ArtifactsUnavailable, match="unreachable"):  # mid-stage: try again later
        ArtifactStore(s3_bucket, options).load("runs/r/x")


def test_a_store_no_driver_knows_or_options_its_driver_refuses_are_named(
    s3_bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError) as unknown:
        ArtifactStore("nope://bucket/x").check()
    assert str(unknown.value) == (
        "MODFACTORY_ARTIFACTS_URL=nope://bucket/x: nope:// is no storage fsspec knows "
        "(s3://, gs://, az://, file://…)"
    )
    with pytest.raises(ArtifactError, match=r"^MODFACTORY_ARTIFACTS_OPTIONS: the s3:// driver "):
        ArtifactStore(s3_bucket, {"nonsense": 1}).check()
    for bad in ("s3://", "s3:///", "S3 ://x", "s3://a b"):
        with pytest.raises(ValueError, match="artifacts_url"):
            Settings(artifacts_url=bad)
    assert Settings(artifacts_url="  ").artifacts_url is None  # empty: the data dir


@pytest.mark.slow  # a second moto server (one that checks credentials), CLI processes
def test_bad_store_settings_stop_the_worker_at_start_naming_the_setting(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """Exit 2 and one line naming MODFACTORY_ARTIFACTS_URL and its URL — never a secret —
    before any run: a missing bucket, an unreachable endpoint, wrong credentials."""
    strict = S3Server(tmp_path / "strict", auth=True)
    strict.start()
    wrong = {**strict.env(), "AWS_SECRET_ACCESS_KEY": "not-the-right-secret-123"}
    cases = [
        (
            {**s3_server.env(), "MODFACTORY_ARTIFACTS_URL": "s3://no-such-bucket/x"},
            "does not exist",
        ),
        (
            {
                **s3_server.env(),
                "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                "AWS_MAX_ATTEMPTS": "1",
                "MODFACTORY_ARTIFACTS_URL": f"{s3_bucket}/x",
            },
            "unreachable",
        ),
        ({**wrong, "MODFACTORY_ARTIFACTS_URL": "s3://some-bucket/x"}, "access denied"),
    ]
    try:
        for env, why in cases:
            started = subprocess.run(
                [sys.executable, "-m", "modfactory", "worker"],
                env={**os.environ, **env, "MODFACTORY_DATA_DIR": str(tmp_path / "d")},
                capture_output=True,
                text=True,
                timeout=120,
            )
            url = env["MODFACTORY_ARTIFACTS_URL"]
            assert started.returncode == 2, started.stderr
            assert started.stderr.startswith(f"error: MODFACTORY_ARTIFACTS_URL={url}"), (
                started.stderr
            )
            assert why in started.stderr and "Traceback" not in started.stderr
            assert env["AWS_SECRET_ACCESS_KEY"] not in started.stderr
            assert not (tmp_path / "d" / "redis").exists()  # stopped before anything started
    finally:
        strict.stop()


async def test_a_stage_whose_store_goes_away_is_interrupted_then_done_not_failed(
    redis_db: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """The endpoint away mid-stage: the attempt is interrupted (the reconciler queues it
    again), and the next attempt, once the store is back, does the stage."""

    from modfactory.stages.context import StageContext
    from modfactory.stages.pipeline import JOBS
    from modfactory.store import queue
    from modfactory.store.run import RunSpec, RunState
    from modfactory.store.runs import RunStore
    from modfactory.values import RecipeParams

    settings = Settings(
        redis_url=redis_db,
        data_dir=tmp_path,
        artifacts_url=f"{s3_bucket}/m",
        artifacts_options='{"config_kwargs": {"retries": {"max_attempts": 1}}}',
    )
    pool = await queue.open_pool(redis_db, "modfactory")
    store = RunStore(pool, settings.queue_name)
    ctx = {"modfactory": StageContext(settings, store, pool)}
    run = await store.create(
        RunSpec(source="synthetic:400", backend="local", recipe=RecipeParams(n_train=300))
    )
    with s3_server.outage():
        await JOBS["build"](ctx, run.id)
    interrupted = await store.get(run.id)
    assert interrupted.state == RunState.RUNNING and interrupted.stages["build"].state == "running"
    assert "(MODFACTORY_ARTIFACTS_URL) unreachable" in interrupted.stages["build"].last_error
    assert not await pool.exists(f"arq:job:{run.id}:upload")  # nothing moved on

    await JOBS["build"](ctx, run.id)  # the attempt the reconciler queues
    built = await store.get(run.id)
    assert built.stages["build"].state == "succeeded", built.error
    assert ArtifactStore(f"{s3_bucket}/m").exists(built.artifacts.train_file)
    await pool.aclose()


def test_a_machine_keeps_only_its_newest_trainer_logs(tmp_path: Path) -> None:
    """Trainers' logs stay on the machine that ran them, where prune cannot reach: each
    new trainer trims them to the newest ``KEPT_LOGS``."""
    from modfactory.backends.local.backend import KEPT_LOGS, _keep_newest

    for i in range(KEPT_LOGS + 10):
        log = tmp_path / f"local-trainer-ftjob-{i}.log"
        log.write_text("x")
        os.utime(log, (1_000 + i, 1_000 + i))
    (tmp_path / "other.txt").write_text("not a log")
    _keep_newest(tmp_path, KEPT_LOGS - 1)
    kept = sorted(int(p.stem.rsplit("-", 1)[1]) for p in tmp_path.glob("local-trainer-*"))
    assert kept == list(range(11, KEPT_LOGS + 10)) and (tmp_path / "other.txt").exists()
