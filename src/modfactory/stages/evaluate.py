"""evaluate: classify the test split with the trained model, in batches; record metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from modfactory.metrics import evaluate_scores
from modfactory.recipe import TARGET, read_jsonl
from modfactory.runs import Run
from modfactory.stages.context import StageContext, stage


@stage("evaluate")
async def evaluate(sc: StageContext, run: Run) -> None:
    """Per-label precision, recall, F1 at 0.5, ROC-AUC and support, with micro / macro."""
    backend = sc.backend(run.spec.backend)
    records = await asyncio.to_thread(read_jsonl, Path(run.artifacts.test_file))
    texts = [r["text"] for r in records]
    size = sc.settings.classify_batch_size
    report = sc.progress_reporter(run.id, "evaluate")
    results = []
    for i in range(0, len(texts), size):
        results.extend(await backend.classify(run.artifacts.model_id, texts[i : i + size]))
        report("texts classified", len(results), len(texts))
    labels = run.dataset.labels if run.dataset else []
    truth = [r["labels"][TARGET] for r in records]
    scores = [result[TARGET]["scores"] for result in results]
    metrics = await asyncio.to_thread(evaluate_scores, truth, scores, labels)
    path = sc.run_dir(run.id) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    await sc.store.finish_stage(
        run.id,
        "evaluate",
        metrics=metrics,
        artifacts={"metrics_file": str(path)},
        message=f"macro F1 {metrics['macro']['f1']:.3f} on {len(texts):,} test rows",
    )
