"""Build the training set: the first half of the cookbook as one function.

``build_dataset`` streams each split, shuffles and takes like the cookbook, applies the
recipe and writes ``train.jsonl``, ``validation.jsonl``, ``test.jsonl``, the distribution
chart and ``dataset.json`` (the summary recorded with a run).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from modfactory import recipe
from modfactory.recipe import SPLITS, RecipeError, RecipeParams, Row
from modfactory.sources import Source, open_splits

Progress = Callable[[str, int, int], None]
"""Called as ``progress(split, rows_done, rows_wanted)`` while a split streams."""

_PROGRESS_EVERY = 5_000


class SplitSummary(BaseModel):
    rows: int
    safe: int
    labels: dict[str, int]
    file: str


class DatasetSummary(BaseModel):
    """What a build produced; recorded with the run and saved as ``dataset.json``."""

    source: str
    synthetic: bool
    labels: list[str]
    dropped_labels: list[str]
    splits: dict[str, SplitSummary]
    chart: str | None = None


def build_dataset(
    source: Source,
    params: RecipeParams,
    out_dir: Path,
    data_dir: Path,
    progress: Progress | None = None,
) -> DatasetSummary:
    """Run the recipe on ``source`` and write the three JSONL files under ``out_dir``."""
    streams = open_splits(source, data_dir)
    filtered: dict[str, list[Row]] = {}
    for split in SPLITS:
        rows = _take(streams[split], split, source, params, progress)
        filtered[split] = recipe.filter_split(rows, params, len(params.label_columns))
    empty = [split for split, rows in filtered.items() if not rows]
    if empty:
        raise RecipeError(
            f"source {source}: split {empty[0]!r} has no row left after filtering — it has no "
            f"row flagged above the threshold {params.threshold} among the "
            f"{params.take(empty[0]):,} taken (labels: {', '.join(params.label_columns)})"
        )

    dropped = recipe.labels_to_drop(filtered, params)
    kept = [label for label in params.label_columns if label not in dropped]
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, SplitSummary] = {}
    for split, rows in filtered.items():
        path = out_dir / f"{split}.jsonl"
        recipe.write_jsonl(path, recipe.jsonl_lines(rows, params, kept))
        counts = recipe.count_split(rows, params, kept)
        splits[split] = SplitSummary(
            rows=counts.rows, safe=counts.safe, labels=counts.labels, file=str(path)
        )
    summary = DatasetSummary(
        source=str(source),
        synthetic=source.synthetic,
        labels=kept,
        dropped_labels=dropped,
        splits=splits,
    )
    from modfactory import charts  # matplotlib: only when a chart is drawn

    summary.chart = str(
        charts.distribution_chart(
            summary.splits, kept, out_dir / "distribution.png", summary.synthetic
        )
    )
    (out_dir / "dataset.json").write_text(summary.model_dump_json(indent=2))
    return summary


def _take(
    stream, split: str, source: Source, params: RecipeParams, progress: Progress | None
) -> list[Row]:
    """``stream.shuffle(seed, buffer_size=n).take(n)``, binarized row by row."""
    where = f"source {source}, split {split!r}"
    recipe.check_columns(stream.column_names, params, where)
    if stream.column_names is not None:
        stream = stream.select_columns([params.text_column, *params.label_columns])
    n = params.take(split)
    rows: list[Row] = []
    for i, example in enumerate(stream.shuffle(seed=params.seed, buffer_size=n).take(n)):
        if i == 0:
            recipe.check_columns(list(example), params, where)
        rows.append(recipe.binarize(example, params, where))
        if progress and (i + 1) % _PROGRESS_EVERY == 0:
            progress(split, i + 1, n)
    if progress:
        progress(split, len(rows), len(rows))
    return rows
