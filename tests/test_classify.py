"""Evaluation's classification: batched, concurrent, under the rate limit, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mistral_emulator import MistralEmulator
from mistral_emulator import trained_model as train_on_emulator
from modfactory.artifacts import ArtifactStore, Folder, checkpoint_prefix
from modfactory.backends.base import BackendError
from modfactory.backends.mistral import MistralBackend
from modfactory.evaluation.classify import classify_texts
from modfactory.producer import Producer
from modfactory.settings import Settings
from modfactory.stages.context import StageContext
from modfactory.stages.pipeline import JOBS
from modfactory.store import queue
from modfactory.store.run import RunSpec
from modfactory.values import DatasetSummary, RecipeParams

evaluate = JOBS["evaluate"]

pytestmark = pytest.mark.slow  # real classification with trained models

KEY = "sk-classify-test"
TEXTS = [
    f"comment {i} {'you stupid idiot' if i % 3 == 0 else 'the council met'}" for i in range(300)
]


async def trained_model(
    emulator: MistralEmulator, tmp_path: Path, **settings: object
) -> tuple[MistralBackend, str]:
    backend = MistralBackend(
        Settings(mistral_api_key=KEY, mistral_server_url=emulator.url, **settings)
    )
    return backend, await train_on_emulator(backend, tmp_path)


@pytest.mark.parametrize("where", ["directory", "s3"])
async def test_a_restarted_classification_resends_no_finished_batch(
    emulator: MistralEmulator, tmp_path: Path, where: str, request
) -> None:
    """The checkpoints are objects of the artifact store: a directory, or a bucket that a
    restart on another machine reads."""
    backend, model = await trained_model(emulator, tmp_path)
    root = tmp_path if where == "directory" else request.getfixturevalue("s3_bucket")
    checkpoints = Folder(ArtifactStore(root), checkpoint_prefix("run-1", "test"))
    options = {"batch_size": 20, "concurrency": 3}
    emulator.faults.fail_classify_after = 5
    with pytest.raises(BackendError, match="HTTP 400"):
        await classify_texts(backend.classify, model, TEXTS, checkpoints, **options)
    checkpoints = Folder(ArtifactStore(root), checkpoint_prefix("run-1", "test"))  # anew
    finished = len([n for n in checkpoints.names() if n.startswith("batch-")])
    assert finished == 5 and emulator.counts["classify_requests"] == 5

    emulator.faults.fail_classify_after = None
    seen: list[tuple[int, int]] = []
    results = await classify_texts(
        backend.classify,
        model,
        TEXTS,
        checkpoints,
        **options,
        progress=lambda _, d, t: seen.append((d, t)),
    )
    assert emulator.counts["classify_requests"] == 15  # 5 before the failure, 10 after
    assert set(emulator.classified_batches.values()) == {1}  # no batch paid for twice
    assert seen[0] == (100, 300) and seen[-1] == (300, 300)
    assert len(results) == 300
    direct = await backend.classify(model, [TEXTS[0], TEXTS[1]])
    assert results[:2] == direct  # in input order

    # A different plan (another batch size) does not reuse the checkpoints.
    await classify_texts(backend.classify, model, TEXTS, checkpoints, batch_size=30, concurrency=3)
    assert emulator.counts["classify_requests"] == 15 + 1 + 10
    await backend.close()


async def test_the_client_never_exceeds_the_rate_limit(
    emulator: MistralEmulator, tmp_path: Path
) -> None:

    backend, model = await trained_model(emulator, tmp_path, mistral_rps=5, classify_rps=None)
    emulator.faults.rate_limit = 5
    emulator.faults.latency = 0.4
    emulator.request_times.clear()
    results = await classify_texts(
        backend.classify,
        model,
        TEXTS[:240],
        Folder(ArtifactStore(tmp_path), checkpoint_prefix("run-1", "test")),
        batch_size=16,
        concurrency=8,
    )
    assert len(results) == 240
    assert emulator.counts["rate_limited"] == 0
    assert emulator.peak_rate() <= 5
    await backend.close()


async def test_restarting_the_evaluate_stage_resends_no_finished_batch(
    emulator: MistralEmulator, redis_db: str, tmp_path: Path
) -> None:
    """The stage itself: it fails mid-way, is queued again, and pays only for what is left."""
    backend, model = await trained_model(emulator, tmp_path)
    settings = Settings(
        redis_url=redis_db,
        data_dir=tmp_path,
        mistral_api_key=KEY,
        mistral_server_url=emulator.url,
        classify_batch_size=25,
        classify_concurrency=2,
        classify_rps=None,
        mistral_rps=None,
    )
    pool = await queue.open_pool(redis_db, "modfactory")
    producer = Producer(pool, settings)
    ctx = {
        "modfactory": StageContext(settings, producer.store, pool, backends={"mistral": backend})
    }
    run = await producer.store.create(
        RunSpec(source="synthetic", backend="mistral", recipe=RecipeParams())
    )
    files = {}
    for split in ("validation", "test"):
        path = tmp_path / f"{split}.jsonl"
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "text": f"{split} {t}",
                        "labels": {"moderation": ["insult" if "idiot" in t else "safe"]},
                    }
                )
                + "\n"
                for t in TEXTS[:150]
            )
        )
        files[f"{split}_file"] = str(path)
    summary = DatasetSummary(
        source="x", synthetic=True, labels=["insult"], dropped_labels=[], splits={}
    )
    for stage in ("build", "upload", "train"):
        await producer.store.start_stage(run.id, stage)
        await producer.store.finish_stage(
            run.id, stage, artifacts={**files, "model_id": model}, dataset=summary
        )

    emulator.faults.fail_classify_after = 8  # validation's 6 batches, then 2 of test's 6
    await evaluate(ctx, run.id)
    failed = await producer.store.get(run.id)
    assert failed.state == "failed" and "HTTP 400" in failed.error

    emulator.faults.fail_classify_after = None
    await producer.enqueue("evaluate", run.id)  # what `modfactory enqueue evaluate RUN` does
    await evaluate(ctx, run.id)
    done = await producer.store.get(run.id)
    assert done.state == "succeeded", done.error
    assert emulator.counts["classify_requests"] == 6 + 6  # each batch of both splits, once
    assert set(emulator.classified_batches.values()) == {1}
    await backend.close()
    await pool.aclose()
