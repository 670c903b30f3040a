"""Build the training set: the first half of the cookbook as one function.

``build_dataset`` selects each split's rows as the cookbook's ``shuffle(seed, buffer_size=n)
.take(n)`` does, applies the recipe and writes ``train.jsonl``, ``validation.jsonl``,
``test.jsonl``, the distribution chart and ``dataset.json`` (the summary recorded with a
run). Two engines select the very same rows: ``fast`` (indices shuffled with numpy, parquet
read column-wise: ``fast_build``) and ``stream`` (``datasets`` streaming, row by row, as the
cookbook). ``auto`` takes ``fast`` for parquet sources when ``shuffle_guard`` confirms it
matches the installed ``datasets``, and streams otherwise.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from modfactory.data import recipe
from modfactory.data.feedback import Corrections, add_to_build
from modfactory.data.recipe import SPLITS, RecipeError, Row
from modfactory.data.sources import Source, open_splits, parquet_split_files
from modfactory.values import DatasetSummary, RecipeParams, SplitSummary

log = logging.getLogger("modfactory.data.build")
Engine = Literal["auto", "fast", "stream"]

BuildProgress = Callable[[str, int, int], None]
"""Called as ``progress(split, rows_done, rows_wanted)`` while a split streams."""

_PROGRESS_EVERY = 5_000


def build_dataset(
    source: Source,
    params: RecipeParams,
    out_dir: Path,
    data_dir: Path,
    progress: BuildProgress | None = None,
    engine: Engine = "auto",
    corrections: Corrections | None = None,
) -> DatasetSummary:
    """Run the recipe on ``source`` and write the three JSONL files under ``out_dir``; then
    add ``corrections`` (to train, and the held-out ones as ``live.jsonl``)."""
    with _gc_paused():
        return _build(source, params, out_dir, data_dir, progress, engine, corrections)


def _build(
    source: Source,
    params: RecipeParams,
    out_dir: Path,
    data_dir: Path,
    progress: BuildProgress | None,
    engine: Engine,
    corrections: Corrections | None,
) -> DatasetSummary:
    files, note = choose_engine(source, data_dir, engine)
    filtered = _filtered_splits(source, params, data_dir, files, progress)

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
    used = None
    if corrections is not None and corrections.rows:
        used = add_to_build(out_dir, splits, corrections, kept)
    summary = DatasetSummary(
        source=str(source),
        synthetic=source.synthetic,
        labels=kept,
        dropped_labels=dropped,
        splits=splits,
        engine="fast" if files is not None else "stream",
        engine_note=note,
        feedback=used,
    )
    from modfactory import charts

    chart = out_dir / f"distribution{charts.SUFFIX}"
    chart.write_bytes(charts.distribution_chart(summary.splits, kept, summary.synthetic))
    summary.chart = str(chart)
    (out_dir / "dataset.json").write_text(summary.model_dump_json(indent=2))
    return summary


_gc_lock = threading.Lock()
_gc_pause = {"builds": 0, "resume": False}  # builds running; whether the first paused it


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while builds run: a build makes a million tuples and
    no cycle, and each collection would walk them all again (a third of the fast build's
    time). Memory is still freed by reference counting; the last build out resumes it."""
    with _gc_lock:
        if _gc_pause["builds"] == 0:
            _gc_pause["resume"] = gc.isenabled()
            gc.disable()
        _gc_pause["builds"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause["builds"] -= 1
            if _gc_pause["builds"] == 0 and _gc_pause["resume"]:
                gc.enable()


def _filtered_splits(
    source: Source,
    params: RecipeParams,
    data_dir: Path,
    files: dict[str, list[str]] | None,
    progress: BuildProgress | None,
) -> dict[str, list[Row]]:
    """Each split's rows taken and filtered by the recipe: from ``files`` by the fast
    engine, else streamed; a split left empty is refused, naming why."""
    filtered: dict[str, list[Row]] = {}
    if files is not None:
        from modfactory.data.fast_build import take_filtered

        for split in SPLITS:
            if progress:
                progress(split, 0, params.take(split))
            where = f"source {source}, split {split!r}"
            filtered[split] = take_filtered(files[split], split, params, where)
            if progress:
                progress(split, params.take(split), params.take(split))
    else:
        streams = open_splits(source, data_dir)
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
    return filtered


def choose_engine(
    source: Source, data_dir: Path, engine: Engine
) -> tuple[dict[str, list[str]] | None, str | None]:
    """(the parquet files per split when the fast engine runs, else None; why not fast).

    A source that is not parquet streams quietly; a guard disagreement streams with a
    warning — or, with ``fast``, fails. A Hub dataset that cannot be reached fails at once
    (SourceUnreachable): streaming it would fail the same way, only later.
    """
    if engine == "stream":
        return None, None
    files, why, worth_a_warning = _fast_engine_files(source, data_dir)
    if files is None and engine == "fast":
        raise RecipeError(f"--engine fast cannot run: {why} (use auto or stream)")
    if files is None and worth_a_warning:
        log.warning("%s: streaming instead", why)
    return files, why


def _fast_engine_files(
    source: Source, data_dir: Path
) -> tuple[dict[str, list[str]] | None, str | None, bool]:
    """Cheapest first: local files are looked at, then the guard is asked (its verdict is
    cached), and only then are a Hub dataset's files downloaded."""
    from modfactory.data.shuffle_guard import mismatch

    not_parquet = f"source {source} is not made of parquet files"
    files = None
    if source.kind != "hf":
        files = parquet_split_files(source, data_dir)
        if files is None:
            return None, not_parquet, False
    differs = mismatch(data_dir / "cache")
    if differs is not None:
        return None, f"{differs}; the fast engine would not select the cookbook's rows", True
    if files is None:
        files = parquet_split_files(source, data_dir)  # downloads, once
    return files, None if files else not_parquet, False


def _take(
    stream, split: str, source: Source, params: RecipeParams, progress: BuildProgress | None
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
