"""Is ``shuffle_indices`` still what the installed ``datasets`` does?

Before the fast build is trusted, a handful of small index-only datasets (JSONL shards of
row numbers, several seeds, buffer sizes and shard counts, a buffer larger than the split,
``n`` larger than the split) are shuffled by ``datasets`` itself and by ``shuffle_indices``;
any difference means a ``datasets`` release changed its algorithm, and builds stream
instead. The verdict (about a second to reach) is kept in memory and in
``DATA_DIR/cache/shuffle-guard.json``, for this ``datasets`` version and this
``shuffle_indices`` code only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from importlib.metadata import version
from pathlib import Path

from modfactory.data import shuffle_indices
from modfactory.data.shuffle_indices import shuffled_take
from modfactory.fileio import atomic_output
from modfactory.logs import adopt_library_loggers

# (rows per shard, seed, buffer size, n)
CASES: tuple[tuple[tuple[int, ...], int, int, int], ...] = (
    ((1000,), 42, 100, 500),  # one shard, buffer much smaller than the split
    ((600, 250, 150), 42, 256, 1000),  # three shards, uneven, all rows taken
    ((40,) * 13, 7, 100, 400),  # more shards than the 10 the buffer reads from at once
    ((100, 200), 1, 1000, 250),  # buffer larger than the split
    ((120, 80), 3, 37, 1000),  # n larger than the split
    ((5,) * 25, 0, 7, 60),  # tiny batches
)


def mismatch(cache_dir: Path | None = None) -> str | None:
    """None when ``shuffle_indices`` reproduces the installed ``datasets``; else what differs."""
    key = {"datasets": version("datasets"), "algorithm": _algorithm_digest()}
    cache = cache_dir / "shuffle-guard.json" if cache_dir else None
    if cache is not None:
        try:
            saved = json.loads(cache.read_text())
            if saved["key"] == key:
                return saved["mismatch"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    verdict = _mismatch()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(cache) as tmp:
            tmp.write_text(json.dumps({"key": key, "mismatch": verdict}))
    return verdict


def _algorithm_digest() -> str:
    return hashlib.sha256(Path(shuffle_indices.__file__).read_bytes()).hexdigest()[:16]


@functools.cache
def _mismatch() -> str | None:
    import datasets
    from datasets import load_dataset

    adopt_library_loggers("datasets", "huggingface_hub")

    with tempfile.TemporaryDirectory(prefix="modfactory-guard-") as directory:
        for sizes, seed, buffer_size, n in CASES:
            files, start = [], 0
            for number, size in enumerate(sizes):
                path = Path(directory) / f"{len(files)}-{sizes}-{seed}-{number:05d}.jsonl"
                path.write_text("".join(json.dumps({"i": start + j}) + "\n" for j in range(size)))
                files.append(str(path))
                start += size
            stream = load_dataset("json", data_files={"train": files}, streaming=True)["train"]
            expected = [
                row["i"] for row in stream.shuffle(seed=seed, buffer_size=buffer_size).take(n)
            ]
            got = shuffled_take(sizes, seed, buffer_size, n).tolist()
            if got != expected:
                reason = (
                    f"datasets {datasets.__version__} shuffles {len(sizes)} shard(s) of "
                    f"{sum(sizes)} rows (seed {seed}, buffer {buffer_size}, take {n}) "
                    "differently from modfactory's fast build"
                )
                return reason
    return None
