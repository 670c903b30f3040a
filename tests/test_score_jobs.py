"""A scoring job's rules (no Redis), its store (fakeredis), and how an archive is read and
cut into shards (parquet, CSV, JSON Lines), with the errors a bad archive gets."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import fakeredis
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modfactory.data.archive import allowed_archive, open_archive
from modfactory.data.recipe import RecipeError
from modfactory.store.score_job import (
    ScoreJob,
    ScoreJobStateError,
    ScoreSpec,
    ScoreState,
    ScoreSummary,
    ShardState,
)
from modfactory.store.score_jobs import ScoreJobStore
from modfactory.values import PriceQuote

SPEC = ScoreSpec(
    source="synthetic:100", model_name="m", run_id="run-1", model_id="ft:x", backend="local"
)


def planned(shards: int = 3) -> ScoreJob:
    job = ScoreJob(id="score-1", spec=SPEC)
    assert job.plan([10] * shards, ["insult"], {"insult": 0.5})
    return job


def test_a_plan_is_made_once_and_a_done_shard_is_never_started_again() -> None:
    job = planned()
    assert job.state == ScoreState.RUNNING and job.total_rows == 30
    assert not job.plan([5], ["insult"], {"insult": 0.5})  # planned already
    assert job.start_shard(0, max_attempts=3) and job.shards[0].state == ShardState.RUNNING
    assert job.finish_shard(0, {"insult": 4})
    assert not job.start_shard(0, max_attempts=3)
    assert not job.finish_shard(0, {"insult": 9}) and job.shards[0].flagged == {"insult": 4}
    assert job.unfinished_shards() == [1, 2] and job.rows_done == 10


def test_a_shard_lost_too_often_fails_the_job_naming_how_its_last_attempt_ended() -> None:
    job = planned()
    for _ in range(2):
        assert job.start_shard(1, max_attempts=2)  # each attempt lost with its worker
    assert job.start_shard(1, max_attempts=2)
    assert job.state == ScoreState.FAILED
    assert job.error == "shard 1 was attempted 2 times; the last: its worker was lost"


def test_an_unreachable_store_does_not_use_up_a_shard_s_attempts() -> None:
    job = planned()
    for _ in range(5):
        assert job.start_shard(2, max_attempts=2)
        assert job.interrupt_shard(2, "the store is away")
    assert job.state == ScoreState.RUNNING and job.shards[2].interrupted == 5
    assert job.shards[2].attempts == 0 and job.shards[2].state == ShardState.PENDING


def test_the_job_succeeds_only_once_every_shard_is_scored() -> None:
    job = planned(shards=2)
    summary = ScoreSummary(rows=20, labels={})
    assert not job.complete(summary)
    for index in (0, 1):
        job.start_shard(index, 3)
        job.finish_shard(index, {})
    assert job.complete(summary) and job.state == ScoreState.SUCCEEDED
    with pytest.raises(ScoreJobStateError, match="succeeded already"):
        job.cancel("late")
    assert not job.cancel("late", strict=False)


def test_a_quote_above_the_cap_waits_for_approval_before_any_shard_is_sent() -> None:
    capped = SPEC.model_copy(update={"max_cost": 1.0, "backend": "mistral"})
    quote = PriceQuote(cost=2.5, currency="EUR", tokens=50_000_000, basis="0.05 EUR (batch)")
    job = ScoreJob(id="score-2", spec=capped)
    assert job.plan([10, 10], ["insult"], {"insult": 0.5}, batch=True, quote=quote)
    assert job.state == ScoreState.AWAITING_APPROVAL and job.started_at is None
    assert "above MODFACTORY_MAX_COST 1" in job.events[-1].message
    assert not job.start_shard(0, max_attempts=3)  # nothing is sent while it waits
    assert job.approve() and job.state == ScoreState.RUNNING
    with pytest.raises(ScoreJobStateError, match="only one awaiting approval"):
        job.approve()
    cheap = ScoreJob(id="score-3", spec=capped)
    assert cheap.plan([10], ["insult"], {"insult": 0.5}, quote=quote.model_copy(update={"cost": 1}))
    assert cheap.state == ScoreState.RUNNING  # at the cap is within it


def test_a_remote_shard_is_followed_by_numbered_looks_and_never_sent_again() -> None:
    job = planned(2)
    assert job.start_shard(0, max_attempts=3) and job.submitted(0, "batch-1")
    assert job.shards[0].state == ShardState.REMOTE and job.remote_shards() == [0]
    assert job.shards_to_send() == [1]
    assert not job.start_shard(0, max_attempts=3)  # a shard job run again sends nothing
    assert not job.submitted(0, "batch-2") and job.shards[0].batch_id == "batch-1"
    assert job.looked(0, 0, "QUEUED") and job.shards[0].looks == 1
    assert not job.looked(0, 0, "RUNNING")  # a stale look changes nothing
    assert job.looked(0, 1, "RUNNING") and job.shards[0].remote_status == "RUNNING"
    assert job.finish_shard(0, {"insult": 3}) and not job.looked(0, 2, "SUCCESS")


def test_progress_counts_the_shards_under_way_and_gives_a_pace_and_time_left() -> None:
    job = planned(shards=4)
    job.start_shard(0, 3)
    job.finish_shard(0, {})
    assert job.started_at is not None
    at = job.started_at + timedelta(seconds=10)
    progress = job.progress({1: 5, 0: 10}, at=at)  # shard 0's stale count is not added
    assert (progress.rows_done, progress.rows_total, progress.shards_done) == (15, 40, 1)
    assert progress.rows_per_second == pytest.approx(1.5)
    assert progress.eta_seconds == pytest.approx(25 / 1.5)
    assert planned().progress({}).rows_per_second is None


async def test_the_store_lists_jobs_and_forgets_the_ended_ones_from_the_active_set() -> None:
    store = ScoreJobStore(fakeredis.FakeAsyncRedis(), "t")
    first, second = await store.create(SPEC), await store.create(SPEC)
    assert [j.id for j in await store.list()] in ([second.id, first.id], [first.id, second.id])
    await store.plan(first.id, [10, 10], ["insult"], {"insult": 0.5})
    assert await store.start_shard(first.id, 0, 3) is not None
    await store.record_rows(first.id, 0, 7)
    assert await store.rows_in_progress(first.id) == {0: 7}
    await store.finish_shard(first.id, 0, {"insult": 1})
    assert await store.rows_in_progress(first.id) == {}
    assert await store.start_shard(first.id, 0, 3) is None  # done: not again
    await store.cancel(first.id, "by a test")
    assert [j.id for j in await store.active()] == [second.id]
    assert (await store.get(first.id)).state == ScoreState.CANCELLED


# --- reading an archive ---------------------------------------------------------------
def _write(directory: Path, fmt: str, rows: list[dict]) -> Path:
    path = directory / f"comments.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import csv

        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_an_archive_is_cut_into_shards_of_rows_in_order(tmp_path: Path, fmt: str) -> None:
    rows = [{"id": 100 + i, "text": f"comment, {i}", "toxicity": 0.1} for i in range(25)]
    archive = open_archive(str(_write(tmp_path, fmt, rows)), "text", "id", tmp_path)
    shards = list(archive.shards(10))
    assert [s.num_rows for s in shards] == [10, 10, 5]
    whole = pa.concat_tables(shards).to_pylist()
    assert [r["row"] for r in whole] == list(range(25))
    assert [r["id"] for r in whole] == [str(100 + i) for i in range(25)]
    assert [r["text"] for r in whole] == [f"comment, {i}" for i in range(25)]


def test_a_directory_s_files_are_read_in_name_order_and_may_not_mix_formats(
    tmp_path: Path,
) -> None:
    for name, start in (("b.jsonl", 3), ("a.jsonl", 0)):
        (tmp_path / name).write_text(
            "".join(json.dumps({"text": f"t{start + i}"}) + "\n" for i in range(3))
        )
    archive = open_archive(str(tmp_path), "text", None, tmp_path)
    texts = [r["text"] for s in archive.shards(4) for r in s.to_pylist()]
    assert texts == [f"t{i}" for i in range(6)]
    (tmp_path / "c.csv").write_text("text\nx\n")
    with pytest.raises(RecipeError, match="its files mix formats"):
        open_archive(str(tmp_path), "text", None, tmp_path)


@pytest.mark.parametrize(
    ("contents", "column", "error"),
    [
        ('{"body": "x"}\n', "text", "no column 'text' (it has body)"),
        ('{"text": "x"}\n{"text": null}\n', "text", "row 2: 'text' is empty"),
        ('{"text": "x"}\nnot json\n', "text", "cannot be read as jsonl"),
    ],
)
def test_a_bad_archive_gets_one_line_naming_the_file_and_what_is_wrong(
    tmp_path: Path, contents: str, column: str, error: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(contents)
    with pytest.raises(RecipeError) as raised:
        list(open_archive(str(path), column, None, tmp_path).shards(10))
    assert error in str(raised.value) and str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_api_scores_only_the_sources_it_is_allowed_to(tmp_path: Path) -> None:
    archive_dir = tmp_path / "archive"
    (archive_dir / "2025").mkdir(parents=True)
    (tmp_path / "secret.csv").write_text("text\nhidden\n")
    (archive_dir / "escape.csv").symlink_to(tmp_path / "secret.csv")
    allowed = (str(archive_dir), "s3://bucket/archive", "synthetic", "hf:google/civil_comments")
    for fine in (
        str(archive_dir / "2025" / "comments.parquet"),
        "s3://bucket/archive/2025/",
        "synthetic:5000",
        "hf:google/civil_comments",
    ):
        assert allowed_archive(fine, allowed) == fine
    for refused in (
        str(tmp_path / "secret.csv"),
        str(archive_dir / "escape.csv"),  # a symlink out of it
        f"{archive_dir}/../secret.csv",
        "s3://bucket/archive-other/x.parquet",
        "s3://bucket/archive/../private/x.parquet",
        "hf:someone/else",
        "/etc/passwd",
        "synthetic:5\x00",
        "",
    ):
        with pytest.raises(RecipeError, match="not one the API may score"):
            allowed_archive(refused, allowed)
    with pytest.raises(RecipeError, match="set MODFACTORY_SCORE_SOURCES"):
        allowed_archive("synthetic:10", ())
