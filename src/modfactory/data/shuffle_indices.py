"""Which rows ``IterableDataset.shuffle(seed, buffer_size).take(n)`` yields, computed over
row indices instead of rows.

``datasets`` (5.x, Arrow-backed sources such as parquet and JSON files) shuffles like this:

1. the shard (file) order is shuffled with a copy of ``np.random.default_rng(seed)``;
2. the shards are split into up to ``max_buffer_input_shards`` (10) contiguous groups, each
   group's rows re-batched into ``buffer_size // 10``-row batches, and the groups are read
   round-robin, one batch each, until all are exhausted;
3. batches fill a buffer; whenever it holds ``buffer_size`` rows or more, a permutation of
   all of them (drawn from another copy of the generator) is applied, all but
   ``buffer_size // 2`` are yielded and the rest stay, in permuted order; at the end, the
   rest is permuted once more and yielded;
4. ``take(n)`` keeps the first ``n``.

Because only indices move, a 1.8M-row split costs a few int64 arrays. ``guard.py`` checks
this against the installed ``datasets`` before it is trusted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from copy import deepcopy

import numpy as np

MAX_BUFFER_INPUT_SHARDS = 10  # IterableDataset.shuffle's default


def shard_order(n_shards: int, seed: int) -> list[int]:
    """The order ``shuffle`` reads the shards in (``_shuffle_gen_kwargs``)."""
    order = list(range(n_shards))
    deepcopy(np.random.default_rng(seed)).shuffle(order)
    return order


def _group_batches(
    shard_rows: Sequence[int], order: Sequence[int], buffer_size: int
) -> Iterator[np.ndarray]:
    """Batches of global row indices in the order the shuffle buffer receives them."""
    starts = np.concatenate([[0], np.cumsum(shard_rows)[:-1]]).astype(np.int64)
    n_groups = min(len(order), MAX_BUFFER_INPUT_SHARDS)
    batch = max(1, buffer_size // MAX_BUFFER_INPUT_SHARDS)
    div, mod = divmod(len(order), n_groups)
    groups: list[list[np.ndarray]] = []
    for index in range(n_groups):
        first = div * index + min(index, mod)
        shards = order[first : first + div + (1 if index < mod else 0)]
        rows = np.concatenate(
            [np.arange(starts[s], starts[s] + shard_rows[s], dtype=np.int64) for s in shards]
        )
        groups.append([rows[i : i + batch] for i in range(0, len(rows), batch)])
    for position in range(max((len(g) for g in groups), default=0)):
        for batches in groups:  # round robin; an exhausted group is skipped
            if position < len(batches):
                yield batches[position]


def shuffled_take(shard_rows: Sequence[int], seed: int, buffer_size: int, n: int) -> np.ndarray:
    """Global row indices (shards concatenated in their given order) that
    ``shuffle(seed=seed, buffer_size=buffer_size).take(n)`` yields, in yield order."""
    if not shard_rows or sum(shard_rows) == 0 or n <= 0:
        return np.empty(0, dtype=np.int64)
    order = shard_order(len(shard_rows), seed)
    rng = deepcopy(np.random.default_rng(seed))
    keep = buffer_size // 2
    taken: list[np.ndarray] = []
    count = 0
    pending: list[np.ndarray] = []
    pending_rows = 0
    for batch in _group_batches(shard_rows, order, buffer_size):
        pending.append(batch)
        pending_rows += len(batch)
        if pending_rows >= buffer_size:
            shuffled = np.concatenate(pending)[rng.permutation(pending_rows)]
            taken.append(shuffled[: pending_rows - keep])
            count += pending_rows - keep
            if count >= n:
                return np.concatenate(taken)[:n]
            pending, pending_rows = [shuffled[pending_rows - keep :]], keep
    if pending_rows:
        taken.append(np.concatenate(pending)[rng.permutation(pending_rows)])
    return np.concatenate(taken)[:n]
