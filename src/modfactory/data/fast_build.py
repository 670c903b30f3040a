"""The build's fast path: the cookbook's rows, selected over indices, read column-wise.

``shuffle_indices`` gives the row numbers ``shuffle(seed, buffer_size=n).take(n)`` would
yield; only the label columns of those rows are read (memory-mapped parquet), binarized
and filtered with numpy, and the text column is read only for the rows the recipe keeps,
one row group at a time. Same rows, same order, as streaming — at Arrow speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modfactory.data.recipe import RecipeError, Row, check_columns, filter_positions
from modfactory.data.shuffle_indices import shuffled_take
from modfactory.values import RecipeParams


def take_filtered(files: Sequence[str], split: str, params: RecipeParams, where: str) -> list[Row]:
    """The split's rows after shuffle / take / binarize / filter, as ``Row`` objects."""
    parquet = [pq.ParquetFile(path, memory_map=True) for path in files]
    for path, pf in zip(files, parquet, strict=True):
        check_columns(pf.schema_arrow.names, params, f"{where} ({Path(path).name})")
    sizes = [pf.metadata.num_rows for pf in parquet]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = params.take(split)
    selected = shuffled_take(sizes, params.seed, n, n)  # global row numbers, in yield order
    shard = np.searchsorted(starts, selected, side="right") - 1

    labels = list(params.label_columns)
    flags = np.zeros((len(selected), len(labels)), dtype=bool)
    for k, pf in enumerate(parquet):
        mine = np.flatnonzero(shard == k)
        if not len(mine):
            continue
        local = selected[mine] - starts[k]
        name = Path(files[k]).name
        for j, column in enumerate(labels):  # one column at a time: memory stays small
            values = pf.read(columns=[column]).column(column)
            if not (
                pa.types.is_floating(values.type)
                or pa.types.is_integer(values.type)
                or pa.types.is_boolean(values.type)
            ):
                raise RecipeError(
                    f"{where} ({name}): label column {column!r} holds {values.type}, "
                    "not scores in [0, 1]"
                )
            scores = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)[local]
            missing = np.flatnonzero(np.isnan(scores))
            if len(missing):
                raise RecipeError(
                    f"{where}: label column {column!r} has no score in {name} "
                    f"row {local[missing[0]]}"
                )
            flags[mine, j] = scores > params.threshold
        _check_texts(pf, local, params.text_column, f"{where} ({name})")
    positions = filter_positions(flags, params)
    texts = _read_texts(parquet, starts, selected[positions], params.text_column)
    row_flags = map(tuple, flags[positions].tolist())
    return [Row(text, f) for text, f in zip(texts, row_flags, strict=True)]


def _check_texts(pf: pq.ParquetFile, local: np.ndarray, column: str, where: str) -> None:
    """Streaming fails on a taken row without text; so does this (read only if nulls exist)."""
    index = pf.schema_arrow.get_field_index(column)
    metadata = pf.metadata
    nulls = 0
    for rg in range(metadata.num_row_groups):
        stats = metadata.row_group(rg).column(index).statistics
        nulls += stats.null_count if stats is not None and stats.has_null_count else 1
    if not nulls:
        return
    empty = pc.is_null(pf.read(columns=[column]).column(column)).to_numpy(zero_copy_only=False)
    hit = np.flatnonzero(empty[local])
    if len(hit):
        raise RecipeError(f"{where}: text column {column!r} is empty at row {local[hit[0]]}")


_TEXT_BATCH = 32_768  # rows of text decoded at once


def _read_texts(
    parquet: Sequence[pq.ParquetFile], starts: np.ndarray, rows: np.ndarray, column: str
) -> list[str]:
    """The text of each global row number in ``rows``, in that order, a batch at a time."""
    texts: list[str | None] = [None] * len(rows)
    shard = np.searchsorted(starts, rows, side="right") - 1
    for k, pf in enumerate(parquet):
        mine = np.flatnonzero(shard == k)
        if not len(mine):
            continue
        local = rows[mine] - starts[k]
        order = np.argsort(local, kind="stable")
        local_sorted = local[order]
        offset = 0
        for batch in pf.iter_batches(batch_size=_TEXT_BATCH, columns=[column]):
            low, high = np.searchsorted(local_sorted, [offset, offset + batch.num_rows])
            if high > low:
                picked = batch.column(0).take(pa.array(local_sorted[low:high] - offset))
                for slot, text in zip(
                    mine[order[low:high]].tolist(), picked.to_pylist(), strict=True
                ):
                    texts[slot] = str(text)
            offset += batch.num_rows
    return texts  # type: ignore[return-value]
