"""evaluate: classify the test split with the trained model, in batches; record metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from modfactory.metrics import evaluate_scores
from modfactory.recipe import TARGET, read_jsonl
from modfactory.stages.context import StageContext, guarded, start


async def evaluate(ctx: dict[str, Any], run_id: str) -> None:
    """Per-label precision, recall, F1 at 0.5, ROC-AUC and support, with micro / macro."""
    sc = StageContext.of(ctx)
    run = await start(sc, "evaluate", run_id)
    if run is None:
        return

    async def step() -> None:
        backend = sc.backend(run.spec.backend)
        records = await asyncio.to_thread(read_jsonl, Path(run.artifacts.test_file))
        texts = [r["text"] for r in records]
        size = sc.settings.classify_batch_size
        report = sc.progress_reporter(run_id, "evaluate")
        results = []
        for i in range(0, len(texts), size):
            results.extend(await backend.classify(run.artifacts.model_id, texts[i : i + size]))
            report("texts classified", len(results), len(texts))
        labels = run.dataset.labels if run.dataset else []
        truth = [r["labels"][TARGET] for r in records]
        scores = [result[TARGET]["scores"] for result in results]
        metrics = await asyncio.to_thread(evaluate_scores, truth, scores, labels)
        path = sc.run_dir(run_id) / "metrics.json"
        path.write_text(json.dumps(metrics, indent=2))
        await sc.store.finish_stage(
            run_id,
            "evaluate",
            metrics=metrics,
            artifacts={"metrics_file": str(path)},
            message=f"macro F1 {metrics['macro']['f1']:.3f} on {len(texts):,} test rows",
        )

    await guarded(sc, "evaluate", run_id, step)
