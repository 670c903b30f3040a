"""Champion / challenger: measured on the same test file, promoted only when better."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from modfactory.artifacts import ArtifactStore
from modfactory.backends.base import Backend
from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.stages.context import StageContext
from modfactory.stages.pipeline import JOBS
from modfactory.store import queue
from modfactory.store.audit import Actor
from modfactory.store.registry import RegistryError
from modfactory.store.run import RunSpec, RunStateError
from modfactory.values import DatasetSummary, RecipeParams

evaluate = JOBS["evaluate"]

QUALITY = {"ft:a": 0.3, "ft:worse": 0.05, "ft:better": 0.8, "ft:best": 0.95, "ft:top": 0.99}


class ModelsOfKnownQuality(Backend):
    """Classifies with a score that is ``quality * truth + (1 - quality) * noise``."""

    name = "local"
    base_model = "known"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def hyperparameters(self, overrides):
        return overrides

    async def classify(self, model: str, inputs: list[str]) -> list:
        self.calls[model] = self.calls.get(model, 0) + len(inputs)
        out = []
        for text in inputs:
            noise = random.Random(f"{model}/{text}").random()
            truth = 1.0 if text.startswith("pos") else 0.0
            score = QUALITY[model] * truth + (1 - QUALITY[model]) * noise
            out.append({"moderation": {"scores": {"insult": score}}})
        return out

    upload_file = create_job = get_job = start_job = cancel_job = None  # not used here


class RemoteModelsOfKnownQuality(ModelsOfKnownQuality):
    """The same models, as if trained at another backend."""

    name = "mistral"


async def finished_training(
    producer: Producer, tmp_path: Path, model_id: str, backend: str = "local"
) -> str:
    """A run whose build, upload and train are done, with its own test file."""
    store = producer.store
    run = await store.create(RunSpec(source="synthetic", backend=backend, recipe=RecipeParams()))
    files = {}
    for split in ("validation", "test"):
        path = tmp_path / f"{run.id}-{split}.jsonl"
        rows = [("pos", "insult")] * 40 + [("neg", "safe")] * 160
        path.write_text(
            "".join(
                json.dumps({"text": f"{t} {split} {i}", "labels": {"moderation": [lbl]}}) + "\n"
                for i, (t, lbl) in enumerate(rows)
            )
        )
        files[f"{split}_file"] = str(path)
    summary = DatasetSummary(
        source="x", synthetic=True, labels=["insult"], dropped_labels=[], splits={}
    )
    for stage in ("build", "upload", "train"):
        await store.start_stage(run.id, stage)
        await store.finish_stage(
            run.id, stage, artifacts={**files, "model_id": model_id}, dataset=summary
        )
    return run.id


async def promotion_setup(redis_db: str, tmp_path: Path):
    settings = Settings(redis_url=redis_db, data_dir=tmp_path)
    pool = await queue.open_pool(redis_db, "modfactory")
    producer = Producer(pool, settings)
    backend = ModelsOfKnownQuality()
    ctx = {"modfactory": StageContext(settings, producer.store, pool, backends={"local": backend})}
    return pool, producer, backend, ctx


async def test_a_worse_challenger_stays_a_candidate_a_better_one_wins_and_rollback_restores(
    redis_db: str, tmp_path: Path
) -> None:
    pool, producer, backend, ctx = await promotion_setup(redis_db, tmp_path)

    first = await finished_training(producer, tmp_path, "ft:a")
    await evaluate(ctx, first)
    assert (await producer.registry.get("moderation")).champion.run_id == first

    worse = await finished_training(producer, tmp_path, "ft:worse")
    await evaluate(ctx, worse)
    decision = (await producer.store.get(worse)).metrics.promotion
    assert decision.promoted is False and decision.champion_run == first
    assert decision.challenger < decision.champion
    assert backend.calls["ft:a"] == 400 + 200  # its own run, then worse's test file
    record = await producer.registry.get("moderation")
    assert record.champion.run_id == first and worse in record.candidates

    better = await finished_training(producer, tmp_path, "ft:better")
    await evaluate(ctx, better)
    metrics = (await producer.store.get(better)).metrics
    assert metrics.promotion.promoted is True
    assert metrics.baselines["champion"].run_id == first
    assert metrics.baselines["random"].macro_pr_auc < metrics.baselines["champion"].macro_pr_auc
    record = await producer.registry.get("moderation")
    assert record.champion.run_id == better and [p.run_id for p in record.history] == [first]

    restored = await producer.rollback()
    assert restored.champion.run_id == first and restored.candidates[better] == "rolled back"
    with pytest.raises(RegistryError, match="no earlier champion"):
        await producer.rollback()

    with pytest.raises(RunStateError, match=r"did not beat the champion.*--force"):
        await producer.promote(worse)
    forced = await producer.promote(worse, force=True, by=Actor(name="alice@example.com"))
    assert forced.champion.run_id == worse
    assert forced.champion.reason == "promoted by alice@example.com (forced)"
    [entry] = await producer.audit.read(ArtifactStore(tmp_path), action="model.promote")
    assert (entry.actor, entry.target) == ("alice@example.com", worse)
    assert entry.detail == "moderation (forced)"
    await pool.aclose()


async def test_a_champion_is_measured_by_its_own_backend_so_either_backend_may_replace_the_other(
    redis_db: str, tmp_path: Path
) -> None:
    pool, producer, local, ctx = await promotion_setup(redis_db, tmp_path)
    remote = ctx["modfactory"].backends["mistral"] = RemoteModelsOfKnownQuality()

    first = await finished_training(producer, tmp_path, "ft:a")
    await evaluate(ctx, first)
    better = await finished_training(producer, tmp_path, "ft:better", backend="mistral")
    await evaluate(ctx, better)
    decision = (await producer.store.get(better)).metrics.promotion
    assert decision.promoted is True and decision.champion_run == first
    assert decision.champion < decision.challenger
    assert local.calls["ft:a"] == 400 + 200 and "ft:a" not in remote.calls  # where it lives
    assert (await producer.registry.get("moderation")).champion.run_id == better

    worse = await finished_training(producer, tmp_path, "ft:worse")  # local again: kept out
    await evaluate(ctx, worse)
    assert (await producer.store.get(worse)).metrics.promotion.promoted is False
    assert remote.calls["ft:better"] == 400 + 200
    back = await finished_training(producer, tmp_path, "ft:best")  # and a better one wins
    await evaluate(ctx, back)
    assert (await producer.registry.get("moderation")).champion.run_id == back

    top = await finished_training(producer, tmp_path, "ft:top", backend="mistral")
    await evaluate(ctx, top)
    assert (await producer.registry.get("moderation")).champion.run_id == top
    del ctx["modfactory"].backends["mistral"]  # its backend cannot be made now: no key
    challenger = await finished_training(producer, tmp_path, "ft:best")
    await evaluate(ctx, challenger)
    decision = (await producer.store.get(challenger)).metrics.promotion
    assert decision.promoted is False
    assert f"the champion {top} cannot be measured: the mistral backend needs" in decision.reason
    await pool.aclose()


async def test_a_run_cancelled_while_it_is_evaluated_is_never_promoted(
    redis_db: str, tmp_path: Path
) -> None:
    pool, producer, backend, ctx = await promotion_setup(redis_db, tmp_path)
    run_id = await finished_training(producer, tmp_path, "ft:better")
    classify = backend.classify

    async def cancelled_meanwhile(model: str, inputs: list) -> list:
        run = await producer.store.get(run_id)
        if not run.state.terminal:
            await producer.store.cancel(run_id, "cancelled by the user")
        return await classify(model, inputs)

    backend.classify = cancelled_meanwhile
    await evaluate(ctx, run_id)
    assert (await producer.store.get(run_id)).state == "cancelled"
    record = await producer.registry.get("moderation")
    assert record.champion is None and run_id not in record.candidates
    with pytest.raises(RunStateError, match="is cancelled; only a succeeded run"):
        await producer.promote(run_id, force=True)
    await pool.aclose()


async def test_a_champion_replaced_during_the_measurement_is_measured_again(
    redis_db: str, tmp_path: Path
) -> None:
    pool, producer, backend, ctx = await promotion_setup(redis_db, tmp_path)
    first = await finished_training(producer, tmp_path, "ft:worse")
    await evaluate(ctx, first)
    replacement = await finished_training(producer, tmp_path, "ft:better")
    await evaluate(ctx, replacement)  # better than first: champion
    await producer.rollback()  # first is champion again
    challenger = await finished_training(producer, tmp_path, "ft:a")
    classify = backend.classify
    swapped = []

    async def champion_swapped_meanwhile(model: str, inputs: list) -> list:
        if model == "ft:worse" and not swapped:  # while the champion `first` is measured
            swapped.append(model)
            await producer.promote(replacement, force=True)
        return await classify(model, inputs)

    backend.classify = champion_swapped_meanwhile
    await evaluate(ctx, challenger)
    run = await producer.store.get(challenger)
    decision = run.metrics.promotion
    # It beat `first`, but `replacement` is champion now: measured against it, it loses.
    assert swapped and decision.champion_run == replacement
    assert decision.promoted is False
    assert any("measuring again" in e.message for e in run.events)
    record = await producer.registry.get("moderation")
    assert record.champion.run_id == replacement and challenger in record.candidates
    await pool.aclose()


async def test_promoting_by_hand_is_refused_when_the_champion_changed_since_the_measure(
    redis_db: str, tmp_path: Path
) -> None:
    pool, producer, _backend, ctx = await promotion_setup(redis_db, tmp_path)
    first = await finished_training(producer, tmp_path, "ft:worse")
    await evaluate(ctx, first)
    better = await finished_training(producer, tmp_path, "ft:better")
    await evaluate(ctx, better)  # promoted over first
    await producer.rollback()  # first again; better's decision names first
    other = await finished_training(producer, tmp_path, "ft:a")
    await evaluate(ctx, other)  # beats first: the champion is now neither

    with pytest.raises(RunStateError, match=rf"measured against champion {first}.*now {other}"):
        await producer.promote(better)
    assert (await producer.registry.get("moderation")).champion.run_id == other
    assert (await producer.promote(better, force=True)).champion.run_id == better
    await pool.aclose()
