"""Corrections: the log in a real Redis, compaction into the artifact store, the build that
adds them, the promotion rule on the live test set, ``POST /v1/feedback`` (its doors
refused, nothing stored) and the retrain they start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from helpers import producer_for, settings_for
from modfactory.artifacts import ArtifactStore, feedback_key
from modfactory.data.build import build_dataset
from modfactory.data.feedback import (
    Corrections,
    held_out,
    latest_by_text,
    read_corrections_file,
    read_snapshot,
    snapshot_bytes,
)
from modfactory.data.recipe import RecipeError, read_jsonl
from modfactory.data.sources import parse_source
from modfactory.evaluation.metrics import evaluate_scores
from modfactory.evaluation.promotion import decide_promotion
from modfactory.settings import Settings
from modfactory.stages.feedback import all_corrections
from modfactory.store.feedback import Correction, FeedbackLog
from modfactory.triggers.feedback import retrain_if_due
from modfactory.values import RecipeParams
from modfactory.web import app as web_app
from modfactory.web.app import create_app

REVIEW = "review-token-0123456789abcdef0123456789"
SERVE = "serve-token-0123456789abcdef0123456789ab"
WEBHOOK = "webhook-token-0123456789abcdef01234567"


def correction(text: str, *labels: str, request_id: str | None = None) -> Correction:
    return Correction(
        model_name="moderation",
        text=text,
        labels=list(labels),
        at=datetime.now(UTC),
        request_id=request_id,
    )


# --- corrections as data ------------------------------------------------------------------
def test_the_live_share_is_stable_and_close_to_the_setting() -> None:
    texts = [f"comment number {i}" for i in range(5000)]
    live = [t for t in texts if held_out(t, 0.2)]
    assert 0.17 < len(live) / len(texts) < 0.23
    assert live == [t for t in texts if held_out(t, 0.2)]  # the same texts every time
    assert not any(held_out(t, 0.0) for t in texts)


def test_the_latest_correction_of_a_text_wins_and_the_snapshot_keeps_the_schema() -> None:
    rows = [
        {"text": "a", "labels": ["toxicity"], "seq": 1, "id": "1", "reviewer": "x", "at": "t"},
        {"text": "b", "labels": [], "seq": 2, "id": "2", "reviewer": None, "at": "t"},
        {"text": "a", "labels": ["custom"], "seq": 3, "id": "3", "reviewer": "y", "at": "t"},
    ]
    latest = latest_by_text(rows)
    assert [(r["text"], r["labels"]) for r in latest] == [("b", []), ("a", ["custom"])]
    import io

    import pyarrow.parquet as pq

    data = snapshot_bytes(latest)
    columns = pq.read_table(io.BytesIO(data)).column_names
    assert columns[:2] == ["text", "toxicity"] and "custom" in columns and "reviewer" in columns
    back = read_snapshot(data)
    assert [(r["text"], r["labels"], r["seq"], r["reviewer"]) for r in back] == [
        ("b", [], 2, None),
        ("a", ["custom"], 3, "y"),
    ]


def test_a_file_of_corrections_is_read_or_its_bad_row_named(tmp_path: Path) -> None:
    labels = ("toxicity", "insult")
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"text": "you zorb", "labels": {"toxicity": true, "insult": false}}\n'
        '{"text": "fine", "labels": []}\n'
        '{"text": "scored", "toxicity": 0.8, "insult": 0.2, "reviewer": "ann"}\n'
    )
    assert read_corrections_file(good, labels) == [
        {"text": "you zorb", "labels": ["toxicity"], "reviewer": None},
        {"text": "fine", "labels": [], "reviewer": None},
        {"text": "scored", "labels": ["toxicity"], "reviewer": "ann"},
    ]
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("text,toxicity,insult\nhello,0,1\n")
    assert read_corrections_file(csv_file, labels)[0]["labels"] == ["insult"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "labels": []}\n{"text": "x", "labels": {"spam": true}}\n')
    with pytest.raises(RecipeError, match=r"bad.jsonl:2: field 'labels.spam'.*no label 'spam'"):
        read_corrections_file(bad, labels)
    empty = tmp_path / "e.csv"
    empty.write_text("text,toxicity\n,1\n")
    with pytest.raises(RecipeError, match=r"e.csv:1: field 'text' is missing"):
        read_corrections_file(empty, labels)


def test_a_build_adds_corrections_to_train_and_holds_out_the_live_set(tmp_path: Path) -> None:
    params = RecipeParams(n_train=600, n_validation=100, n_test=100)
    rows = [
        {"text": f"zorblax number {i}", "labels": ["toxicity"], "seq": i + 1} for i in range(100)
    ]
    summary = build_dataset(
        parse_source("synthetic:600"),
        params,
        tmp_path / "out",
        tmp_path / "data",
        corrections=Corrections(rows, 100, 0.3),
    )
    used = summary.feedback
    assert used is not None and used.rows == 100 and used.upto_seq == 100
    assert used.train_rows + used.live_rows == 100 and 15 < used.live_rows < 45
    train = read_jsonl(Path(summary.splits["train"].file))
    live = read_jsonl(Path(summary.splits["live"].file))
    assert sum("zorblax" in r["text"] for r in train) == used.train_rows
    assert all(r["labels"] == {"moderation": ["toxicity"]} for r in live)
    assert summary.splits["live"].labels["toxicity"] == used.live_rows
    for split in ("validation", "test"):  # never in validation or test
        assert not any("zorblax" in r["text"] for r in read_jsonl(Path(summary.splits[split].file)))


def test_the_challenger_must_win_on_the_live_set_and_not_lose_on_the_source_test() -> None:
    labels = ["toxicity"]
    truth = [["toxicity"], ["safe"], ["toxicity"], ["safe"]]

    def measured(test_scores: list[float], live_scores: list[float] | None = None):
        metrics = evaluate_scores(truth, [{"toxicity": s} for s in test_scores], labels)
        if live_scores is not None:
            metrics.live = evaluate_scores(truth, [{"toxicity": s} for s in live_scores], labels)
        return metrics

    perfect, poor = [0.9, 0.1, 0.8, 0.2], [0.2, 0.9, 0.8, 0.1]
    champion, champion_live = measured(perfect), measured(poor)
    wins_live = measured(perfect, perfect)
    promoted, why = decide_promotion(wins_live, champion, "macro_pr_auc", 0.0, champion_live)
    assert promoted and why.startswith("live test set:")
    loses_test = measured(poor, perfect)
    promoted, why = decide_promotion(loses_test, champion, "macro_pr_auc", 0.0, champion_live)
    assert not promoted and "source test" in why
    within_margin = measured([0.9, 0.1, 0.6, 0.7], perfect)  # a little worse on test
    assert decide_promotion(within_margin, champion, "macro_pr_auc", 0.2, champion_live)[0]


# --- the log in Redis, compacted into the artifact store ----------------------------------
async def test_a_retried_correction_is_stored_once_and_compaction_keeps_everything(
    redis_db: str, tmp_path: Path
) -> None:
    client = redis.asyncio.Redis.from_url(redis_db)
    log = FeedbackLog(client, "t")
    first = correction("hello", "toxicity", request_id="req-1")
    assert await log.add(first) == (first.id, True)
    assert await log.add(correction("hello", request_id="req-1")) == (first.id, False)
    await log.add(correction("other", "insult"))
    assert await log.count("moderation") == 2

    store = ArtifactStore(tmp_path / "artifacts")
    rows, upto = await all_corrections(store, log, "moderation", compact=True)
    assert upto == 2 and [r["text"] for r in rows] == ["hello", "other"]
    assert await log.after("moderation", 0) == [] and await log.trimmed("moderation") == 2
    assert store.list(feedback_key("moderation")) == [
        feedback_key("moderation", "upto-000000000002.parquet")
    ]
    await log.add(correction("hello", "insult"))  # corrected again: the latest wins
    rows, upto = await all_corrections(store, log, "moderation")  # read only
    assert upto == 3 and {r["text"]: r["labels"] for r in rows}["hello"] == ["insult"]
    assert len(await log.after("moderation", 0)) == 1  # a reader trims nothing

    # a compaction stopped after its snapshot, before the trim: the same corrections
    rows_before = rows
    await asyncio.to_thread(
        store.save, feedback_key("moderation", "upto-000000000003.parquet"), snapshot_bytes(rows)
    )
    rows, upto = await all_corrections(store, log, "moderation", compact=True)
    assert (rows, upto) == (rows_before, 3)
    await client.aclose()


# --- POST /v1/feedback ---------------------------------------------------------------------
@pytest.fixture
def api(request, redis_db: str, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    """The app in this process (real Redis); ``request.param``: MODFACTORY_FEEDBACK_RATE."""
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        review_token=REVIEW,
        serve_token=SERVE,
        webhook_token=WEBHOOK,
        feedback_rate=getattr(request, "param", 1000),
        serve_max_body=2_000,
        label_columns=("toxicity", "insult"),
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings


def send(client: TestClient, body: object, token: str | None = REVIEW, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, bytes):
        return client.post("/v1/feedback", content=body, headers=headers, **kwargs)
    return client.post("/v1/feedback", json=body, headers=headers, **kwargs)


def stored(settings: Settings) -> int:
    return int(redis.Redis.from_url(settings.redis_url).zcard("modfactory:feedback:moderation"))


def test_a_correction_is_accepted_once_and_bad_ones_are_refused_storing_nothing(api) -> None:
    client, settings = api
    body = {"input": "you zorblax", "labels": {"toxicity": True}, "request_id": "r1"}
    first = send(client, body)
    assert first.status_code == 202, first.text
    assert first.json()["stored"] is True and first.json()["model"] == "moderation"
    again = send(client, body)  # a retry: the same answer, stored once
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.json()["stored"] is False and stored(settings) == 1

    refused = {
        "unknown label": (send(client, {"input": "x", "labels": {"spam": True}}), 422, "spam"),
        "no token": (send(client, body, token=None), 401, "MODFACTORY_REVIEW_TOKEN"),
        "wrong token": (send(client, body, token="x" * 40), 401, "bearer token"),
        "serve token": (send(client, body, token=SERVE), 403, "MODFACTORY_SERVE_TOKEN"),
        "oversized": (send(client, {**body, "input": "y" * 3000}), 413, "SERVE_MAX_BODY"),
        "not JSON": (send(client, b"{nope"), 422, "not valid JSON"),
        "no labels": (send(client, {"input": "x"}), 422, "labels"),
        "empty text": (send(client, {"input": "", "labels": {}}), 422, "input"),
        "a field it lacks": (send(client, {**body, "store": 1}), 422, "store"),
        "a made-up model": (send(client, {**body, "model": "nope"}), 404, "no champion"),
    }
    for case, (answer, status, named) in refused.items():
        assert answer.status_code == status, (case, answer.text)
        assert named in answer.json()["error"], (case, answer.text)
    assert stored(settings) == 1  # none of them stored anything


def test_a_correction_no_replica_holds_is_refused_with_503_not_acknowledged(
    redis_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODFACTORY_REDIS_MIN_REPLICAS=1 and a Redis with no replica: the correction is written
    but never acknowledged — 503, to be tried again (its request id stores it once)."""
    monkeypatch.setattr(web_app, "SERVE_PATIENCE", 0.2)  # how long a request waits
    settings = settings_for(
        redis_db, tmp_path / "data", review_token=REVIEW, serve_token=SERVE, redis_min_replicas=1,
        label_columns=("toxicity", "insult"),
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        answer = send(client, {"input": "you zorblax", "labels": {"toxicity": True}})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert "0 of 1 replicas acknowledged it" in answer.json()["error"]
    assert "MODFACTORY_REDIS_MIN_REPLICAS" in answer.json()["error"]


@pytest.mark.parametrize("api", [5], indirect=True)
def test_one_token_is_held_to_its_rate(api) -> None:
    client, _ = api
    answers = [send(client, {"input": f"text {i}", "labels": {}}, token=WEBHOOK) for i in range(8)]
    statuses = [a.status_code for a in answers]
    # at most 5 per token and minute (two minutes may be crossed: at most 10 then)
    assert statuses.count(429) >= 1 and statuses.count(202) <= 10
    limited = next(a for a in answers if a.status_code == 429)
    assert "MODFACTORY_FEEDBACK_RATE" in limited.json()["error"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert send(client, {"input": "other token", "labels": {}}).status_code == 202


def test_the_serve_refuses_a_review_token_shared_with_another() -> None:
    settings = Settings(redis_url="redis://x", review_token=SERVE, serve_token=SERVE)
    with pytest.raises(ValueError, match="MODFACTORY_SERVE_TOKEN and MODFACTORY_REVIEW_TOKEN"):
        create_app(settings)


# --- the retrain corrections start ---------------------------------------------------------
async def test_enough_corrections_start_one_run_and_a_held_back_one_is_recorded_once(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_db, tmp_path / "data", retrain_after_feedback=3, source="synthetic:600"
    )
    producer = await producer_for(settings)
    log = FeedbackLog(producer.redis, settings.queue_name)
    await log.add(correction("one"))
    await log.add(correction("two"))
    assert await retrain_if_due(producer, "moderation") is None  # 2 of 3
    await log.add(correction("three"))
    started = await retrain_if_due(producer, "moderation")
    assert started is not None and started.action == "started" and started.trigger == "feedback"
    run = await producer.run(started.run_id)
    assert run.spec.source_fingerprint.endswith("+feedback:3")
    assert await retrain_if_due(producer, "moderation") is None  # counted from that start
    for text in ("four", "five", "six"):
        await log.add(correction(text))
    held_back = await retrain_if_due(producer, "moderation")
    assert held_back is not None and held_back.action == "skipped"
    assert started.run_id in held_back.reason
    assert await retrain_if_due(producer, "moderation") is None  # recorded once per run
    decisions = [json.loads(d) for d in await producer.redis.lrange("modfactory:schedule", 0, -1)]
    assert [d["action"] for d in decisions] == ["skipped", "started"]
    await producer.redis.aclose()


# --- the command line ------------------------------------------------------------------------
def test_a_file_is_imported_once_a_bad_one_not_at_all_and_listed(
    redis_db: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "MODFACTORY_REDIS_URL": redis_db, "MODFACTORY_DATA_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "modfactory", "feedback", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "you zorb", "labels": ["insult"]}\n{"text": "ok", "labels": []}\n')
    bad = tmp_path / "bad.csv"
    bad.write_text('text,labels\nfine,[]\nworse,"{""spam"": true}"\n')
    first = cli("import", str(good), "--reviewer", "ann", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["stored"] == 2
    again = cli("import", str(good), "--json")
    assert json.loads(again.stdout)["stored"] == 0  # nothing twice
    refused = cli("import", str(bad))
    assert refused.returncode == 2 and "bad.csv:2: field 'labels.spam'" in refused.stderr
    listed = json.loads(cli("list", "--json").stdout)
    assert listed["texts"] == 2 and listed["received"] == 2  # the bad file stored nothing
    assert [(c["text"], c["labels"], c["reviewer"]) for c in listed["corrections"]] == [
        ("ok", [], "ann"),
        ("you zorb", ["insult"], "ann"),
    ]


# --- the review queue ------------------------------------------------------------------------
def item(answer: str, uncertainty: float, *, random: bool = False, age: float = 0):
    from datetime import timedelta

    from modfactory.store.review import ReviewItem

    return ReviewItem(
        id=f"{answer}.0",
        model_name="moderation",
        text=f"text of {answer}",
        scores={"toxicity": 0.5 + uncertainty},
        flags={"toxicity": True},
        champion_run="run-1",
        at=datetime.now(UTC) - timedelta(seconds=age),
        uncertainty=uncertainty,
        random=random,
    )


async def test_the_queue_keeps_the_most_uncertain_and_leases_each_text_to_one_reviewer(
    redis_db: str,
) -> None:
    from modfactory.store.review import ReviewQueue

    client = redis.asyncio.Redis.from_url(redis_db)
    queue = ReviewQueue(client, "t", capacity=4, max_age=60)
    random_pick = item("random", 0.45, random=True)
    await queue.add([item("sure", 0.4), item("unsure", 0.01), random_pick])
    await queue.add([item("middling", 0.2), item("stale", 0.0, age=120)])
    assert await queue.size("moderation") == 4  # "sure" went: the least uncertain
    first = await queue.lease("moderation", 2, 30)
    assert [i.id for i in first] == ["random.0", "unsure.0"]  # stale dropped on the way
    second = await queue.lease("moderation", 5, 30)
    assert [i.id for i in second] == ["middling.0"]  # never a text leased to another
    await queue.release("moderation", "unsure.0")  # skipped: free for the next one
    assert [i.id for i in await queue.lease("moderation", 5, 30)] == ["unsure.0"]
    await queue.remove("moderation", "unsure.0")
    assert await queue.size("moderation") == 2 and await queue.get("moderation", "unsure.0") is None
    await client.aclose()


def test_a_review_text_is_answered_by_its_answer_id_once(api) -> None:
    from modfactory.store.review import ReviewQueue

    client, settings = api

    async def queue_one() -> None:
        r = redis.asyncio.Redis.from_url(settings.redis_url)
        await ReviewQueue(r, settings.queue_name, 10, 3600).add([item("mod-abc", 0.1)])
        await r.aclose()

    asyncio.run(queue_one())
    auth = {"Authorization": f"Bearer {REVIEW}"}
    assert client.get("/v1/review", headers={"Authorization": f"Bearer {SERVE}"}).status_code == 403
    assert client.get("/v1/review").status_code == 401
    assert client.get("/v1/review?limit=0", headers=auth).status_code == 422
    handed = client.get("/v1/review", headers=auth).json()
    assert handed["labels"] == ["toxicity", "insult"] and handed["waiting"] == 1
    [one] = handed["items"]
    assert (one["answer_id"], one["index"], one["text"]) == ("mod-abc", 0, "text of mod-abc")
    assert client.get("/v1/review", headers=auth).json()["items"] == []  # leased
    answer = {"answer_id": "mod-abc", "index": 0, "labels": {"insult": True}}
    assert send(client, answer).status_code == 202
    assert send(client, answer).status_code == 404  # answered: out of the queue
    both = send(client, {**answer, "input": "a text too"})
    assert both.status_code == 422 and "answer_id" in both.json()["error"]
    log = FeedbackLog(redis.asyncio.Redis.from_url(settings.redis_url), settings.queue_name)
    [stored_one] = asyncio.run(log.after("moderation", 0))
    assert (stored_one.text, stored_one.labels, stored_one.via) == (
        "text of mod-abc",
        ["insult"],
        "review",
    )


def test_the_terminal_review_labels_skips_and_quits(redis_db: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from modfactory.store.review import ReviewQueue

    async def queue_three() -> None:
        r = redis.asyncio.Redis.from_url(redis_db)
        queue = ReviewQueue(r, "modfactory", 10, 3600)
        await queue.add([item("a", 0.01), item("b", 0.02), item("c", 0.03), item("d", 0.04)])
        await r.aclose()

    asyncio.run(queue_three())
    env = {**os.environ, "MODFACTORY_REDIS_URL": redis_db, "MODFACTORY_DATA_DIR": str(tmp_path)}
    env["MODFACTORY_LABEL_COLUMNS"] = "toxicity,insult"
    done = subprocess.run(
        [sys.executable, "-m", "modfactory", "review", "--reviewer", "ann", "--json"],
        input="2\nnonsense\n\ns\nq\n",  # a: insult; b: as flagged (toxicity); c: skipped; quit
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"labelled": 2, "skipped": 1, "waiting": 2}
    assert "not understood: 'nonsense'" in done.stderr and "text of a" in done.stderr
    log = FeedbackLog(redis.asyncio.Redis.from_url(redis_db), "modfactory")
    stored_ones = asyncio.run(log.after("moderation", 0))
    assert [(c.text, c.labels, c.reviewer, c.via) for c in stored_ones] == [
        ("text of a", ["insult"], "ann", "review"),
        ("text of b", ["toxicity"], "ann", "review"),
    ]


# --- drift -------------------------------------------------------------------------------------
def test_psi_is_zero_for_the_same_scores_and_large_for_moved_ones() -> None:
    from modfactory.evaluation.drift import psi

    assert psi([10, 20, 30, 40], [1, 2, 3, 4]) == pytest.approx(0.0)
    assert psi([90, 10, 0, 0], [10, 10, 40, 40]) > 1.0
    assert 0 < psi([50, 50], [55, 45]) < 0.05


async def test_a_champions_moved_scores_raise_the_drift_alert_on_metrics(redis_db: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from modfactory.store.drift import DriftLog, WindowCounts
    from modfactory.store.registry import ModelRegistry
    from modfactory.web.monitoring import prometheus_text

    client = redis.asyncio.Redis.from_url(redis_db)
    await ModelRegistry(client, "t").promote("moderation", "run-1", "m-1", "first")
    log = DriftLog(client, "t", window=60)

    def served(scores: list[float]) -> WindowCounts:
        counts = WindowCounts()
        for score in scores:
            counts.add({"toxicity": score, "insult": 0.1}, {"toxicity": score >= 0.5})
        return counts

    await log.add("moderation", "run-1", 1_000, served([0.05] * 90 + [0.9] * 10))
    await log.add("moderation", "run-1", 1_010, served([0.05] * 10))  # the same window
    calm = await prometheus_text(client, "t", 60, 0.2)
    await log.add("moderation", "run-1", 5_000, served([0.05] * 40 + [0.9] * 60))  # later

    def gauges(text: bytes) -> dict[str, dict[tuple, float]]:
        found: dict[str, dict[tuple, float]] = {}
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                key = tuple(sorted(sample.labels.items()))
                found.setdefault(sample.name, {})[key] = sample.value
        return found

    before, after = gauges(calm), gauges(await prometheus_text(client, "t", 60, 0.2))
    alert = (("model_name", "moderation"), ("run_id", "run-1"))
    assert before["modfactory_drift_alert"][alert] == 0  # one window: nothing to compare
    assert after["modfactory_drift_alert"][alert] == 1
    psi_of = {dict(k)["label"]: v for k, v in after["modfactory_drift_psi"].items()}
    assert psi_of["toxicity"] > 0.2 > psi_of["insult"]
    rates = {
        (dict(k)["label"], dict(k)["window"]): v
        for k, v in after["modfactory_drift_flag_rate"].items()
    }
    assert rates[("toxicity", "first")] == pytest.approx(10 / 110)
    assert rates[("toxicity", "latest")] == pytest.approx(0.6)
    await client.aclose()


async def test_corrections_held_back_by_an_unfinished_run_start_one_on_the_next_round(
    redis_db: str, tmp_path: Path
) -> None:
    from modfactory.stages.context import StageContext
    from modfactory.triggers.feedback import feedback_retrain

    settings = settings_for(
        redis_db, tmp_path / "data", retrain_after_feedback=2, source="synthetic:600"
    )
    producer = await producer_for(settings)
    busy = (await producer.submit(producer.spec())).run  # a run under way (no worker here)
    log = FeedbackLog(producer.redis, settings.queue_name)
    await log.add(correction("one"))
    await log.add(correction("two"))
    ctx = {"modfactory": StageContext(settings, producer.store, producer.redis)}
    await feedback_retrain(ctx)
    assert (await producer.runs(5))[0].id == busy.id  # held back
    await producer.store.cancel(busy.id, "done with it")
    await feedback_retrain(ctx)  # the worker's next round
    newest = (await producer.runs(5))[0]
    assert newest.id != busy.id and newest.spec.source_fingerprint.endswith("+feedback:2")
    await feedback_retrain(ctx)
    assert len(await producer.runs(5)) == 2  # one run for those corrections
    await ctx["modfactory"].close()
    await producer.redis.aclose()


async def test_corrections_sent_after_redis_lost_its_data_are_kept_and_count_as_newer(
    redis_db: str, tmp_path: Path
) -> None:
    client = redis.asyncio.Redis.from_url(redis_db)
    log = FeedbackLog(client, "t")
    store = ArtifactStore(tmp_path / "artifacts")
    await log.add(correction("hello", "toxicity"))
    await log.add(correction("other"))
    assert (await all_corrections(store, log, "moderation", compact=True))[1] == 2
    await client.flushdb()  # Redis restarted without persistence
    await log.add(correction("hello"))  # numbered 1 again by a fresh counter
    rows, upto = await all_corrections(store, log, "moderation")
    assert upto == 3 and {r["text"]: r["labels"] for r in rows} == {"hello": [], "other": []}
    await log.add(correction("new"))
    assert await log.count("moderation") == 4  # counting goes on after the snapshot
    rows, upto = await all_corrections(store, log, "moderation", compact=True)
    assert upto == 4 and len(rows) == 3 and await log.after("moderation", 0) == []
    await client.aclose()
