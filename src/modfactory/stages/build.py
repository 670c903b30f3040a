"""build: the cookbook's dataset recipe → train / validation / test JSONL and charts, built
in scratch on this machine and kept in the artifact store; the model name's corrections
(compacted first, ``stages.feedback``) join train, and their held-out share is ``live``;
texts held by double review (half-reviewed, or disputed and not settled) are left out."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from modfactory.artifacts import ArtifactStore, dataset_key, run_key
from modfactory.data.build import build_dataset
from modfactory.data.feedback import Corrections
from modfactory.data.sources import parse_source
from modfactory.stages.context import StageContext
from modfactory.stages.feedback import all_corrections
from modfactory.store.double_review import DoubleReviews, text_digest
from modfactory.store.feedback import FeedbackLog
from modfactory.store.run import Run
from modfactory.values import DatasetSummary, FeedbackUse

# One build at a time per worker process: builds are CPU- and memory-heavy, so two at once
# gain little, and two at once race inside `datasets`' progress bars (tqdm deletes its
# class-wide lock when its last bar closes, under the other thread's feet).
_ONE_BUILD = threading.Lock()


def _build_alone(*args: Any) -> DatasetSummary:
    with _ONE_BUILD:
        return build_dataset(*args)


async def build_splits(sc: StageContext, run: Run) -> None:
    """Waits for nothing; records the split files, label counts and distribution chart."""
    report = sc.progress_reporter(run.id, "build")
    feedback = FeedbackLog(sc.redis, sc.settings.queue_name)
    rows, upto = await all_corrections(sc.artifacts, feedback, run.spec.model_name, compact=True)
    held = await DoubleReviews(sc.redis, sc.settings.queue_name).held(run.spec.model_name)
    rows = [r for r in rows if text_digest(r["text"]) not in held]  # disputed, or half-reviewed
    corrections = Corrections(rows, upto, sc.settings.feedback_holdout)

    def build_and_keep() -> DatasetSummary:
        with sc.artifacts.scratch() as out:
            summary = _build_alone(
                parse_source(run.spec.source),
                run.spec.recipe,
                out,
                sc.settings.data_dir,
                lambda split, done, total: report(f"{split} rows", done, total),
                sc.settings.build_engine,
                corrections,
            )
            return _keep(sc.artifacts, run.id, summary)

    summary = await asyncio.to_thread(build_and_keep)
    counts = ", ".join(f"{split} {s.rows:,}" for split, s in summary.splits.items())
    await sc.store.finish_stage(
        run.id,
        "build",
        dataset=summary,
        artifacts={
            "dataset_dir": run_key(run.id, "dataset"),
            **{f"{split}_file": s.file for split, s in summary.splits.items()},
            "distribution_chart": summary.chart,
        },
        message=f"built {counts} rows ({summary.engine} engine)"
        + (" (synthetic data)" if summary.synthetic else "")
        + (_used(summary.feedback) if summary.feedback else ""),
    )


def _used(used: FeedbackUse) -> str:
    lacking = ", ".join(used.ignored_labels)
    ignored = f"; labels the data set lacks ignored: {lacking}" if lacking else ""
    return (
        f"; {used.rows:,} corrected texts (to #{used.upto_seq}): {used.train_rows:,} in train, "
        f"{used.live_rows:,} held out as the live test set{ignored}"
    )


def _keep(store: ArtifactStore, run_id: str, summary: DatasetSummary) -> DatasetSummary:
    """The built files moved into the artifact store; the summary naming their keys."""
    for counts in summary.splits.values():
        path = Path(counts.file)
        counts.file = store.save_file(path, dataset_key(run_id, path.name), move=True)
    if summary.chart:
        chart = Path(summary.chart)
        summary.chart = store.save_file(chart, dataset_key(run_id, chart.name), move=True)
    store.save_text(dataset_key(run_id, "dataset.json"), summary.model_dump_json(indent=2))
    return summary
