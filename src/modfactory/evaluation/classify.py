"""Classify many texts with a trained model: batched, concurrent, resumable.

Rate limits are the backend's (the Mistral backend's limiter is shared by all workers).

Each answered batch is written to a checkpoint file at once, so a stage restarted after a
crash or a failure sends only the batches that never came back (paying for each text
once). When a batch fails, no new batch starts, but those in flight are let finish and
are checkpointed before the failure is raised. Checkpoints belong to one plan — model,
batch size and the exact texts — and are discarded when the plan changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from modfactory.backends.base import BackendError
from modfactory.fileio import atomic_output


async def classify_texts(
    classify: Callable[[str, list[str]], Awaitable[list[Any]]],
    model: str,
    texts: list[str],
    checkpoints: Path,
    *,
    batch_size: int,
    concurrency: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Any]:
    """``classify(model, batch)`` over all texts (e.g. a backend's ``classify`` or
    ``moderate``): one result per text, in order; checkpointed batches are not sent."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    plan = {"model": model, "batch_size": batch_size, "texts": len(texts), "sha256": digest}
    checkpoints.mkdir(parents=True, exist_ok=True)
    plan_file = checkpoints / "plan.json"
    if not plan_file.exists() or json.loads(plan_file.read_text()) != plan:
        for stale in checkpoints.glob("batch-*.json"):
            stale.unlink()
        plan_file.write_text(json.dumps(plan))

    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    results: list[list[Any] | None] = [None] * len(batches)
    for i in range(len(batches)):
        saved = checkpoints / f"batch-{i:06d}.json"
        if saved.exists():
            results[i] = json.loads(saved.read_text())
    done = [sum(len(b) for b, r in zip(batches, results, strict=True) if r is not None)]
    if progress:
        progress("texts classified", done[0], len(texts))

    slots = asyncio.Semaphore(concurrency)
    failures: list[Exception] = []

    async def send(i: int) -> None:
        async with slots:
            if failures:  # after a failure, start nothing new; let answered batches land
                return
            try:
                scores = await classify(model, batches[i])
            except Exception as exc:
                failures.append(exc)
                return
        if len(scores) != len(batches[i]):
            failures.append(
                BackendError(f"{model} answered {len(scores)} results for {len(batches[i])} texts")
            )
            return
        with atomic_output(checkpoints / f"batch-{i:06d}.json") as tmp:
            tmp.write_text(json.dumps(scores))
        results[i] = scores
        done[0] += len(batches[i])
        if progress:
            progress("texts classified", done[0], len(texts))

    await asyncio.gather(*(send(i) for i, result in enumerate(results) if result is None))
    if failures:
        raise failures[0]
    return [scores for batch in results for scores in batch or []]
