"""One shard's work: the source cut into shard inputs (the plan), and one shard scored
into its output object.

Every object is written whole or not at all (``ArtifactStore.save_file``): a worker lost
mid-shard leaves no part behind, and a part found whole is the shard done — its worker
was lost after writing it and before saying so — so it is counted, not scored again.
An output part holds, per row, the ``id`` (the id column's value, else the row's number
in the source), ``model_id``, and per label ``<label>_score`` and ``<label>_flagged``
(at the job's thresholds); ``text`` too with ``keep_text``.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modfactory.artifacts import ArtifactStore, score_key
from modfactory.backends.base import BackendError, Scorer, TargetScores
from modfactory.data.archive import Archive
from modfactory.store.score_job import ScoreJob
from modfactory.store.score_jobs import ScoreJobStore

if TYPE_CHECKING:
    import pyarrow as pa

CANCEL_CHECK_EVERY = 2.0  # s between two looks at whether the job was cancelled


class ScoringStopped(Exception):
    """The job ended (cancelled, failed) while a shard of it was being scored."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def output_key(score_id: str, index: int) -> str:
    return score_key(score_id, part_name(index))


def input_key(score_id: str, index: int) -> str:
    return score_key(score_id, "input", part_name(index))


def stage_inputs(
    archive: Archive,
    artifacts: ArtifactStore,
    score_id: str,
    shard_rows: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[int], int]:
    """Cut ``archive`` into shard inputs (``row``, ``id``, ``text``) in the store; the
    rows of each shard, and the characters of all texts. Memory holds one shard."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows: list[int] = []
    characters = 0
    with artifacts.scratch() as scratch:
        for index, table in enumerate(archive.shards(shard_rows)):
            path = scratch / part_name(index)
            pq.write_table(table, path)
            artifacts.save_file(path, input_key(score_id, index), move=True)
            rows.append(table.num_rows)
            characters += int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0)
            if progress:
                progress(sum(rows))
    return rows, characters


def shard_texts(artifacts: ArtifactStore, score_id: str, index: int) -> list[str]:
    """The texts of shard ``index``'s input, in order."""
    return _parquet(artifacts.load(input_key(score_id, index))).column("text").to_pylist()


def replaying(results: list[list[TargetScores]]) -> Scorer:
    """A scorer answering each call with the next of ``results`` (a batch job's, one per
    request as submitted): ``score_shard`` then writes them as it writes any model's."""
    answers = iter(results)

    async def replay(texts: list[str]) -> list[TargetScores]:
        found = next(answers, None)
        if found is None or len(found) != len(texts):
            raise BackendError("the batch job's results do not match the shard's requests")
        return found

    return replay


def _parquet(data: bytes) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data))


def flag_counts(table: pa.Table, labels: list[str]) -> dict[str, int]:
    """Rows flagged per label in an output part."""
    import pyarrow.compute as pc

    return {label: int(pc.sum(table.column(f"{label}_flagged")).as_py() or 0) for label in labels}


async def score_shard(
    job: ScoreJob,
    index: int,
    scorer: Scorer,
    target: str,
    artifacts: ArtifactStore,
    store: ScoreJobStore,
    batch_rows: int,
) -> dict[str, int]:
    """Score shard ``index`` of ``job`` into its output part; its rows flagged per label.
    A part already whole is counted instead. ScoringStopped when the job ends meanwhile."""
    done_key = output_key(job.id, index)
    if await asyncio.to_thread(artifacts.exists, done_key):
        part = _parquet(await asyncio.to_thread(artifacts.load, done_key))
        return flag_counts(part, job.labels)
    shard = _parquet(await asyncio.to_thread(artifacts.load, input_key(job.id, index)))
    texts: list[str] = shard.column("text").to_pylist()
    scores: dict[str, list[float]] = {label: [] for label in job.labels}
    looked = time.monotonic()
    for start in range(0, len(texts), batch_rows):
        chunk = texts[start : start + batch_rows]
        results = await scorer(chunk)
        if len(results) != len(chunk):
            raise BackendError(f"the model answered {len(results)} results for {len(chunk)} texts")
        for result in results:
            found = result[target]["scores"]
            for label, column in scores.items():
                column.append(found.get(label, 0.0))
        await store.record_rows(job.id, index, start + len(chunk))
        if time.monotonic() - looked > CANCEL_CHECK_EVERY:
            looked = time.monotonic()
            now = await store.get(job.id)
            if now.state.terminal:
                raise ScoringStopped(f"scoring job {job.id} is {now.state}")
    part = output_table(job, shard, scores)
    with artifacts.scratch() as scratch:
        await asyncio.to_thread(_save, part, scratch / part_name(index), artifacts, done_key)
    return flag_counts(part, job.labels)


def output_table(job: ScoreJob, shard: pa.Table, scores: dict[str, list[float]]) -> pa.Table:
    """The output part of a shard: ids, the model, each label's score and flag."""
    import numpy as np
    import pyarrow as pa

    ids: Any = shard.column("id") if job.spec.id_column else shard.column("row")
    columns: dict[str, Any] = {
        "id": ids,
        "model_id": pa.array([job.spec.model_id] * shard.num_rows).dictionary_encode(),
    }
    for label in job.labels:
        values = np.asarray(scores[label], dtype=np.float64)
        cut = job.thresholds[label]
        flagged = values > cut if job.spec.thresholds == "0.5" else values >= cut
        columns[f"{label}_score"] = pa.array(values)
        columns[f"{label}_flagged"] = pa.array(flagged)
    if job.spec.keep_text:
        columns["text"] = shard.column("text")
    return pa.table(columns)


def _save(table: pa.Table, path: Path, artifacts: ArtifactStore, key: str) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    artifacts.save_file(path, key, move=True)
