"""A finished scoring job summed up, one part at a time (memory holds one part): per label
the rows flagged and their share, a histogram of the scores, the highest-scoring texts; and
the most uncertain texts (a score nearest its threshold), for the review queue."""

from __future__ import annotations

import heapq
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modfactory.artifacts import ArtifactStore
from modfactory.scoring.shard import input_key, output_key
from modfactory.store.score_job import (
    HISTOGRAM_BINS,
    TOP_TEXTS,
    LabelSummary,
    ScoreJob,
    ScoreSummary,
    TopText,
)

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(order=True)
class Uncertain:
    """A row whose scores are near its thresholds (``distance``: the nearest one's)."""

    distance: float
    id: str = field(compare=False)
    text: str = field(compare=False)
    scores: dict[str, float] = field(compare=False)


@dataclass
class Tally:
    """What is summed over the parts."""

    job: ScoreJob
    want_uncertain: int = 0
    rows: int = 0
    histograms: dict[str, list[int]] = field(default_factory=dict)
    top: dict[str, list[tuple[float, str, str | None]]] = field(default_factory=dict)
    uncertain: list[tuple[float, int, Uncertain]] = field(default_factory=list)
    _seen: int = 0

    def add(self, part: pa.Table, texts: list[str] | None) -> None:
        """Count one part (``texts``: its shard's texts, when they are kept or offered)."""
        import numpy as np

        self.rows += part.num_rows
        ids = [str(i) for i in part.column("id").to_pylist()]
        distance = np.full(part.num_rows, np.inf)
        for label in self.job.labels:
            scores = part.column(f"{label}_score").to_numpy()
            counts, _ = np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
            old = self.histograms.setdefault(label, [0] * HISTOGRAM_BINS)
            self.histograms[label] = [a + int(b) for a, b in zip(old, counts, strict=True)]
            best = self.top.setdefault(label, [])
            for row in np.argsort(-scores, kind="stable")[:TOP_TEXTS]:
                text = texts[int(row)] if texts is not None and self.job.spec.keep_text else None
                item = (float(scores[row]), ids[row], text)
                if len(best) < TOP_TEXTS:
                    heapq.heappush(best, item)
                else:
                    heapq.heappushpop(best, item)
            distance = np.minimum(distance, np.abs(scores - self.job.thresholds[label]))
        if self.want_uncertain and texts is not None:
            for row in np.argsort(distance, kind="stable")[: self.want_uncertain]:
                scores = {
                    label: float(part.column(f"{label}_score")[int(row)].as_py())
                    for label in self.job.labels
                }
                item = Uncertain(float(distance[row]), ids[row], texts[int(row)], scores)
                self._seen += 1
                entry = (-item.distance, -self._seen, item)  # a max-heap of the nearest
                if len(self.uncertain) < self.want_uncertain:
                    heapq.heappush(self.uncertain, entry)
                else:
                    heapq.heappushpop(self.uncertain, entry)

    def summary(self) -> ScoreSummary:
        labels = {}
        for label in self.job.labels:
            flagged = sum(s.flagged.get(label, 0) for s in self.job.shards)
            top = sorted(self.top.get(label, []), key=lambda t: (-t[0], t[1]))
            labels[label] = LabelSummary(
                threshold=self.job.thresholds[label],
                flagged=flagged,
                share=flagged / self.rows if self.rows else 0.0,
                histogram=self.histograms.get(label, [0] * HISTOGRAM_BINS),
                top=[TopText(id=i, score=s, text=text) for s, i, text in top],
            )
        return ScoreSummary(rows=self.rows, labels=labels)

    def most_uncertain(self) -> list[Uncertain]:
        return sorted(entry[2] for entry in self.uncertain)


def summarize(job: ScoreJob, artifacts: ArtifactStore) -> tuple[ScoreSummary, list[Uncertain]]:
    """Sum up every part of ``job``; and its ``to_review`` most uncertain texts."""
    import pyarrow.parquet as pq

    tally = Tally(job, want_uncertain=job.spec.to_review)
    need_texts = job.spec.to_review > 0 or job.spec.keep_text
    for index in range(len(job.shards)):
        part = pq.read_table(io.BytesIO(artifacts.load(output_key(job.id, index))))
        texts = None
        if need_texts:
            if "text" in part.column_names:
                texts = part.column("text").to_pylist()
            else:
                shard = pq.read_table(io.BytesIO(artifacts.load(input_key(job.id, index))))
                texts = shard.column("text").to_pylist()
        tally.add(part, texts)
    return tally.summary(), tally.most_uncertain()
