"""build: the cookbook's dataset recipe → train / validation / test JSONL and charts."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from modfactory.data.build import build_dataset
from modfactory.data.sources import parse_source
from modfactory.stages.context import StageContext
from modfactory.store.run import Run
from modfactory.values import DatasetSummary

# One build at a time per worker process: builds are CPU- and memory-heavy, so two at once
# gain little, and two at once race inside `datasets`' progress bars (tqdm deletes its
# class-wide lock when its last bar closes, under the other thread's feet).
_ONE_BUILD = threading.Lock()


def _build_alone(*args: Any) -> DatasetSummary:
    with _ONE_BUILD:
        return build_dataset(*args)


async def build_splits(sc: StageContext, run: Run) -> None:
    """Waits for nothing; records the split files, label counts and distribution chart."""
    out = sc.run_dir(run.id) / "dataset"
    report = sc.progress_reporter(run.id, "build")
    summary = await asyncio.to_thread(
        _build_alone,
        parse_source(run.spec.source),
        run.spec.recipe,
        out,
        sc.settings.data_dir,
        lambda split, done, total: report(f"{split} rows", done, total),
        sc.settings.build_engine,
    )
    rows = ", ".join(f"{split} {s.rows:,}" for split, s in summary.splits.items())
    await sc.store.finish_stage(
        run.id,
        "build",
        dataset=summary,
        artifacts={
            "dataset_dir": str(out),
            **{f"{split}_file": s.file for split, s in summary.splits.items()},
            "distribution_chart": summary.chart,
        },
        message=f"built {rows} rows ({summary.engine} engine)"
        + (" (synthetic data)" if summary.synthetic else ""),
    )
