"""Serving the champion: `modfactory serve` answers Mistral's moderation and classifier
APIs with the champion of a model name, and follows promotions without a failed request.

Two local models are trained once for the module by a real worker (real redis-server,
real uvicorn); the real ``mistralai`` SDK talks to the server over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    producer_for,
    serve_process,
    settings_env,
    settings_for,
    wait_until,
    worker_process,
)
from mistral_emulator import MistralEmulator, trained_model
from modfactory.artifacts import ArtifactStore
from modfactory.backends.local import LocalBackend
from modfactory.backends.mistral import MistralBackend
from modfactory.serving.batching import MicroBatcher
from modfactory.settings import Settings
from modfactory.store.embedded_redis import free_port
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import RunSpec, RunState
from modfactory.values import DatasetSummary, RecipeParams

# serve, worker and trained champions; one xdist process runs the module (one fixture)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]

TOKEN = "serve-test-token-0123456789abcdef0123"
TEXTS = [
    "you are a stupid idiot and everyone hates you",
    "the council met on tuesday to discuss the budget",
    "shut up, moron",
]


@dataclass
class Deployment:
    settings: Settings
    url: str
    runs: list[str]  # the two trained runs, oldest first
    log: Path

    def champion(self) -> str:
        record = asyncio.run(_record(self.settings))
        assert record.champion is not None
        return record.champion.run_id

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modfactory", *args],
            env={**os.environ, **settings_env(self.settings)},
            capture_output=True,
            text=True,
            timeout=60,
        )


async def _record(settings: Settings):
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        return await ModelRegistry(client, settings.queue_name).get(settings.model_name)
    finally:
        await client.aclose()


async def _train_two(settings: Settings) -> list[str]:
    producer = await producer_for(settings)
    runs = []
    for seed in (1, 2):  # two data sets drawn differently: two different models
        spec = producer.spec(source="synthetic:3000", seed=seed)
        run = (await producer.submit(spec)).run
        final = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
        assert final.state == RunState.SUCCEEDED, final.error
        runs.append(run.id)
    await producer.redis.aclose()
    return runs


@pytest.fixture(scope="module")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    url = f"{redis_url}/7"  # this module's own database (the others flush /0)
    redis.Redis.from_url(url).flushdb()
    work = tmp_path_factory.mktemp("serving")
    settings = settings_for(url, work / "data", serve_refresh_interval=0.5)
    with worker_process(settings, work / "worker.log"):
        runs = asyncio.run(_train_two(settings))
    log = work / "serve.log"
    with serve_process(settings, log, MODFACTORY_SERVE_TOKEN=TOKEN) as (_, served):
        yield Deployment(settings, served, runs, log)
    assert TOKEN not in log.read_text()  # never logged
    redis.Redis.from_url(url).flushdb()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expected_scores(deployment: Deployment, run_id: str, texts: list[str]) -> list[dict]:
    """What the champion's model gives these texts, scored in this process."""

    async def score() -> list[dict]:
        client = redis.asyncio.Redis.from_url(deployment.settings.redis_url)
        from modfactory.store.runs import RunStore

        run = await RunStore(client, deployment.settings.queue_name).get(run_id)
        await client.aclose()
        results = await LocalBackend(ArtifactStore.from_settings(deployment.settings)).classify(
            run.artifacts.model_id, texts
        )
        return [r["moderation"]["scores"] for r in results], run

    return asyncio.run(score())


def test_the_mistral_sdk_gets_the_champions_answers(deployment: Deployment) -> None:
    """``classifiers.moderate`` and ``classifiers.classify`` of the real SDK, pointed at
    modfactory: the champion's scores, flags at the thresholds tuned on validation."""
    from mistralai.client import Mistral

    champion = deployment.champion()
    expected, run = expected_scores(deployment, champion, TEXTS)
    client = Mistral(api_key=TOKEN, server_url=deployment.url)

    moderated = client.classifiers.moderate(model="moderation", inputs=TEXTS)
    assert moderated.model == "moderation" and len(moderated.results) == len(TEXTS)
    tuned = {k: v.tuned_threshold for k, v in run.metrics.labels.items()}
    assert set(tuned) == set(run.dataset.labels) and "safe" not in tuned
    for result, scores in zip(moderated.results, expected, strict=True):
        wanted = {label: scores[label] for label in tuned}  # the moderation labels
        assert result.category_scores == pytest.approx(wanted, abs=1e-9)
        assert result.categories == {label: scores[label] >= tuned[label] for label in tuned}
    assert any(any(r.categories.values()) for r in moderated.results)  # something flagged

    classified = client.classifiers.classify(model="moderation", inputs=TEXTS[0])
    assert len(classified.results) == 1
    assert classified.results[0]["moderation"].scores == pytest.approx(expected[0], abs=1e-9)

    answer = httpx.post(f"{deployment.url}/v1/moderations", json={"input": "hello"}, headers=auth())
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-modfactory-champion-run"] == champion
    assert answer.json()["champion"] == {"run_id": champion, "model_id": run.artifacts.model_id}


def test_the_openai_sdk_and_the_mistral_sdk_read_one_serve_alike(deployment: Deployment) -> None:
    """OpenAI's SDK pointed at ``serve`` gets its own ``ModerationCreateResponse`` — ``flagged``
    when any label is, at the tuned thresholds —, for one text or a list, and its own
    exceptions for a wrong token or an unknown model; Mistral's SDK reads the same answers."""
    import openai
    from mistralai.client import Mistral
    from mistralai.client.errors import SDKError
    from openai.types import ModerationCreateResponse

    champion = deployment.champion()
    expected, run = expected_scores(deployment, champion, TEXTS)
    tuned = {k: v.tuned_threshold for k, v in run.metrics.labels.items()}
    client = openai.OpenAI(base_url=f"{deployment.url}/v1", api_key=TOKEN, max_retries=0)
    listed = client.moderations.create(model="moderation", input=TEXTS)
    assert isinstance(listed, ModerationCreateResponse) and listed.model == "moderation"
    mistral = Mistral(api_key=TOKEN, server_url=deployment.url)
    theirs = mistral.classifiers.moderate(model="moderation", inputs=TEXTS).results
    for ours, other, scores in zip(listed.results, theirs, expected, strict=True):
        flags = {label: scores[label] >= tuned[label] for label in tuned}
        assert ours.flagged is any(flags.values())
        assert ours.categories.to_dict() == flags == other.categories
        assert ours.category_scores.to_dict() == pytest.approx(
            {label: scores[label] for label in tuned}, abs=1e-9
        )
    assert any(r.flagged for r in listed.results) and not all(r.flagged for r in listed.results)
    one = client.moderations.create(model="moderation", input=TEXTS[0])
    assert len(one.results) == 1 and one.results[0].flagged is listed.results[0].flagged

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{deployment.url}/v1", api_key="not-a-token", max_retries=0
        ).moderations.create(input="hello")
    with pytest.raises(openai.NotFoundError, match="nobody"):
        client.moderations.create(model="nobody", input="hello")
    with pytest.raises(SDKError) as refused:
        Mistral(api_key="not-a-token", server_url=deployment.url).classifiers.moderate(
            model="moderation", inputs=["hello"]
        )
    assert refused.value.status_code == 401
    with pytest.raises(SDKError) as unknown:
        mistral.classifiers.moderate(model="nobody", inputs=["hello"])
    assert unknown.value.status_code == 404


async def test_a_promotion_is_served_within_5_s_and_no_request_fails(
    deployment: Deployment,
) -> None:
    """Four clients send requests without pause while another process promotes the other
    run, then rolls back: every request succeeds, and the answers follow within 5 s."""
    before = await asyncio.to_thread(deployment.champion)
    after = next(r for r in deployment.runs if r != before)
    answers: list[tuple[float, int, str | None]] = []
    by_client: list[list[str | None]] = [[] for _ in range(4)]
    stop = asyncio.Event()

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=deployment.url, headers=auth(), timeout=30) as http:
            while not stop.is_set():
                r = await http.post("/v1/moderations", json={"input": TEXTS})
                champion = r.headers.get("x-modfactory-champion-run")
                answers.append((time.monotonic(), r.status_code, champion))
                by_client[number].append(champion)

    async def switch(command: list[str], to: str) -> float:
        done = await asyncio.to_thread(deployment.cli, *command)
        assert done.returncode == 0, done.stderr
        switched_at = time.monotonic()
        deadline = switched_at + 10
        while not any(t > switched_at and run == to for t, _, run in answers):
            assert time.monotonic() < deadline, f"still served by the old champion: {answers[-1]}"
            await asyncio.sleep(0.05)
        first = min(t for t, _, run in answers if run == to and t > switched_at - 5)
        return first - switched_at

    async def every_client_answered(after: float) -> None:
        deadline = time.monotonic() + 30
        while not all(len(a) > after for a in by_client):
            assert time.monotonic() < deadline, "a client got no answer"
            await asyncio.sleep(0.05)

    clients = [asyncio.create_task(client(n)) for n in range(4)]
    await every_client_answered(after=2)  # all four are sending
    promoted_in = await switch(["promote", after, "--force"], after)
    rolled_back_in = await switch(["rollback"], before)
    await every_client_answered(after=max(map(len, by_client)) + 2)  # each saw the rollback
    stop.set()
    await asyncio.gather(*clients)

    assert promoted_in < 5 and rolled_back_in < 5
    assert [s for _, s, _ in answers if s != 200] == []  # no request failed
    assert len(answers) > 50
    for served in by_client:  # one client's requests, one after the other
        flips = [b for a, b in itertools.pairwise(served) if a != b]
        assert flips == [after, before], "each switch happens once, never back and forth"


SERVE_URL = "/v1/moderations"


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("no token", 401, "Bearer <an account's token or MODFACTORY_SERVE_TOKEN>"),
        ("wrong token", 401, "token is not an account's token or MODFACTORY_SERVE_TOKEN"),
        ("not JSON", 422, "body is not valid JSON"),
        ("no input", 422, "body field 'input': Field required"),
        ("an unknown field", 422, "body field 'inputs': Extra inputs are not permitted"),
        ("an empty list", 422, "body field 'input': give at least one text"),
        ("a number for a text", 422, "body field 'input"),
        ("too many texts", 422, "at most 128 per request (MODFACTORY_SERVE_MAX_INPUTS)"),
        ("a text too long", 422, "body field 'input.1': 20,001 characters; at most 20,000"),
        ("an unknown model name", 404, "model 'nobody' has no champion yet"),
        ("a bad model name", 422, "body field 'model'"),
        ("an oversized body", 413, "(MODFACTORY_SERVE_MAX_BODY)"),
    ],
)
def test_a_bad_request_is_refused_with_a_json_reason(
    deployment: Deployment, case: str, status: int, message: str
) -> None:
    body: object = {"input": "hello"}
    headers = auth()
    content = None
    if case == "no token":
        headers = {}
    elif case == "wrong token":
        headers = auth("x" * 40)
    elif case == "not JSON":
        content = b'{"input": "a",}'
    elif case == "no input":
        body = {"model": "moderation"}
    elif case == "an unknown field":
        body = {"input": "a", "inputs": ["a"]}
    elif case == "an empty list":
        body = {"input": []}
    elif case == "a number for a text":
        body = {"input": ["a", 3]}
    elif case == "too many texts":
        body = {"input": ["a"] * 129}
    elif case == "a text too long":
        body = {"input": ["a", "b" * 20_001]}
    elif case == "an unknown model name":
        body = {"model": "nobody", "input": "a"}
    elif case == "a bad model name":
        body = {"model": "../../etc", "input": "a"}
    elif case == "an oversized body":
        content = b'{"input": "' + b"a" * 3_000_000 + b'"}'
    answer = httpx.post(
        deployment.url + SERVE_URL,
        json=None if content else body,
        content=content,
        headers={**headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]


def test_metrics_count_requests_texts_flags_and_latency(deployment: Deployment) -> None:
    for _ in range(3):
        httpx.post(deployment.url + SERVE_URL, json={"input": TEXTS}, headers=auth())
    httpx.post(deployment.url + SERVE_URL, json={"input": []}, headers=auth())
    text = httpx.get(f"{deployment.url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("modfactory_serve_requests_total", endpoint="moderations", status="200") >= 3
    assert value("modfactory_serve_requests_total", endpoint="moderations", status="422") >= 1
    texts = value("modfactory_serve_texts_total", model_name="moderation")
    assert texts >= 9
    flagged = [v for (name, _), v in samples.items() if name == "modfactory_serve_flagged_total"]
    assert flagged and sum(flagged) > 0
    count = value("modfactory_serve_request_seconds_count", endpoint="moderations")
    assert count >= 4
    champion = deployment.champion()
    assert any(
        name == "modfactory_serve_champion" and dict(labels)["run_id"] == champion and v == 1
        for (name, labels), v in samples.items()
    )


async def test_concurrent_requests_are_scored_in_few_calls_and_each_gets_its_own() -> None:
    calls: list[list[str]] = []

    async def score(texts: list[str]) -> list[str]:
        calls.append(texts)
        await asyncio.sleep(0.01)
        return [t.upper() for t in texts]

    batcher = MicroBatcher(score, max_batch=64)
    asked = [[f"t{i}-{j}" for j in range(i % 3 + 1)] for i in range(60)]
    answers = await asyncio.gather(*(batcher.score(texts) for texts in asked))
    assert answers == [[t.upper() for t in texts] for texts in asked]
    assert len(calls) < 10 and max(map(len, calls)) <= 64

    async def broken(texts: list[str]) -> list[str]:
        raise RuntimeError("scorer down")

    failing = MicroBatcher(broken)
    results = await asyncio.gather(
        *(failing.score(["a"]) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await batcher.score(["again"]) == ["AGAIN"]  # a batcher drained is ready again


async def test_a_mistral_champion_is_served_through_the_api_and_503_when_mistral_is_away(
    redis_url: str, tmp_path: Path
) -> None:
    """A champion trained by Mistral answers through ``classifiers.classify`` with its
    fine-tuned model id; Mistral unreachable gives a 503 naming it."""
    url = f"{redis_url}/8"
    redis.Redis.from_url(url).flushdb()
    key = "mistral-test-key-0123456789abcdef"
    with MistralEmulator(api_key=key) as emulator:
        settings = settings_for(
            url,
            tmp_path / "data",
            mistral_api_key=key,
            mistral_server_url=emulator.url,
            mistral_max_retries=1,
        )
        backend = MistralBackend(settings)
        model_id = await trained_model(backend, tmp_path)
        await backend.close()
        producer = await producer_for(settings)
        store = producer.store
        run = await store.create(RunSpec(source="x", backend="mistral", recipe=RecipeParams()))
        summary = DatasetSummary(
            source="x", synthetic=True, labels=["insult", "toxicity"], dropped_labels=[], splits={}
        )
        for stage in ("build", "upload", "train"):
            await store.start_stage(run.id, stage)
            await store.finish_stage(
                run.id, stage, artifacts={"model_id": model_id}, dataset=summary
            )
        await producer.registry.promote("moderation", run.id, model_id, "test")
        with serve_process(settings, tmp_path / "serve.log", MODFACTORY_SERVE_TOKEN=TOKEN) as (
            _,
            served,
        ):
            from mistralai.client import Mistral

            client = Mistral(api_key=TOKEN, server_url=served)
            answer = client.classifiers.moderate(model="moderation", inputs=TEXTS[:2])
            expected = emulator.classify(model_id, TEXTS[:2])
            for result, wanted in zip(answer.results, expected, strict=True):
                scores = {k: wanted["moderation"]["scores"][k] for k in ("insult", "toxicity")}
                assert result.category_scores == pytest.approx(scores)
                assert result.categories == {k: v > 0.5 for k, v in scores.items()}  # untuned
            assert emulator.counts["classify_requests"] >= 1
    away = settings.model_copy(update={"mistral_server_url": f"http://127.0.0.1:{free_port()}"})
    with serve_process(away, tmp_path / "serve.log", MODFACTORY_SERVE_TOKEN=TOKEN) as (_, served):
        answer = httpx.post(
            f"{served}/v1/moderations", json={"input": "hello"}, headers=auth(), timeout=60
        )
    assert answer.status_code == 503, answer.text
    assert "the mistral backend is unreachable" in answer.json()["error"]
    assert key not in (tmp_path / "serve.log").read_text()
    await producer.redis.aclose()


def test_classify_scores_texts_and_files_as_the_service_does(
    deployment: Deployment, tmp_path: Path
) -> None:
    """``modfactory classify``: texts or a file (JSONL / CSV / parquet) in, the champion's
    (or ``--run``'s) scores and flags out — the same numbers the service answers."""
    import json

    import pyarrow.parquet as pq

    champion = deployment.champion()
    done = deployment.cli("classify", *TEXTS, "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["champion"]["run_id"] == champion
    served = httpx.post(deployment.url + SERVE_URL, json={"input": TEXTS}, headers=auth())
    for row, answer in zip(printed["results"], served.json()["results"], strict=True):
        assert row["category_scores"] == pytest.approx(answer["category_scores"], abs=1e-9)
        assert row["categories"] == answer["categories"]

    source = tmp_path / "comments.csv"
    source.write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS * 100)))
    scored = tmp_path / "scored.parquet"
    done = deployment.cli(
        "classify", "--input", str(source), "--text-column", "body", "-o", str(scored)
    )
    assert done.returncode == 0, done.stderr
    table = pq.read_table(scored).to_pylist()
    assert len(table) == 300 and table[0]["text"] == TEXTS[0]
    label = next(iter(printed["thresholds"]))
    assert table[0][f"{label}_score"] == pytest.approx(
        printed["results"][0]["category_scores"][label]
    )
    assert f"300 texts scored by {champion}" in done.stderr

    other = next(r for r in deployment.runs if r != champion)
    done = deployment.cli("classify", TEXTS[0], "--run", other, "--json")
    assert json.loads(done.stdout)["champion"]["run_id"] == other
    expected, _ = expected_scores(deployment, other, TEXTS[:1])
    shown = json.loads(done.stdout)["results"][0]["category_scores"]
    assert shown == pytest.approx({k: expected[0][k] for k in shown}, abs=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give texts to score, or --input FILE (not both)"),
        (("text", "--input", "{dir}/a.jsonl"), "give texts to score, or --input FILE (not both)"),
        (("--input", "{dir}/missing.jsonl"), "missing.jsonl: no such file"),
        (("--input", "{dir}/bad.jsonl"), "bad.jsonl, line 2: no 'text' field"),
        (("--input", "{dir}/a.txt"), "a.txt: unknown format '.txt'; use .jsonl, .csv or .parquet"),
        (("x", "--output", "{dir}/out.xlsx"), "out.xlsx: unknown format '.xlsx'"),
        (("-i", "{dir}/bad.jsonl", "-o", "{dir}/out.parquet"), "bad.jsonl, row 2: 'text' is empty"),
        (("-i", "{dir}/missing.jsonl", "-o", "{dir}/out.jsonl"), "missing.jsonl: no such file"),
        (("x", "--model", "nobody"), "model 'nobody' has no champion yet"),
        (("x", "--run", "run-nope"), "run-nope"),
    ],
)
def test_classify_refuses_bad_input_in_one_line(
    deployment: Deployment, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    (tmp_path / "a.txt").write_text("a\n")
    done = deployment.cli("classify", *(a.format(dir=tmp_path) for a in args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]  # no output


async def test_shadowing_records_how_the_newest_candidate_agrees_with_the_champion(
    deployment: Deployment, tmp_path: Path
) -> None:
    """MODFACTORY_SHADOW: every request served is scored again by the newest candidate
    after the answer; the per-label agreement of the flags reaches /metrics and
    ``modfactory models``, and equals the two models' agreement computed here."""
    import json

    record = await _record(deployment.settings)
    if not record.candidates:  # this test alone: make the other run a candidate
        other = next(r for r in deployment.runs if r != record.champion.run_id)
        for command in (["promote", other, "--force"], ["rollback"]):
            assert (await asyncio.to_thread(deployment.cli, *command)).returncode == 0
        record = await _record(deployment.settings)
    champion, candidate = record.champion.run_id, list(record.candidates)[-1]
    await redis.asyncio.Redis.from_url(deployment.settings.redis_url).delete(
        f"{deployment.settings.queue_name}:shadow"
    )

    def flags(run_id: str) -> list[dict[str, bool]]:
        scores, run = expected_scores(deployment, run_id, TEXTS)
        cut = {k: v.tuned_threshold for k, v in run.metrics.labels.items()}
        return [{k: s[k] >= cut[k] for k in cut} for s in scores]

    mine, theirs = (
        await asyncio.to_thread(flags, champion),
        await asyncio.to_thread(flags, candidate),
    )
    expected = {
        label: sum(a[label] == b[label] for a, b in zip(mine, theirs, strict=True)) / len(TEXTS)
        for label in mine[0]
    }

    env = {"MODFACTORY_SERVE_TOKEN": TOKEN, "MODFACTORY_SHADOW": "moderation"}
    with serve_process(deployment.settings, tmp_path / "serve.log", **env) as (_, url):
        async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=30) as http:
            for _ in range(20):
                answer = await http.post("/v1/moderations", json={"input": TEXTS})
                assert answer.headers["x-modfactory-champion-run"] == champion
            for _ in range(100):
                families = {
                    f.name: f
                    for f in text_string_to_metric_families((await http.get("/metrics")).text)
                }
                shadowed = [s for s in families["modfactory_shadow_texts"].samples]
                if shadowed and shadowed[0].value >= 30:
                    break
                await asyncio.sleep(0.1)
    assert shadowed[0].labels == {
        "model_name": "moderation",
        "champion": champion,
        "candidate": candidate,
    }
    assert shadowed[0].value % len(TEXTS) == 0
    shown = {s.labels["label"]: s.value for s in families["modfactory_shadow_agreement"].samples}
    assert shown == pytest.approx(expected)

    listed = json.loads((await asyncio.to_thread(deployment.cli, "models", "--json")).stdout)
    tally = next(m for m in listed if m["name"] == "moderation")["shadow"][0]
    assert (tally["champion"], tally["candidate"]) == (champion, candidate)
    human = await asyncio.to_thread(deployment.cli, "models")
    assert f"shadow: {candidate} vs champion {champion}" in human.stdout


def _proxy(listen: int, target: int) -> subprocess.Popen:
    """tests/tcp_proxy.py from ``listen`` to ``target``, once it accepts connections."""
    import socket

    proxy = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "tcp_proxy.py"), str(listen), str(target)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", listen)) == 0:
                return proxy
        assert proxy.poll() is None and time.monotonic() < deadline, "the proxy did not start"
        time.sleep(0.05)


def test_serve_answers_from_the_champion_it_holds_while_redis_is_away(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A `serve` whose Redis goes away (its only path to it cut) keeps answering moderation
    requests from the champion it holds — counters and review offers may wait, never the
    answer — and goes on once Redis is back."""
    redis_port = int(deployment.settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    proxy = _proxy(port, redis_port)
    settings = deployment.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/7"})
    log = tmp_path / "serve.log"
    with (
        serve_process(settings, log, MODFACTORY_SERVE_TOKEN=TOKEN) as (_, url),
        httpx.Client(base_url=url, headers=auth(), timeout=30) as http,
    ):
        first = http.post("/v1/moderations", json={"input": TEXTS})
        assert first.status_code == 200  # the champion is loaded and held now
        champion = first.headers["x-modfactory-champion-run"]
        proxy.kill()
        proxy.wait(10)
        assert http.get("/healthz").json()["redis"].startswith("unreachable")
        away = [http.post("/v1/moderations", json={"input": TEXTS}) for _ in range(20)]
        away += [http.post("/v1/classifications", json={"input": TEXTS}) for _ in range(5)]
        assert [r.status_code for r in away] == [200] * 25, away[-1].text
        assert {r.headers["x-modfactory-champion-run"] for r in away} == {champion}
        assert away[0].json()["results"] == first.json()["results"]
        proxy = _proxy(port, redis_port)
        back = http.post("/v1/moderations", json={"input": TEXTS})
        assert back.status_code == 200
        deadline = time.monotonic() + 30
        while http.get("/healthz").json()["redis"] != "ok":  # reconnects on its own
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
    proxy.kill()
    proxy.wait(10)
