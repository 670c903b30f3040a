"""Reviews that check each other, on a real Redis with the real build stage: every text
handed to two people (MODFACTORY_REVIEW_OVERLAP=1), two reviewers who disagree on a known
ten; their kappa as scikit-learn computes it, the ten held out of the build until settled,
then in the next build with the settled labels."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from helpers import producer_for, settings_for
from modfactory.data.recipe import read_jsonl
from modfactory.evaluation.agreement import MIN_OVERLAPS, cohen_kappa, reviewer_stats
from modfactory.stages.build import build_splits
from modfactory.stages.context import StageContext
from modfactory.store.double_review import DisputeSettled, DoubleReviews
from modfactory.store.review import ReviewItem

pytestmark = pytest.mark.slow  # two builds
LABELS = ["toxicity", "insult"]


def item(n: int) -> ReviewItem:
    return ReviewItem(
        id=f"mod-{n}.0",
        model_name="moderation",
        text=f"double reviewed comment {n}",
        scores={"toxicity": 0.5, "insult": 0.4},
        flags={"toxicity": True, "insult": False},
        champion_run="run-x",
        at=datetime.now(UTC),
        uncertainty=0.01 * n,
    )


def first_answer(n: int) -> list[str]:
    return ["toxicity"] if n % 3 else ["toxicity", "insult"]


def second_answer(n: int) -> list[str]:
    if n < 10:  # the known ten: the second reviewer sees an insult where the first did not
        return sorted(set(first_answer(n)) ^ {"insult"})
    return first_answer(n)


def test_kappa_is_scikit_learns_and_undefined_when_chance_always_agrees() -> None:
    first = [True, True, False, False, True, False, True]
    second = [True, False, False, True, True, False, True]
    assert cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second))
    assert cohen_kappa([True] * 5, [True] * 5) is None
    assert cohen_kappa([], []) is None


async def test_two_reviewers_disagree_on_ten_texts_held_out_until_settled(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(
        redis_db,
        tmp_path / "data",
        review_overlap=1.0,
        feedback_holdout=0.0,  # every correction joins train: easy to find
        source="synthetic:600",
        label_columns=LABELS,
    )
    producer = await producer_for(settings)
    queue = producer.review_queue()
    await queue.add([item(n) for n in range(60)])
    kinds: dict[str, list[str]] = {}
    for reviewer, answer in (("ann", first_answer), ("bob", second_answer)):
        while leased := await queue.lease("moderation", 10, 60, reviewer=reviewer):
            for each in leased:
                n = int(each.id.removeprefix("mod-").split(".")[0])
                done = await producer.answer_review(
                    "moderation", each.id, answer(n), reviewer=reviewer
                )
                assert done is not None
                kinds.setdefault(done[0].kind, []).append(each.text)
    assert len(kinds["first"]) == 60 and len(kinds["agreed"]) == 50
    assert sorted(kinds["disputed"]) == sorted(item(n).text for n in range(10))
    assert await queue.size("moderation") == 0
    assert await queue.lease("moderation", 10, 60, reviewer="ann") == []

    reviews = DoubleReviews(producer.redis, settings.queue_name)
    pairs = await reviews.pairs("moderation")
    stats = {s.name: s for s in reviewer_stats(pairs, await reviews.counts("moderation"), LABELS)}
    assert stats["ann"].answered == stats["bob"].answered == 60
    assert stats["ann"].overlaps == 60 >= MIN_OVERLAPS
    for label in LABELS:
        ann = [label in p.first_labels for p in pairs]  # ann answered first every time
        bob = [label in p.second_labels for p in pairs]
        expected = cohen_kappa_score(ann, bob) if len(set(ann) | set(bob)) > 1 else None
        for name in ("ann", "bob"):
            if expected is None:
                assert stats[name].kappa[label] is None
            else:
                assert stats[name].kappa[label] == pytest.approx(expected)
    assert stats["ann"].kappa_text("insult") != "not enough"

    disputed = {item(n).text for n in range(10)}
    sc = StageContext(settings, producer.store, producer.redis)
    trained = await _build(producer, sc)
    assert not disputed & set(trained)  # held out until settled
    assert {item(n).text for n in range(10, 60)} <= set(trained)

    open_ = [d for d in await reviews.disputes("moderation") if d.open]
    assert len(open_) == 10
    for dispute in open_:
        await producer.settle_dispute("moderation", dispute.item_id, ["insult"])
    with pytest.raises(DisputeSettled, match="settled by"):
        await producer.settle_dispute("moderation", open_[0].item_id, [])
    trained = await _build(producer, sc)
    for text in disputed:  # in the next build, with the settled label
        assert trained[text] == ["insult"]
    entries = await producer.audit.read(sc.artifacts, action="review.adjudicate")
    assert len(entries) == 10
    await sc.close()
    await producer.redis.aclose()


async def _build(producer, sc: StageContext) -> dict[str, list[str]]:
    """A new run's build: its train split's corrected texts and their labels."""
    spec = producer.spec(model_name="moderation")
    run = await producer.store.create(spec, exclusive=False)
    await build_splits(sc, run)
    run = await producer.store.get(run.id)
    rows = read_jsonl(sc.artifacts.local_copy(run.artifacts.train_file, sc.settings.data_dir))
    return {
        r["text"]: [label for label in r["labels"]["moderation"] if label != "safe"]
        for r in rows
        if r["text"].startswith("double reviewed")
    }
