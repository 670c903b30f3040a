"""evaluate: classify validation and test with the trained model (batched, concurrent,
resumable, within the backend's rate limit); thresholds from validation, metrics on test."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modfactory import charts
from modfactory.backends.base import Backend, BackendError
from modfactory.data.recipe import TARGET, read_jsonl
from modfactory.evaluation.classify import classify_texts
from modfactory.evaluation.metrics import evaluate_scores, tune_thresholds
from modfactory.evaluation.promotion import (
    MODERATION_CATEGORIES,
    MODERATION_MODEL,
    decide_promotion,
    metric_value,
    random_baseline,
    summary,
)
from modfactory.evaluation.report import write_report
from modfactory.stages.context import StageContext, stage
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import ChampionChanged, Run, RunState, StageStatus, Verdict

MEASURES = 3  # how often the champion is measured again if it changes meanwhile


@stage("evaluate")
async def evaluate(sc: StageContext, run: Run) -> None:
    """Classify validation and test; tune each label's threshold on validation only; record
    test metrics at 0.5 and at the tuned thresholds, beside a random baseline and the
    champion measured on the same test file; promote the model if it beats the champion
    (recorded with the run's end in one transaction; measured again if the champion was
    replaced meanwhile)."""
    backend = sc.backend(run.spec.backend)
    labels = run.dataset.labels if run.dataset else []
    splits = {}
    for split in ("validation", "test"):
        records = await asyncio.to_thread(read_jsonl, Path(getattr(run.artifacts, f"{split}_file")))
        texts = [r["text"] for r in records]
        scores = await _classify(sc, run, backend, run.artifacts.model_id, texts, split)
        splits[split] = (texts, [r["labels"][TARGET] for r in records], scores)

    _, val_truth, val_scores = splits["validation"]
    test_texts, truth, test_scores = splits["test"]
    thresholds = await asyncio.to_thread(tune_thresholds, val_truth, val_scores, labels)
    metrics = await asyncio.to_thread(evaluate_scores, truth, test_scores, labels, thresholds)
    metrics["baselines"] = {"random": await asyncio.to_thread(random_baseline, truth, labels)}
    if sc.settings.mistral_api_key:
        moderation = await _moderation_baseline(sc, run, test_texts, truth, labels)
        if moderation:
            metrics["baselines"]["mistral_moderation"] = moderation
    out = sc.run_dir(run.id)
    pr_chart = await asyncio.to_thread(
        charts.pr_curves, truth, test_scores, labels, thresholds, out / "precision_recall.png"
    )
    artifacts = {
        "metrics_file": str(out / "metrics.json"),
        "pr_chart": str(pr_chart),
        "report_json": str(out / "report.json"),
        "report_html": str(out / "report.html"),
    }
    registry = ModelRegistry(sc.redis, sc.settings.queue_name)
    for _ in range(MEASURES):
        metrics["baselines"].pop("champion", None)
        metrics["promotion"], verdict = await _promote(
            sc, run, backend, metrics, test_texts, truth, labels
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        # The report is written before the stage is recorded as done: a worker stopped in
        # between re-runs the stage, instead of leaving a succeeded run without its report.
        await asyncio.to_thread(write_report, _as_finished(run, metrics, artifacts), out)
        try:
            await sc.store.finish_evaluation(
                run.id,
                verdict,
                registry.key(run.spec.model_name),
                metrics=metrics,
                artifacts=artifacts,
                message=f"macro F1 {metrics['macro']['f1']:.3f} at 0.5, "
                f"{metrics['macro']['tuned_f1']:.3f} at thresholds tuned on validation "
                f"({metrics['rows']:,} test rows); "
                + ("promoted" if verdict.promoted else "kept as a candidate")
                + f": {verdict.reason}",
            )
            return
        except ChampionChanged as exc:
            await sc.store.note(run.id, "evaluate", f"{exc}: measuring again")
    raise BackendError(f"the champion kept changing while this run was measured ({MEASURES}x)")


def _as_finished(run: Run, metrics: dict[str, Any], artifacts: dict[str, str]) -> Run:
    """The run as it will be once evaluate is recorded (what its report shows)."""
    finished = run.model_copy(deep=True)
    finished.metrics = metrics
    finished.artifacts = finished.artifacts.model_copy(update=artifacts)
    at = datetime.now(UTC)
    stage = finished.stages["evaluate"]
    stage.state, stage.finished_at, stage.error = StageStatus.SUCCEEDED, at, None
    finished.state, finished.finished_at, finished.progress = RunState.SUCCEEDED, at, None
    return finished


async def _classify(
    sc: StageContext, run: Run, backend: Backend, model: str, texts: list[str], name: str
) -> list[dict[str, float]]:
    settings = sc.settings
    report = sc.progress_reporter(run.id, "evaluate")
    results = await classify_texts(
        backend.classify,
        model,
        texts,
        sc.run_dir(run.id) / "evaluate" / name,
        batch_size=settings.classify_batch_size,
        concurrency=settings.classify_concurrency,
        progress=lambda what, done, total: report(f"{name} {what}", done, total),
    )
    return [result[TARGET]["scores"] for result in results]


async def _moderation_baseline(
    sc: StageContext, run: Run, texts: list[str], truth: list[list[str]], labels: list[str]
) -> dict[str, Any] | None:
    """Mistral's moderation endpoint on the same test file, its categories mapped onto ours
    where they correspond (the other labels are left out of its numbers)."""
    mapped = {theirs: ours for theirs, ours in MODERATION_CATEGORIES.items() if ours in labels}
    if not mapped:
        return None
    backend = sc.backend("mistral")
    settings = sc.settings
    results = await classify_texts(
        backend.moderate,
        MODERATION_MODEL,
        texts,
        sc.run_dir(run.id) / "evaluate" / "mistral_moderation",
        batch_size=settings.classify_batch_size,
        concurrency=settings.classify_concurrency,
    )
    scores = [{mapped[k]: v for k, v in row.items() if k in mapped} for row in results]
    ours = sorted(set(mapped.values()))
    report = await asyncio.to_thread(evaluate_scores, truth, scores, ours)
    return {"labels": ours, **summary(report)}


async def _promote(
    sc: StageContext,
    run: Run,
    backend: Backend,
    metrics: dict[str, Any],
    texts: list[str],
    truth: list[list[str]],
    labels: list[str],
) -> tuple[dict[str, Any], Verdict]:
    """Measure the current champion on this test file and decide (recorded by the caller)."""
    settings = sc.settings
    name = run.spec.model_name
    champion = (await ModelRegistry(sc.redis, settings.queue_name).get(name)).champion
    decision: dict[str, Any] = {
        "model_name": name,
        "metric": settings.promotion_metric,
        "margin": settings.promotion_margin,
        "challenger": metric_value(metrics, settings.promotion_metric),
        "champion_run": champion.run_id if champion else None,
    }

    def verdict(promoted: bool, reason: str) -> Verdict:
        return Verdict(
            promoted=promoted,
            reason=reason,
            measured_against=decision["champion_run"],
            model_id=run.artifacts.model_id,
        )

    if champion and champion.run_id == run.id:  # decided before a crash
        return {**decision, "promoted": True, "reason": "already the champion"}, verdict(
            True, "already the champion"
        )
    champion_metrics = None
    if champion:
        champion_run = await sc.store.get(champion.run_id)
        if champion_run.spec.backend != run.spec.backend:
            reason = (
                f"the champion {champion.run_id} runs on the {champion_run.spec.backend} backend"
            )
            return {**decision, "promoted": False, "reason": reason}, verdict(False, reason)
        scores = await _classify(sc, run, backend, champion.model_id, texts, "champion")
        champion_metrics = await asyncio.to_thread(evaluate_scores, truth, scores, labels)
        metrics["baselines"]["champion"] = {"run_id": champion.run_id, **summary(champion_metrics)}
    promoted, reason = decide_promotion(
        metrics, champion_metrics, settings.promotion_metric, settings.promotion_margin
    )
    champion_value = (
        metric_value(champion_metrics, settings.promotion_metric) if champion_metrics else None
    )
    return {
        **decision,
        "champion": champion_value,
        "promoted": promoted,
        "reason": reason,
    }, verdict(promoted, reason)
