"""Every correction of a model name, read from where it is: the newest parquet snapshot in
the artifact store (``feedback/<name>/upto-<n>.parquet``) plus the log in Redis above
``n``. The build compacts: it writes a new snapshot (one text, one row: the latest
correction wins), then trims the log up to it — a crash in between leaves both, and the
next reader sees the same corrections. One compaction at a time (a Redis lock); a reader
that finds the log trimmed past its snapshot (a compaction finished meanwhile) reads again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from modfactory.artifacts import ArtifactNotFound, ArtifactStore, ArtifactsUnavailable, feedback_key
from modfactory.data.feedback import latest_by_text, read_snapshot, snapshot_bytes
from modfactory.store.feedback import FeedbackLog

log = logging.getLogger("modfactory.stages.feedback")
SNAPSHOTS_KEPT = 3  # older ones are deleted (a reader may still be reading the one before)
LOCK_SECONDS = 300
_SNAPSHOT = re.compile(r"upto-(\d+)\.parquet$")


async def all_corrections(
    store: ArtifactStore, feedback: FeedbackLog, name: str, *, compact: bool = False
) -> tuple[list[dict[str, Any]], int]:
    """(one correction per text, oldest first; the highest log number among them).
    ``compact``: write them as a new snapshot and trim the log (when no one else is)."""
    locked = compact and await feedback.lock(name, LOCK_SECONDS)
    try:
        for _ in range(10):
            base, base_seq = await asyncio.to_thread(_newest_snapshot, store, name)
            if base_seq and await feedback.restore(name, base_seq):
                log.warning(
                    "feedback of %s: Redis lost its log; counting on from #%d", name, base_seq
                )
            pending = await feedback.after(name, base_seq)
            if await feedback.trimmed(name) <= base_seq:
                break
        else:
            raise ArtifactsUnavailable(f"feedback of {name!r}: the snapshots keep changing")
        rows = latest_by_text([*base, *(c.model_dump(mode="json") for c in pending)])
        upto = max([base_seq, *(c.seq for c in pending)])
        if locked and pending:
            await asyncio.to_thread(_write_snapshot, store, name, rows, upto)
            await feedback.trim(name, upto)
            log.info("feedback of %s compacted: %d texts up to #%d", name, len(rows), upto)
        return rows, upto
    finally:
        if locked:
            await feedback.unlock(name)


def _newest_snapshot(store: ArtifactStore, name: str) -> tuple[list[dict[str, Any]], int]:
    for _ in range(3):
        listed = store.list(feedback_key(name))
        keys = [(int(m.group(1)), key) for key in listed if (m := _SNAPSHOT.search(key))]
        if not keys:
            return [], 0
        seq, key = max(keys)
        try:
            return read_snapshot(store.load(key)), seq
        except ArtifactNotFound:
            continue  # deleted by a compaction that just wrote a newer one
    raise ArtifactsUnavailable(f"feedback of {name!r}: the snapshots keep changing")


def _write_snapshot(store: ArtifactStore, name: str, rows: list[dict[str, Any]], upto: int) -> None:
    store.save(feedback_key(name, f"upto-{upto:012d}.parquet"), snapshot_bytes(rows))
    keys = sorted(k for k in store.list(feedback_key(name)) if _SNAPSHOT.search(k))
    for old in keys[:-SNAPSHOTS_KEPT]:
        store.delete(old)
