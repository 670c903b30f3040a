"""evaluate: classify validation and test with the trained model (batched, concurrent,
rate-limited, resumable); thresholds from validation, metrics on test."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from modfactory.classify import classify_texts
from modfactory.metrics import evaluate_scores, tune_thresholds
from modfactory.recipe import TARGET, read_jsonl
from modfactory.runs import Run
from modfactory.stages.context import StageContext, stage


@stage("evaluate")
async def evaluate(sc: StageContext, run: Run) -> None:
    """Classify validation and test; tune each label's threshold on validation only; record
    test metrics at 0.5 and at the tuned thresholds."""
    settings, backend = sc.settings, sc.backend(run.spec.backend)
    labels = run.dataset.labels if run.dataset else []
    report = sc.progress_reporter(run.id, "evaluate")
    splits = {}
    for split in ("validation", "test"):
        records = await asyncio.to_thread(read_jsonl, Path(getattr(run.artifacts, f"{split}_file")))
        results = await classify_texts(
            backend,
            run.artifacts.model_id,
            [r["text"] for r in records],
            sc.run_dir(run.id) / "evaluate" / split,
            batch_size=settings.classify_batch_size,
            concurrency=settings.classify_concurrency,
            rps=settings.classify_rps if backend.rate_limited else None,
            progress=lambda what, done, total, split=split: report(f"{split} {what}", done, total),
        )
        truth = [r["labels"][TARGET] for r in records]
        splits[split] = (truth, [result[TARGET]["scores"] for result in results])

    thresholds = await asyncio.to_thread(tune_thresholds, *splits["validation"], labels)
    metrics = await asyncio.to_thread(evaluate_scores, *splits["test"], labels, thresholds)
    path = sc.run_dir(run.id) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    await sc.store.finish_stage(
        run.id,
        "evaluate",
        metrics=metrics,
        artifacts={"metrics_file": str(path)},
        message=f"macro F1 {metrics['macro']['f1']:.3f} at 0.5, "
        f"{metrics['macro']['tuned_f1']:.3f} at thresholds tuned on validation "
        f"({metrics['rows']:,} test rows)",
    )
