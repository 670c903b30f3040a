"""Moderators' corrections as data: compacted into parquet in the ``google/civil_comments``
schema (``text`` and one score column per label, 1.0 flagged / 0.0 not, plus who, when and
the log's sequence number), one row per text — the latest correction of a text wins —, and
added to a build: a stable share of the texts (by a hash of the text, so a text is always
on the same side) is the **live test set**; the rest joins the train split after the
recipe, never rebalanced by it and never in validation or test.

A correction here is a plain dict: ``text``, ``labels`` (the flagged ones), ``seq``,
``id``, ``reviewer``, ``at`` (ISO time), ``via``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modfactory.data.recipe import SAFE_LABEL, TARGET, RecipeError
from modfactory.values import CIVIL_COMMENTS_LABELS, FeedbackUse, SplitSummary

LIVE_SPLIT = "live"
_META = ("id", "seq", "reviewer", "at", "via")
FLAGGED_ABOVE = 0.5  # a score column in an imported file flags its label above this


@dataclass
class Corrections:
    """What a build adds: one correction per text, up to which number of the model name's
    log, and the share held out as the live test set."""

    rows: list[dict[str, Any]]
    upto: int
    share: float


def held_out(text: str, share: float) -> bool:
    """Is ``text`` in the live test set? The same answer on every machine and every run."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def latest_by_text(corrections: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One correction per text, the one numbered last; ordered by number (each with the
    fields a snapshot keeps, and only those)."""
    latest: dict[str, dict[str, Any]] = {}
    for given in corrections:
        row = {field: given.get(field) for field in ("text", "labels", *_META)}
        kept = latest.get(row["text"])
        if kept is None or row["seq"] >= kept["seq"]:
            latest[row["text"]] = row
    return sorted(latest.values(), key=lambda row: row["seq"])


def snapshot_bytes(corrections: Sequence[dict[str, Any]]) -> bytes:
    """The corrections as a parquet file in the civil_comments schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen = {label for row in corrections for label in row["labels"]}
    labels = [*CIVIL_COMMENTS_LABELS, *sorted(seen - set(CIVIL_COMMENTS_LABELS))]
    columns: dict[str, list[Any]] = {"text": [row["text"] for row in corrections]}
    for label in labels:
        columns[label] = [1.0 if label in row["labels"] else 0.0 for row in corrections]
    for meta in _META:
        columns[meta] = [row.get(meta) for row in corrections]
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def read_snapshot(data: bytes) -> list[dict[str, Any]]:
    """The corrections of a parquet file ``snapshot_bytes`` wrote."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    labels = [c for c in table.column_names if c != "text" and c not in _META]
    rows = []
    for record in table.to_pylist():
        row = {meta: record.get(meta) for meta in _META}
        row["text"] = record["text"]
        row["labels"] = [label for label in labels if (record.get(label) or 0) > FLAGGED_ABOVE]
        rows.append(row)
    return rows


def add_to_build(
    out_dir: Path, splits: dict[str, SplitSummary], corrections: Corrections, kept: Sequence[str]
) -> FeedbackUse:
    """Append the corrections to ``train.jsonl`` (all but the held-out share) and write the
    held-out ones as ``live.jsonl``; ``splits`` gains their counts."""
    rows, share = corrections.rows, corrections.share
    train_rows = [row for row in rows if not held_out(row["text"], share)]
    live_rows = [row for row in rows if held_out(row["text"], share)]
    ignored = sorted({label for row in rows for label in row["labels"]} - set(kept))
    train = splits["train"]
    with Path(train.file).open("a", encoding="utf-8") as f:
        for row in train_rows:
            f.write(_line(row, kept) + "\n")
    _count(train, train_rows, kept)
    if live_rows:
        path = out_dir / f"{LIVE_SPLIT}.jsonl"
        path.write_text("".join(_line(row, kept) + "\n" for row in live_rows), encoding="utf-8")
        live = SplitSummary(rows=0, safe=0, labels={label: 0 for label in kept}, file=str(path))
        splits[LIVE_SPLIT] = _count(live, live_rows, kept)
    return FeedbackUse(
        rows=len(rows),
        train_rows=len(train_rows),
        live_rows=len(live_rows),
        upto_seq=corrections.upto,
        ignored_labels=ignored,
    )


def _flagged(row: dict[str, Any], kept: Sequence[str]) -> list[str]:
    return [label for label in kept if label in row["labels"]]


def _line(row: dict[str, Any], kept: Sequence[str]) -> str:
    labels = _flagged(row, kept) or [SAFE_LABEL]
    return json.dumps({"text": row["text"], "labels": {TARGET: labels}})


def _count(
    split: SplitSummary, rows: Sequence[dict[str, Any]], kept: Sequence[str]
) -> SplitSummary:
    for row in rows:
        flagged = _flagged(row, kept)
        split.rows += 1
        split.safe += 0 if flagged else 1
        for label in flagged:
            split.labels[label] = split.labels.get(label, 0) + 1
    return split


# --- files of corrections (``modfactory feedback import``) -------------------------------
def read_corrections_file(path: Path, labels: Sequence[str]) -> list[dict[str, Any]]:
    """``{"text", "labels", "reviewer"}`` per row of a JSONL, CSV or parquet file: a
    ``labels`` field (an object label -> true/false, or a list of the flagged labels) or
    civil_comments score columns (flagged above 0.5). Every row is checked before any is
    returned; a bad one is named as ``file:row`` with the field at fault."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".parquet"):
        raise RecipeError(f"{path}: give a .jsonl, .csv or .parquet file")
    try:
        records = _records(path, suffix)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path}: cannot be read: {exc}") from None
    rows = []
    for number, record in enumerate(records, 1):
        rows.append(_correction(record, labels, f"{path}:{number}"))
    if not rows:
        raise RecipeError(f"{path}: no rows")
    return rows


def _records(path: Path, suffix: str) -> list[dict[str, Any]]:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"line {number} is not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is not a JSON object")
            records.append(record)
    return records


def _correction(record: dict[str, Any], labels: Sequence[str], where: str) -> dict[str, Any]:
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RecipeError(f"{where}: field 'text' is missing or empty")
    given = record.get("labels")
    if isinstance(given, str) and given.strip().startswith(("{", "[")):
        given = json.loads(given)  # a CSV cell holding JSON
    if given is None:
        flagged = [label for label in labels if _score(record.get(label), where, label)]
    elif isinstance(given, dict):
        flagged = [label for label, on in given.items() if _truthy(on, where, f"labels.{label}")]
        named = list(given)
    elif isinstance(given, list) and all(isinstance(label, str) for label in given):
        flagged = named = list(given)
    else:
        raise RecipeError(f"{where}: field 'labels' must be an object or a list of label names")
    for label in named if given is not None else ():
        if label not in labels:
            raise RecipeError(
                f"{where}: field 'labels.{label}': the model has no label {label!r} "
                f"(its labels: {', '.join(labels)})"
            )
    reviewer = record.get("reviewer")
    return {"text": text, "labels": flagged, "reviewer": str(reviewer) if reviewer else None}


def _score(value: Any, where: str, label: str) -> bool:
    if value in (None, ""):
        return False
    try:
        return float(value) > FLAGGED_ABOVE
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: field {label!r}: {value!r} is not a score in [0, 1]") from None


def _truthy(value: Any, where: str, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no", ""):
        return False
    raise RecipeError(f"{where}: field {field!r}: {value!r} is not true or false")
