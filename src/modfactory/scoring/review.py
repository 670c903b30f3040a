"""The archive feeds the human loop: a scoring job's most uncertain texts (``--to-review``)
offered to its model's review queue, as served texts are."""

from __future__ import annotations

from modfactory.scoring.context import ScoringContext
from modfactory.scoring.results import Uncertain
from modfactory.store.review import ReviewItem, ReviewQueue
from modfactory.store.score_job import ScoreJob, now


async def offer_for_review(sc: ScoringContext, job: ScoreJob, rows: list[Uncertain]) -> int:
    """Queue ``rows`` for review under the job's model name; how many were offered."""
    s = sc.settings
    queue = ReviewQueue(
        sc.redis, s.queue_name, s.review_queue_max, s.review_max_age, s.review_overlap
    )
    at = now()
    items = [
        ReviewItem(
            id=f"{job.id}.{row.id}",
            model_name=job.spec.model_name,
            text=row.text,
            scores=row.scores,
            flags={label: row.scores[label] >= cut for label, cut in job.thresholds.items()},
            champion_run=job.spec.run_id,
            at=at,
            uncertainty=row.distance,
        )
        for row in rows
    ]
    await queue.add(items)
    return len(items)
