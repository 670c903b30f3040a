"""The build's fast path: the cookbook's rows, selected over indices, read column-wise.

``shuffle_indices`` gives the row numbers ``shuffle(seed, buffer_size=n).take(n)`` would
yield; only the label columns are read (memory-mapped parquet, two shards at a time),
binarized and filtered with numpy, and the text column is decoded a batch at a time and
only the rows the recipe keeps are turned into Python strings. Same rows, same order, as
streaming — at Arrow speed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modfactory.data.recipe import (
    RecipeError,
    Row,
    as_rows,
    check_columns,
    filter_positions,
    flag_tuples,
)
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

    flags = np.zeros((len(selected), len(params.label_columns)), dtype=bool)

    def binarize(k: int) -> None:  # one shard's taken rows; shards decode in parallel
        mine = np.flatnonzero(shard == k)
        if len(mine):
            name, local = Path(files[k]).name, selected[mine] - starts[k]
            flags[mine] = _shard_flags(parquet[k], local, params, where, name)
            _check_texts(parquet[k], local, params.text_column, f"{where} ({name})")

    _each_shard(binarize, len(parquet))
    positions = filter_positions(flags, params)
    texts = _read_texts(parquet, starts, selected[positions], params.text_column)
    return as_rows(texts, flag_tuples(flags[positions]))


def _each_shard(work: Callable[[int], None], shards: int) -> None:
    """``work(k)`` for every shard, a few at a time (Arrow decodes without the GIL)."""
    if shards < 2:
        for k in range(shards):
            work(k)
        return None
    with ThreadPoolExecutor(max_workers=min(shards, _DECODERS)) as pool:
        for done in [pool.submit(work, k) for k in range(shards)]:
            done.result()  # the first shard's error is the one raised
    return None


def _shard_flags(
    pf: pq.ParquetFile, local: np.ndarray, params: RecipeParams, where: str, name: str
) -> np.ndarray:
    """``score > threshold`` for each label of the shard's rows ``local`` (in that order)."""
    labels = list(params.label_columns)
    table = pf.read(columns=labels)
    flags = np.empty((len(local), len(labels)), dtype=bool)
    for j, column in enumerate(labels):
        values = table.column(column)
        if not (
            pa.types.is_floating(values.type)
            or pa.types.is_integer(values.type)
            or pa.types.is_boolean(values.type)
        ):
            raise RecipeError(
                f"{where} ({name}): label column {column!r} holds {values.type}, "
                "not scores in [0, 1]"
            )
        scores = _float64(values)[local]
        missing = np.flatnonzero(np.isnan(scores))
        if len(missing):
            raise RecipeError(
                f"{where}: label column {column!r} has no score in {name} row {local[missing[0]]}"
            )
        flags[:, j] = scores > params.threshold
    return flags


def _float64(values: pa.ChunkedArray) -> np.ndarray:
    """Numeric or boolean scores as float64, NaN where missing (read from Arrow's buffers:
    ``to_numpy`` and ``fill_null`` import pandas, a third of a second)."""
    exact = pc.cast(values, pa.float64()).combine_chunks()
    if len(exact) == 0:
        return np.empty(0, dtype=np.float64)
    scores = np.frombuffer(exact.buffers()[1], np.float64, len(exact), exact.offset * 8)
    if exact.null_count:
        missing = pc.cast(pc.is_null(exact), pa.uint8())
        scores = scores.copy()
        scores[np.frombuffer(missing.buffers()[1], np.uint8, len(missing)).astype(bool)] = np.nan
    return scores


def _indices(positions: np.ndarray) -> pa.Array:
    """Row positions as an Arrow int64 array, sharing numpy's memory (``pa.array`` would
    import pandas to ask whether it is given a DataFrame)."""
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(positions), [None, pa.py_buffer(positions)])


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


def _lean_memory_pool() -> None:
    """Arrow's jemalloc pool (else the system allocator) unless ARROW_DEFAULT_MEMORY_POOL
    names one: the default mimalloc keeps about 100 MB more of a build's freed buffers."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a build of pyarrow without it
        pa.set_memory_pool(pa.system_memory_pool())


_lean_memory_pool()

_TEXT_BATCH = 32_768  # rows of text decoded at once
_DECODERS = 2  # shards decoded at once


def _read_texts(
    parquet: Sequence[pq.ParquetFile], starts: np.ndarray, rows: np.ndarray, column: str
) -> list[str]:
    """The text of each global row number in ``rows``, in that order: each shard's wanted
    rows picked a batch at a time (shards in parallel), then put in order at once."""
    shard = np.searchsorted(starts, rows, side="right") - 1
    found: list[tuple[np.ndarray, pa.Array] | None] = [None] * len(parquet)

    def pick(k: int) -> None:
        mine = np.flatnonzero(shard == k)
        if not len(mine):
            return
        local = rows[mine] - starts[k]
        order = np.argsort(local, kind="stable")
        local_sorted = local[order]
        picked, offset = [], 0
        for batch in parquet[k].iter_batches(batch_size=_TEXT_BATCH, columns=[column]):
            low, high = np.searchsorted(local_sorted, [offset, offset + batch.num_rows])
            if high > low:
                picked.append(batch.column(0).take(_indices(local_sorted[low:high] - offset)))
            offset += batch.num_rows
        found[k] = (mine[order], pa.concat_arrays(picked))

    _each_shard(pick, len(parquet))
    parts = [part for part in found if part is not None]
    if not parts:
        return []
    slots = np.concatenate([slot for slot, _ in parts])
    texts = pa.concat_arrays([picked for _, picked in parts]).take(_indices(np.argsort(slots)))
    values = texts.to_pylist()
    if pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type):
        return values
    return [str(value) for value in values]  # as streaming does with a non-text column
