"""evaluate: classify validation and test with the trained model (batched, concurrent,
resumable, within the backend's rate limit); thresholds from validation, metrics on test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modfactory import charts
from modfactory.backends.base import Backend, BackendError
from modfactory.data.recipe import TARGET, read_jsonl
from modfactory.evaluation.classify import classify_texts
from modfactory.evaluation.metrics import evaluate_scores, tune_thresholds
from modfactory.evaluation.promotion import (
    decide_promotion,
    random_baseline,
)
from modfactory.evaluation.report import write_report
from modfactory.evaluation.tables import number
from modfactory.stages.context import StageContext, stage
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import ChampionChanged, Run, RunState, StageStatus, Verdict
from modfactory.values import Headline, PromotionDecision, SplitMetrics

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
    step = _steps(sc, run)  # the rest is redone by a new attempt: one that gets further moved
    thresholds = await asyncio.to_thread(tune_thresholds, val_truth, val_scores, labels)
    metrics = await asyncio.to_thread(evaluate_scores, truth, test_scores, labels, thresholds)
    step(1)
    metrics.baselines = await _baselines(sc, run, test_texts, truth, labels)
    step(2)
    out = sc.run_dir(run.id)
    pr_chart = await asyncio.to_thread(
        charts.pr_curves, truth, test_scores, labels, thresholds, out / "precision_recall.png"
    )
    step(3)
    artifacts = {
        "metrics_file": str(out / "metrics.json"),
        "pr_chart": str(pr_chart),
        "report_json": str(out / "report.json"),
        "report_html": str(out / "report.html"),
    }
    for _ in range(MEASURES):
        metrics.baselines.pop("champion", None)
        metrics.promotion, verdict = await _promote(sc, run, backend, metrics, test_texts, truth)
        (out / "metrics.json").write_text(metrics.model_dump_json(indent=2))
        # The report is written before the stage is recorded as done: a worker stopped in
        # between re-runs the stage, instead of leaving a succeeded run without its report.
        await asyncio.to_thread(write_report, _as_finished(run, metrics, artifacts), out)
        try:
            await sc.store.finish_evaluation(
                run.id,
                verdict,
                ModelRegistry(sc.redis, sc.settings.queue_name).key(run.spec.model_name),
                metrics=metrics,
                artifacts=artifacts,
                message=_headline(metrics, verdict),
            )
            return
        except ChampionChanged as exc:
            await sc.store.note(run.id, "evaluate", f"{exc}: measuring again")
    raise BackendError(f"the champion kept changing while this run was measured ({MEASURES}x)")


def _steps(sc: StageContext, run: Run) -> Callable[[int], None]:
    """``step(n)``: the n-th of the steps after classifying is done (metrics, baselines,
    chart), recorded as progress."""
    report = sc.progress_reporter(run.id, "evaluate")
    return lambda done: report("steps after classifying", done, 3)


def _headline(metrics: SplitMetrics, verdict: Verdict) -> str:
    """The evaluate stage's event: the numbers and what became of the model."""
    return (
        f"macro F1 {metrics.macro.f1:.3f} at 0.5, "
        f"{number(metrics.macro.tuned_f1)} at thresholds tuned on validation "
        f"({metrics.rows:,} test rows); "
        + ("promoted" if verdict.promoted else "kept as a candidate")
        + f": {verdict.reason}"
    )


async def _baselines(
    sc: StageContext, run: Run, texts: list[str], truth: list[list[str]], labels: list[str]
) -> dict[str, Headline]:
    """A random score per label and, when one is set up (``moderation_baseline``: Mistral's,
    with a key), a general moderation model."""
    found = {"random": await asyncio.to_thread(random_baseline, truth, labels)}
    name = sc.settings.moderation_baseline
    if name:
        moderation = await _moderation_baseline(sc, run, sc.backend(name), texts, truth, labels)
        if moderation:
            found[f"{name}_moderation"] = moderation
    return found


def _as_finished(run: Run, metrics: SplitMetrics, artifacts: dict[str, str]) -> Run:
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
    sc: StageContext,
    run: Run,
    backend: Backend,
    texts: list[str],
    truth: list[list[str]],
    labels: list[str],
) -> Headline | None:
    """The backend's moderation model on the same test file, its categories mapped onto
    ours where they correspond (the other labels are left out of its numbers)."""
    mapped = {theirs: ours for theirs, ours in backend.moderation_labels.items() if ours in labels}
    if not mapped or backend.moderation_model is None:
        return None
    settings = sc.settings
    report = sc.progress_reporter(run.id, "evaluate")
    results = await classify_texts(
        backend.moderate,
        backend.moderation_model,
        texts,
        sc.run_dir(run.id) / "evaluate" / f"{backend.name}_moderation",
        batch_size=settings.classify_batch_size,
        concurrency=settings.classify_concurrency,
        progress=lambda what, done, total: report(f"moderation baseline {what}", done, total),
    )
    scores = [{mapped[k]: v for k, v in row.items() if k in mapped} for row in results]
    ours = sorted(set(mapped.values()))
    report = await asyncio.to_thread(evaluate_scores, truth, scores, ours)
    return report.headline(labels=ours)


async def _promote(
    sc: StageContext,
    run: Run,
    backend: Backend,
    metrics: SplitMetrics,
    texts: list[str],
    truth: list[list[str]],
) -> tuple[PromotionDecision, Verdict]:
    """Measure the current champion on this test file (its numbers join ``metrics``'s
    baselines) and decide; the caller records the decision."""
    settings = sc.settings
    name, metric = run.spec.model_name, settings.promotion_metric
    champion = (await ModelRegistry(sc.redis, settings.queue_name).get(name)).champion
    champion_run = champion.run_id if champion else None

    def decided(promoted: bool, reason: str, **measured: Any) -> tuple[PromotionDecision, Verdict]:
        decision = PromotionDecision(
            model_name=name,
            metric=metric,
            margin=settings.promotion_margin,
            challenger=metrics.value(metric),
            champion_run=champion_run,
            **measured,
            promoted=promoted,
            reason=reason,
        )
        verdict = Verdict(
            promoted=promoted,
            reason=reason,
            measured_against=champion_run,
            model_id=run.artifacts.model_id,
        )
        return decision, verdict

    if champion and champion.run_id == run.id:  # decided before a crash
        return decided(True, "already the champion")
    if champion is None:
        first = decide_promotion(metrics, None, metric, settings.promotion_margin)
        return decided(*first, champion=None)
    their_backend = (await sc.store.get(champion.run_id)).spec.backend
    try:  # the champion is measured where it lives, whatever the challenger's backend
        judge = backend if their_backend == run.spec.backend else sc.backend(their_backend)
    except BackendError as exc:
        return decided(False, f"the champion {champion.run_id} cannot be measured: {exc}")
    scores = await _classify(sc, run, judge, champion.model_id, texts, "champion")
    labels = list(metrics.labels)
    theirs = await asyncio.to_thread(evaluate_scores, truth, scores, labels)
    metrics.baselines["champion"] = theirs.headline(run_id=champion.run_id)
    promoted, reason = decide_promotion(metrics, theirs, metric, settings.promotion_margin)
    return decided(promoted, reason, champion=theirs.value(metric))
