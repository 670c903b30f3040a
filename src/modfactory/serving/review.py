"""Which answered texts a person should look at: with MODFACTORY_REVIEW_SAMPLE, that share
of the texts served is offered to the model name's review queue (``store.review``), each
with its uncertainty — how close its nearest label's score is to that label's threshold —
so the queue keeps the most uncertain; a tenth of the offers are marked random and always
kept (an unbiased sample, for estimates a reviewer's attention does not skew). A request
that says ``"store": false`` is never offered. Written after the answer, off its path."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime

from modfactory.serving.champions import ServedModel
from modfactory.store.review import ReviewItem, ReviewQueue

log = logging.getLogger("modfactory.serving.review")
RANDOM_SHARE = 0.1


class ReviewSampler:
    def __init__(self, queue: ReviewQueue, share: float, rng: random.Random | None = None) -> None:
        self.queue = queue
        self.share = share
        self.rng = rng or random.Random()
        self._pending: set[asyncio.Task[None]] = set()

    def offer(
        self,
        served: ServedModel,
        answer_id: str,
        texts: list[str],
        scores: list[dict[str, float]],
        flags: list[dict[str, bool]],
    ) -> None:
        """Queue a sample of this answer's texts later; never waits, never fails."""
        if self.share <= 0:
            return
        now = datetime.now(UTC)
        items = [
            ReviewItem(
                id=f"{answer_id}.{index}",
                model_name=served.model_name,
                text=text,
                scores={label: score.get(label, 0.0) for label in served.thresholds},
                flags=flagged,
                champion_run=served.run_id,
                at=now,
                uncertainty=min(
                    (abs(score.get(label, 0.0) - cut) for label, cut in served.thresholds.items()),
                    default=1.0,
                ),
                random=self.rng.random() < RANDOM_SHARE,
            )
            for index, (text, score, flagged) in enumerate(zip(texts, scores, flags, strict=True))
            if self.rng.random() < self.share
        ]
        if items and len(self._pending) < 64:
            task = asyncio.create_task(self._add(items))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _add(self, items: list[ReviewItem]) -> None:
        try:
            await self.queue.add(items)
        except Exception as exc:  # the review queue never troubles the service
            log.warning("review queue: %s", type(exc).__name__)

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
