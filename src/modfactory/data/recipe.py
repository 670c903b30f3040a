"""The cookbook's dataset recipe, row for row, without pandas.

Binarize each score at ``score > threshold``; per split, keep the first
``int(total * zero_flags_fraction)`` unflagged rows and the first flagged rows under a
per-label cap; drop labels rarer than ``min_label_fraction`` over all splits; write the
Classifier Factory JSONL format. The arithmetic mirrors the cookbook's expressions so the
same rows come out.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from modfactory.fileio import atomic_output
from modfactory.values import RecipeParams

if TYPE_CHECKING:
    import numpy as np

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SAFE_LABEL = "safe"
TARGET = "moderation"


class RecipeError(ValueError):
    """The source data cannot be turned into a training set; the message says why."""


class Row(NamedTuple):
    """One binarized example: its text and one flag per configured label (a tuple: a
    million of them are made in a second)."""

    text: str
    flags: tuple[bool, ...]

    @property
    def flagged(self) -> bool:
        return any(self.flags)


@dataclass
class SplitCounts:
    """How many rows a split holds, how many are unflagged, and each label's count."""

    rows: int = 0
    safe: int = 0
    labels: dict[str, int] = field(default_factory=dict)


def binarize(example: Mapping[str, Any], params: RecipeParams, where: str = "the source") -> Row:
    """``score > threshold`` for every label column, as the cookbook's converter does."""
    text = example.get(params.text_column)
    if text is None:
        raise RecipeError(f"{where}: text column {params.text_column!r} is empty")
    flags = []
    for column in params.label_columns:
        score = example.get(column)
        if score is None or (isinstance(score, float) and math.isnan(score)):
            raise RecipeError(f"{where}: label column {column!r} has no score for {text[:60]!r}")
        flags.append(score > params.threshold)
    return Row(str(text), tuple(flags))


def check_columns(columns: Sequence[str] | None, params: RecipeParams, where: str) -> None:
    """Fail early, naming the missing column and the columns that exist."""
    if columns is None:
        return
    wanted = [params.text_column, *params.label_columns]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise RecipeError(
            f"{where}: column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)} not found; columns found: "
            f"{', '.join(columns)}. Set MODFACTORY_TEXT_COLUMN / MODFACTORY_LABEL_COLUMNS "
            f"(or --text-column / --label-columns) to match your data."
        )


def filter_split(rows: Sequence[Row], params: RecipeParams, n_labels: int) -> list[Row]:
    """The cookbook's ``filter_dataset`` on binarized rows (see ``filter_positions``)."""
    import numpy as np

    flags = np.array([row.flags for row in rows], dtype=bool).reshape(len(rows), n_labels)
    return [rows[i] for i in filter_positions(flags, params).tolist()]


def filter_positions(flags: np.ndarray, params: RecipeParams) -> np.ndarray:
    """The cookbook's ``filter_dataset``: cap unflagged rows and each label's share.

    ``flags`` holds one row of label flags per taken example, in the order they were
    taken; the result is the positions kept, in the (seeded) order they are written. The
    arithmetic is the cookbook's, step for step; its final shuffle (unseeded there) is a
    permutation seeded by the recipe's seed here, so builds are reproducible.
    """
    import numpy as np

    flagged = flags.any(axis=1)
    non_zero = np.flatnonzero(flagged)
    zero = np.flatnonzero(~flagged)

    total_samples = len(non_zero) / (1 - params.zero_flags_fraction)
    desired_zero = int(total_samples * params.zero_flags_fraction)
    desired_non_zero = int(total_samples * (1 - params.zero_flags_fraction))

    candidates = non_zero[:desired_non_zero]
    kept = np.concatenate(
        [
            candidates[_under_the_caps(flags[candidates], desired_non_zero, params)],
            zero[:desired_zero],
        ]
    )
    return kept[np.random.default_rng(params.seed).permutation(len(kept))]


def as_rows(texts: Iterable[str], flags: Iterable[tuple[bool, ...]]) -> list[Row]:
    """``[Row(text, f) for ...]`` at C speed (``tuple.__new__`` skips NamedTuple's
    Python-level constructor; a build makes hundreds of thousands)."""
    return list(map(functools.partial(tuple.__new__, Row), zip(texts, flags, strict=True)))


def flag_tuples(flags: np.ndarray) -> list[tuple[bool, ...]]:
    """Each row of a boolean matrix as a tuple of bools, one shared tuple per pattern."""
    import numpy as np

    masks = flags @ (1 << np.arange(flags.shape[1], dtype=np.int64))
    pattern = {
        mask: tuple(bool(mask >> j & 1) for j in range(flags.shape[1]))
        for mask in np.unique(masks).tolist()
    }
    return list(map(pattern.__getitem__, masks.tolist()))


def _under_the_caps(flags: np.ndarray, desired: int, params: RecipeParams) -> np.ndarray:
    """Which rows the cookbook's loop keeps: row by row, a row is skipped when one of its
    labels already counts ``c`` kept rows with ``(c + 1) / desired > max_label_fraction``.

    Counts only grow, so once a label is at its cap every later row carrying it is skipped:
    between two such closings the rows are kept wholesale, found with one cumulative sum
    (at most one pass per label; the cap is the very float comparison of the loop).
    """
    import numpy as np

    n_rows, n_labels = flags.shape
    if n_rows == 0:
        return np.zeros(0, dtype=bool)
    over = (np.arange(n_rows + 1, dtype=np.int64) + 1) / desired > params.max_label_fraction
    cap = int(np.argmax(over)) if over.any() else n_rows + 1  # the first count refused
    keep = np.zeros(n_rows, dtype=bool)
    counts = np.zeros(n_labels, dtype=np.int64)
    rows = np.arange(n_rows)
    while len(rows):
        sub = flags[rows]
        before = counts + np.cumsum(sub, axis=0, dtype=np.int64) - sub  # kept so far
        refused = (sub & (before >= cap)).any(axis=1)
        first = int(np.argmax(refused)) if refused.any() else len(rows)
        keep[rows[:first]] = True
        if first == len(rows):
            break
        counts = before[first]
        closed = counts >= cap
        rest = rows[first + 1 :]
        rows = rest[~(flags[rest] & closed).any(axis=1)]
    return keep


def labels_to_drop(splits: Mapping[str, list[Row]], params: RecipeParams) -> list[str]:
    """Labels whose share over all filtered splits is under ``min_label_fraction``."""
    total = sum(len(rows) for rows in splits.values())
    if total == 0:
        return []
    patterns = Counter(row.flags for rows in splits.values() for row in rows)
    dropped = []
    for i, label in enumerate(params.label_columns):
        count = sum(times for flags, times in patterns.items() if flags[i])
        if count / total < params.min_label_fraction:
            dropped.append(label)
    return dropped


def row_labels(row: Row, params: RecipeParams, kept: Sequence[str]) -> list[str]:
    """The row's labels among ``kept`` in column order, or ``["safe"]``."""
    labels = [
        label
        for label, flag in zip(params.label_columns, row.flags, strict=True)
        if flag and label in kept
    ]
    return labels or [SAFE_LABEL]


def jsonl_lines(rows: Iterable[Row], params: RecipeParams, kept: Sequence[str]) -> Iterator[str]:
    """Classifier Factory lines: ``{"text": ..., "labels": {"moderation": [...]}}``
    (exactly ``json.dumps`` of that object; the labels part is encoded once per pattern)."""
    quoted = encode_basestring_ascii  # what json.dumps does with a str, minus its overhead
    encoded: dict[tuple[bool, ...], str] = {}
    for text, flags in rows:
        labels = encoded.get(flags)
        if labels is None:
            labels = encoded[flags] = ', "labels": ' + json.dumps(
                {TARGET: row_labels(Row(text, flags), params, kept)}
            )
        yield '{"text": ' + quoted(text) + labels + "}"


def count_split(rows: Sequence[Row], params: RecipeParams, kept: Sequence[str]) -> SplitCounts:
    """Row, unflagged and per-label counts over the kept labels (the cookbook's charts)."""
    index = {label: params.label_columns.index(label) for label in kept}
    counts = SplitCounts(rows=len(rows), labels={label: 0 for label in kept})
    for flags, times in Counter(row.flags for row in rows).items():
        flagged = False
        for label, i in index.items():
            if flags[i]:
                counts.labels[label] += times
                flagged = True
        counts.safe += 0 if flagged else times
    return counts


def write_jsonl(path: Path, lines: Iterable[str]) -> None:
    """Write atomically: a crash never leaves a half-written split behind."""
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        batch: list[str] = []
        for line in lines:
            batch.append(line)
            if len(batch) == 10_000:
                f.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            f.write("\n".join(batch) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a Classifier Factory file, naming the line at fault when one is malformed."""
    with path.open(encoding="utf-8") as f:
        return parse_jsonl(f, str(path))


def parse_jsonl(lines: Iterable[str], where: str) -> list[dict[str, Any]]:
    """Classifier Factory rows from ``lines``; a malformed one is named as ``where:line``."""
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record.get("text"), str) or not isinstance(
                record.get("labels"), dict
            ):
                raise ValueError("needs a 'text' string and a 'labels' object")
        except (ValueError, AttributeError) as exc:
            raise RecipeError(f"{where}:{number}: not a Classifier Factory row ({exc})") from None
        records.append(record)
    return records
