"""Counting what each champion serves, for drift (``evaluation.drift``): every answer's
scores and flags are counted here, in memory, and added to the drift log in Redis every
``interval`` seconds — one pipeline per champion, off the request path."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from modfactory.serving.champions import ServedModel
from modfactory.store.drift import DriftLog, WindowCounts

log = logging.getLogger("modfactory.serving.drift")


class DriftMeter:
    def __init__(self, drift_log: DriftLog) -> None:
        self.log = drift_log
        self._counts: dict[tuple[str, str], WindowCounts] = {}

    def observe(
        self, served: ServedModel, scores: list[dict[str, float]], flags: list[dict[str, bool]]
    ) -> None:
        counts = self._counts.setdefault((served.model_name, served.run_id), WindowCounts())
        labels = list(served.thresholds)
        for score, flagged in zip(scores, flags, strict=True):
            counts.add({label: score.get(label, 0.0) for label in labels}, flagged)

    async def flush(self) -> None:
        """Add the counts so far to the log (lost if Redis is away: they are metrics)."""
        counts, self._counts = self._counts, {}
        now = time.time()
        for (name, run_id), window in counts.items():
            try:
                await self.log.add(name, run_id, now, window)
            except (RedisError, OSError) as exc:
                log.warning("drift counts of %s not kept: %s", name, type(exc).__name__)

    async def flush_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush()
