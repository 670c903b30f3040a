"""The human loop end to end, with a real Redis, a real worker and a real ``serve``: a
champion trained without a made-up word does not flag it; moderators' corrections sent to
``POST /v1/feedback`` start a retrain by themselves once there are enough; the new model
wins on the live test set, is promoted, and the server flags the word."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

import httpx
import pytest

from helpers import producer_for, serve_process, settings_for, wait_until, worker_process
from modfactory.store.run import RunState

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("feedback_loop")]

SERVE = "serve-token-0123456789abcdef0123456789ab"
REVIEW = "review-token-0123456789abcdef0123456789"
WORD = "zorblax"  # in no synthetic comment
NEUTRAL = [  # words of the synthetic comments that flag nothing
    "the", "council", "meeting", "about", "new", "budget", "was", "long", "but", "vote",
    "went", "through", "and", "thanks", "for", "sharing", "this", "story", "my", "family",
]  # fmt: skip
CORRECTIONS = 300


def corrections(seed: int = 0) -> list[dict]:
    """Two thirds: the new word in a neutral comment, toxic and insulting; a third: neutral
    comments, flagged by nothing (as a moderator would correct false alarms)."""
    rng = random.Random(seed)
    bodies = []
    for i in range(CORRECTIONS):
        words = rng.choices(NEUTRAL, k=rng.randint(5, 15))
        toxic = i % 3 != 2
        if toxic:
            words.insert(rng.randint(0, len(words)), WORD)
        bodies.append(
            {
                "input": f"{' '.join(words)} #{i}",
                "labels": {"toxicity": toxic, "insult": toxic},
                "request_id": f"correction-{i}",
                "reviewer": "moderator-1",
            }
        )
    rng.shuffle(bodies)
    return bodies


def flags(url: str, text: str) -> tuple[dict[str, bool], str]:
    answer = httpx.post(
        f"{url}/v1/moderations",
        json={"input": text},
        headers={"Authorization": f"Bearer {SERVE}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["results"][0]["categories"], answer.headers["x-modfactory-champion-run"]


async def test_corrections_retrain_and_the_new_champion_flags_the_new_word(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        source="synthetic:3000",
        retrain_after_feedback=CORRECTIONS,
        promotion_margin=0.05,
        review_sample=1.0,  # the source test may lose a little (here 0.017)
        serve_refresh_interval=0.5,
    )
    producer = await producer_for(settings)
    tokens = {"MODFACTORY_SERVE_TOKEN": SERVE, "MODFACTORY_REVIEW_TOKEN": REVIEW}
    fresh = f"the vote went through you {WORD} and the meeting was long"
    with (
        worker_process(settings, tmp_path / "worker.log"),
        serve_process(settings, tmp_path / "serve.log", **tokens) as (_, url),
    ):
        first = (await producer.submit(producer.spec())).run
        first = await wait_until(producer.store, first.id, lambda r: r.state.terminal)
        assert first.state == RunState.SUCCEEDED, first.error
        categories, served_by = await asyncio.to_thread(flags, url, fresh)
        assert served_by == first.id
        assert not categories["toxicity"] and not categories["insult"]  # never saw the word

        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {REVIEW}"}, timeout=30
        ) as client:
            sent = corrections()
            for start in range(0, len(sent), 20):  # 20 in flight at a time
                batch = sent[start : start + 20]
                answers = await asyncio.gather(
                    *(client.post("/v1/feedback", json=b) for b in batch)
                )
                assert all(a.status_code == 202 for a in answers), answers[-1].text
            retried = await client.post("/v1/feedback", json=sent[0])  # a retry: stored once
            assert retried.status_code == 202 and retried.json()["stored"] is False

        async def retrained() -> str:
            while (runs := await producer.runs(5)) and runs[0].id == first.id:
                await asyncio.sleep(0.2)
            return runs[0].id

        second_id = await asyncio.wait_for(retrained(), 60)  # started by the corrections
        second = await wait_until(producer.store, second_id, lambda r: r.state.terminal)
        assert second.state == RunState.SUCCEEDED, second.error
        used = second.dataset.feedback
        assert used is not None and used.rows == CORRECTIONS and used.upto_seq == CORRECTIONS
        assert used.live_rows > 0 and used.train_rows + used.live_rows == CORRECTIONS
        decision = second.metrics.promotion
        assert decision.promoted, decision.reason
        assert decision.reason.startswith("live test set:")
        assert second.metrics.live is not None and second.metrics.live.rows == used.live_rows
        assert decision.live_challenger > decision.live_champion
        measured = second.metrics.live.baselines["champion"]  # shown beside it, kept
        assert measured.run_id == first.id
        assert measured.value(decision.metric) == decision.live_champion

        deadline = asyncio.get_running_loop().time() + 30
        while (await asyncio.to_thread(flags, url, fresh))[1] != second_id:
            assert asyncio.get_running_loop().time() < deadline, "the new champion is not served"
            await asyncio.sleep(0.2)
        categories, _ = await asyncio.to_thread(flags, url, fresh)
        assert categories["toxicity"] and categories["insult"]

        # the review queue: a text the request let the server keep is handed out to review
        # and answered by its answer id; one sent with "store": false is kept nowhere
        private = f"private words {uuid.uuid4().hex}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            serve, review = ({"Authorization": f"Bearer {token}"} for token in (SERVE, REVIEW))
            hidden = {"input": private, "store": False}
            assert (await client.post("/v1/moderations", json=hidden, headers=serve)).is_success
            kept = await client.post("/v1/moderations", json={"input": fresh}, headers=serve)
            deadline = asyncio.get_running_loop().time() + 10
            while not (handed := (await client.get("/v1/review", headers=review)).json()["items"]):
                assert asyncio.get_running_loop().time() < deadline, "nothing to review"
                await asyncio.sleep(0.1)
            [item] = [i for i in handed if i["answer_id"] == kept.json()["id"]]
            assert item["text"] == fresh and item["champion_run"] == second_id
            answer = {"answer_id": item["answer_id"], "index": 0, "labels": {"toxicity": True}}
            answered = await client.post("/v1/feedback", json=answer, headers=review)
            assert answered.status_code == 202, answered.text
            # what the new champion serves is counted for drift, on /metrics
            drift = (
                'modfactory_drift_flag_rate{label="toxicity",model_name="moderation",'
                f'run_id="{second_id}",window="first"}}'
            )
            deadline = asyncio.get_running_loop().time() + 10
            while drift not in (await client.get("/metrics")).text:
                assert asyncio.get_running_loop().time() < deadline, "no drift counts"
                await asyncio.sleep(0.1)
        assert await redis_holds(producer.redis, fresh)  # the search finds what is there…
        assert not await redis_holds(producer.redis, private)  # …and no trace of this one
        assert not any(private.encode() in f.read_bytes() for f in files(tmp_path))
    await producer.redis.aclose()


def files(root: Path) -> list[Path]:
    return [f for f in root.rglob("*") if f.is_file()]


async def redis_holds(client, needle: str) -> bool:
    """Does any key or value of this Redis database contain ``needle``?"""
    wanted = needle.encode()
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        if kind == "string":
            values = [await client.get(key)]
        elif kind == "hash":
            values = [v for pair in (await client.hgetall(key)).items() for v in pair]
        elif kind == "zset":
            values = await client.zrange(key, 0, -1)
        elif kind == "list":
            values = await client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(await client.smembers(key))
        else:
            values = [str(await client.xrange(key)).encode()] if kind == "stream" else []
        if wanted in key or any(wanted in (v or b"") for v in values):
            return True
    return False
