"""evaluate: the trained model scored, measured, compared with the champion, and recorded —
in short steps, each of which a new attempt redoes or resumes:

1. ``score_splits``: validation and test classified (batched, concurrent, resumable, within
   the backend's rate limit);
2. ``measure``: each label's threshold tuned on validation only; test metrics at 0.5 and at
   those thresholds, beside a random baseline (and a general moderation model, when one is
   set up), and the precision-recall chart;
3. ``decide``: the champion measured on the same test file by its own backend, whatever the
   challenger's, and the promotion rule applied;
4. ``record``: ``metrics.json`` and the report written to the artifact store (each whole or
   not at all), then the stage's end and the promotion recorded in one transaction —
   measured again if the champion was replaced meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from modfactory import charts
from modfactory.artifacts import Folder, checkpoint_prefix, run_key
from modfactory.backends.base import Backend, BackendError
from modfactory.data.recipe import TARGET, parse_jsonl
from modfactory.evaluation.classify import classify_texts
from modfactory.evaluation.metrics import evaluate_scores, tune_thresholds
from modfactory.evaluation.promotion import decide_promotion, random_baseline
from modfactory.evaluation.report import write_report
from modfactory.evaluation.tables import number
from modfactory.stages.context import StageContext
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import ChampionChanged, Run
from modfactory.values import Headline, PromotionDecision, SplitMetrics

MEASURES = 3  # how often the champion is measured again if it changes meanwhile


@dataclass
class Scored:
    """One split's texts, true labels and the model's scores."""

    texts: list[str]
    truth: list[list[str]]
    scores: list[dict[str, float]]


async def evaluate_model(sc: StageContext, run: Run) -> None:
    """Score validation and test, measure on test with thresholds tuned on validation,
    decide against the champion, record; promote the model if it beats the champion."""
    backend = sc.backend(run.spec.backend)
    splits = await score_splits(sc, run, backend)
    metrics, artifacts = await measure(sc, run, splits)
    for _ in range(MEASURES):
        decision = await decide(sc, run, backend, metrics, splits["test"], splits.get("live"))
        try:
            return await record(sc, run, metrics, decision, artifacts)
        except ChampionChanged as exc:
            await sc.store.note(run.id, "evaluate", f"{exc}: measuring again")
    raise BackendError(f"the champion kept changing while this run was measured ({MEASURES}x)")


async def score_splits(sc: StageContext, run: Run, backend: Backend) -> dict[str, Scored]:
    """Validation and test, classified by the run's model."""
    splits = {}
    for split in ("validation", "test", "live"):
        key = getattr(run.artifacts, f"{split}_file")
        if key is None and split == "live":
            continue  # no corrections held out
        text = await asyncio.to_thread(sc.artifacts.load_text, key)
        records = parse_jsonl(text.splitlines(), sc.artifacts.url_of(key))
        texts = [r["text"] for r in records]
        scores = await _classify(sc, run, backend, run.artifacts.model_id, texts, split)
        splits[split] = Scored(texts, [r["labels"][TARGET] for r in records], scores)
    return splits


async def measure(
    sc: StageContext, run: Run, splits: dict[str, Scored]
) -> tuple[SplitMetrics, dict[str, str]]:
    """Test metrics at thresholds tuned on validation, the baselines and the PR chart; and
    the artifacts the stage will record. (Redone by a new attempt: one that gets further
    counts as progress.)"""
    labels = run.dataset.labels if run.dataset else []
    valid, test = splits["validation"], splits["test"]
    step = _steps(sc, run)
    thresholds = await asyncio.to_thread(tune_thresholds, valid.truth, valid.scores, labels)
    metrics = await asyncio.to_thread(evaluate_scores, test.truth, test.scores, labels, thresholds)
    if (live := splits.get("live")) is not None:
        metrics.live = await asyncio.to_thread(
            evaluate_scores, live.truth, live.scores, labels, thresholds
        )
    step(1)
    metrics.baselines = await _baselines(sc, run, test.texts, test.truth, labels)
    step(2)
    svg = await asyncio.to_thread(charts.pr_curves, test.truth, test.scores, labels, thresholds)
    pr_chart = run_key(run.id, f"precision_recall{charts.SUFFIX}")
    await asyncio.to_thread(sc.artifacts.save, pr_chart, svg)
    step(3)
    artifacts = {
        "metrics_file": run_key(run.id, "metrics.json"),
        "pr_chart": pr_chart,
        "report_json": run_key(run.id, "report.json"),
        "report_html": run_key(run.id, "report.html"),
    }
    return metrics, artifacts


async def decide(
    sc: StageContext,
    run: Run,
    backend: Backend,
    metrics: SplitMetrics,
    test: Scored,
    live: Scored | None = None,
) -> PromotionDecision:
    """Measure the current champion on this test file and on the live test set, if there
    is one (its numbers join the baselines of each) and decide by the promotion rule."""
    settings = sc.settings
    name, metric = run.spec.model_name, settings.promotion_metric
    champion = (await ModelRegistry(sc.redis, settings.queue_name).get(name)).champion
    metrics.baselines.pop("champion", None)  # a measure of an earlier champion
    if metrics.live is not None:
        metrics.live.baselines.pop("champion", None)

    def decided(promoted: bool, reason: str, **measured: float | None) -> PromotionDecision:
        return PromotionDecision(
            model_name=name,
            metric=metric,
            margin=settings.promotion_margin,
            challenger=metrics.value(metric),
            champion_run=champion.run_id if champion else None,
            **measured,  # the champion's value of the metric, when it was measured
            promoted=promoted,
            reason=reason,
            model_id=run.artifacts.model_id,
            **({"live_challenger": metrics.live.value(metric)} if metrics.live else {}),
        )

    if champion is None:
        first = decide_promotion(metrics, None, metric, settings.promotion_margin)
        return decided(*first, champion=None)
    if champion.run_id == run.id:  # decided before a crash
        return decided(True, "already the champion")
    their_backend = (await sc.store.get(champion.run_id)).spec.backend
    try:  # the champion is measured where it lives, whatever the challenger's backend
        judge = backend if their_backend == run.spec.backend else sc.backend(their_backend)
    except BackendError as exc:
        return decided(False, f"the champion {champion.run_id} cannot be measured: {exc}")
    labels = list(metrics.labels)
    scores = await _classify(sc, run, judge, champion.model_id, test.texts, "champion")
    theirs = await asyncio.to_thread(evaluate_scores, test.truth, scores, labels)
    metrics.baselines["champion"] = theirs.headline(run_id=champion.run_id)
    theirs_live = None
    if live is not None and metrics.live is not None:
        scores = await _classify(sc, run, judge, champion.model_id, live.texts, "champion_live")
        theirs_live = await asyncio.to_thread(evaluate_scores, live.truth, scores, labels)
        champion_live = theirs_live.headline(run_id=champion.run_id)
        metrics.live.baselines = {**metrics.live.baselines, "champion": champion_live}
    margin = settings.promotion_margin
    promoted, reason = decide_promotion(metrics, theirs, metric, margin, theirs_live)
    return decided(
        promoted,
        reason,
        champion=theirs.value(metric),
        live_champion=theirs_live.value(metric) if theirs_live else None,
    )


async def record(
    sc: StageContext,
    run: Run,
    metrics: SplitMetrics,
    decision: PromotionDecision,
    artifacts: dict[str, str],
) -> None:
    """Write ``metrics.json`` and the report, then record the stage's end and the decision
    in the model registry in one transaction (ChampionChanged: the champion is not the one
    measured against any more). The report is written first: a worker stopped in between
    re-runs the stage, instead of leaving a succeeded run without its report."""
    metrics.promotion = decision
    message = _headline(metrics, decision)

    def write_outputs() -> None:
        sc.artifacts.save_text(artifacts["metrics_file"], metrics.model_dump_json(indent=2))
        finished = run.model_copy(deep=True)  # the run as it will be once recorded
        finished.finish_stage("evaluate", artifacts, None, metrics, message)
        write_report(finished, sc.artifacts)

    await asyncio.to_thread(write_outputs)
    await sc.store.finish_evaluation(
        run.id,
        decision,
        ModelRegistry(sc.redis, sc.settings.queue_name).key(run.spec.model_name),
        metrics=metrics,
        artifacts=artifacts,
        message=message,
    )


def _steps(sc: StageContext, run: Run) -> Callable[[int], None]:
    """``step(n)``: the n-th of the steps after classifying is done (metrics, baselines,
    chart), recorded as progress."""
    report = sc.progress_reporter(run.id, "evaluate")
    return lambda done: report("steps after classifying", done, 3)


def _headline(metrics: SplitMetrics, decision: PromotionDecision) -> str:
    """The evaluate stage's event: the numbers and what became of the model."""
    return (
        f"macro F1 {metrics.macro.f1:.3f} at 0.5, "
        f"{number(metrics.macro.tuned_f1)} at thresholds tuned on validation "
        f"({metrics.rows:,} test rows); "
        + ("promoted" if decision.promoted else "kept as a candidate")
        + f": {decision.reason}"
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


async def _classify(
    sc: StageContext, run: Run, backend: Backend, model: str, texts: list[str], name: str
) -> list[dict[str, float]]:
    settings = sc.settings
    report = sc.progress_reporter(run.id, "evaluate")
    results = await classify_texts(
        backend.classify,
        model,
        texts,
        Folder(sc.artifacts, checkpoint_prefix(run.id, name)),
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
        Folder(sc.artifacts, checkpoint_prefix(run.id, f"{backend.name}_moderation")),
        batch_size=settings.classify_batch_size,
        concurrency=settings.classify_concurrency,
        progress=lambda what, done, total: report(f"moderation baseline {what}", done, total),
    )
    scores = [{mapped[k]: v for k, v in row.items() if k in mapped} for row in results]
    ours = sorted(set(mapped.values()))
    report = await asyncio.to_thread(evaluate_scores, truth, scores, ours)
    return report.headline(labels=ours)
