"""Classify many texts with a trained model: batched, concurrent, resumable.

Rate limits are the backend's (the Mistral backend's limiter is shared by all workers).

Each answered batch is written to a checkpoint (an object of the artifact store) at once,
so a stage restarted after a crash or a failure — on any machine — sends only the batches
that never came back (paying for each text once). When a batch fails, no new batch starts,
but those in flight are let finish and are checkpointed before the failure is raised.
Checkpoints belong to one plan — model, batch size and the exact texts — and are discarded
when the plan changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from modfactory.artifacts import Folder
from modfactory.backends.base import BackendError


async def classify_texts(
    classify: Callable[[str, list[str]], Awaitable[list[Any]]],
    model: str,
    texts: list[str],
    checkpoints: Folder,
    *,
    batch_size: int,
    concurrency: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Any]:
    """``classify(model, batch)`` over all texts (e.g. a backend's ``classify`` or
    ``moderate``): one result per text, in order; checkpointed batches are not sent."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    plan = {"model": model, "batch_size": batch_size, "texts": len(texts), "sha256": digest}
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    results = await asyncio.to_thread(_resumed, checkpoints, plan, len(batches))
    done = [sum(len(b) for b, r in zip(batches, results, strict=True) if r is not None)]
    if progress:
        progress("texts classified", done[0], len(texts))

    slots = asyncio.Semaphore(concurrency)
    failures: list[Exception] = []

    async def send(i: int) -> None:
        """One batch classified and checkpointed; it holds its slot until it is saved."""
        async with slots:
            if failures:  # after a failure, start nothing new; let answered batches land
                return
            try:
                scores = await classify(model, batches[i])
                if len(scores) != len(batches[i]):
                    raise BackendError(
                        f"{model} answered {len(scores)} results for {len(batches[i])} texts"
                    )
                saved = json.dumps(scores).encode()
                await asyncio.to_thread(checkpoints.write, _batch(i), saved)
            except Exception as exc:  # not saved (the store away too): sent again next time
                failures.append(exc)
                return
        results[i] = scores
        done[0] += len(batches[i])
        if progress:
            progress("texts classified", done[0], len(texts))

    await asyncio.gather(*(send(i) for i, result in enumerate(results) if result is None))
    if failures:
        raise failures[0]
    return [scores for batch in results for scores in batch or []]


def _batch(i: int) -> str:
    return f"batch-{i:06d}.json"


def _resumed(checkpoints: Folder, plan: dict[str, Any], batches: int) -> list[list[Any] | None]:
    """The batches answered before under the same plan; a new plan discards them all."""
    saved = checkpoints.read("plan.json")
    names = checkpoints.names()
    if saved is None or json.loads(saved) != plan:
        for stale in names:
            if stale.startswith("batch-"):
                checkpoints.delete(stale)
        checkpoints.write("plan.json", json.dumps(plan).encode())
        return [None] * batches
    results: list[list[Any] | None] = [None] * batches
    for i in range(batches):
        if _batch(i) in names and (data := checkpoints.read(_batch(i))) is not None:
            results[i] = json.loads(data)
    return results
