"""Drift of what a champion serves: per label, the population stability index (PSI) of its
scores in the latest window against the first window after its promotion, and the flag
rate of each. PSI = sum over score bins of (b - a) * ln(b / a), a and b the two windows'
shares (a bin empty in one gets a small share: 0.5 of a text). Rules of thumb: under 0.1
stable, 0.1-0.25 moving, above 0.25 a different population."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel
from redis.asyncio import Redis

from modfactory.store.drift import DriftLog, WindowCounts
from modfactory.store.registry import ModelRegistry


def psi(before: Sequence[int], after: Sequence[int]) -> float:
    """The population stability index of two histograms over the same bins."""
    total_before, total_after = sum(before), sum(after)
    if not total_before or not total_after:
        return 0.0
    value = 0.0
    for b, a in zip(before, after, strict=True):
        p = max(b, 0.5) / total_before
        q = max(a, 0.5) / total_after
        value += (q - p) * math.log(q / p)
    return value


class LabelDrift(BaseModel):
    psi: float
    flag_rate_first: float
    flag_rate_latest: float


class Drift(BaseModel):
    """A champion's served scores: its first window after promotion against its latest."""

    model_name: str
    run_id: str
    windows: int
    texts_first: int
    texts_latest: int
    labels: dict[str, LabelDrift]
    alert: bool  # a label's PSI at or above MODFACTORY_DRIFT_ALERT

    @classmethod
    def of(
        cls,
        name: str,
        run_id: str,
        first: WindowCounts,
        latest: WindowCounts,
        windows: int,
        alert_at: float,
    ) -> Drift:
        labels = {
            label: LabelDrift(
                psi=psi(first.histogram[label], latest.histogram.get(label, [0] * len(bins))),
                flag_rate_first=first.flagged.get(label, 0) / max(first.texts, 1),
                flag_rate_latest=latest.flagged.get(label, 0) / max(latest.texts, 1),
            )
            for label, bins in sorted(first.histogram.items())
        }
        return cls(
            model_name=name,
            run_id=run_id,
            windows=windows,
            texts_first=first.texts,
            texts_latest=latest.texts,
            labels=labels,
            alert=windows > 1 and any(d.psi >= alert_at for d in labels.values()),
        )


async def champion_drifts(redis: Redis, prefix: str, window: float, alert_at: float) -> list[Drift]:
    """The drift of every model name's champion that has served something."""
    found = []
    log = DriftLog(redis, prefix, window)
    registry = ModelRegistry(redis, prefix)
    for name in await registry.names():
        champion = (await registry.get(name)).champion
        if champion is None:
            continue
        seen = await log.first_and_last(name, champion.run_id)
        if seen is not None:
            found.append(Drift.of(name, champion.run_id, *seen, alert_at))
    return found
