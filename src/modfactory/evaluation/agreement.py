"""How well reviewers agree: per reviewer, over the texts they and someone else answered,
Cohen's kappa per label (flagged or not: two raters, two classes) — the agreement beyond
what chance gives — once there are enough such texts to say anything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modfactory.store.double_review import Pair

MIN_OVERLAPS = 20  # texts two people answered, before a kappa is shown


def cohen_kappa(first: Sequence[bool], second: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' yes/no answers on the same items, as
    ``sklearn.metrics.cohen_kappa_score`` computes it; None when chance alone agrees
    every time (both always gave one same answer: kappa is undefined)."""
    n = len(first)
    if n == 0 or n != len(second):
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    p1, p2 = sum(first) / n, sum(second) / n
    expected = p1 * p2 + (1 - p1) * (1 - p2)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


@dataclass(frozen=True)
class ReviewerStats:
    name: str
    answered: int  # texts answered
    overlaps: int  # of those, answered by someone else too
    kappa: dict[str, float | None]  # per label; empty until MIN_OVERLAPS overlaps

    def kappa_text(self, label: str) -> str:
        if self.overlaps < MIN_OVERLAPS:
            return f"not enough ({self.overlaps} of {MIN_OVERLAPS})"
        value = self.kappa.get(label)
        return "undefined" if value is None else f"{value:.2f}"


def reviewer_stats(
    pairs: Sequence[Pair], answered: dict[str, int], labels: Sequence[str]
) -> list[ReviewerStats]:
    """Per reviewer (by name): what they answered, and their agreement with the others on
    the texts they shared, per label."""
    names = sorted(set(answered) | {p.first for p in pairs} | {p.second for p in pairs})
    found = []
    for name in names:
        mine = [
            (p.first_labels, p.second_labels)
            if p.first == name
            else (p.second_labels, p.first_labels)
            for p in pairs
            if name in (p.first, p.second)
        ]
        kappa: dict[str, float | None] = {}
        if len(mine) >= MIN_OVERLAPS:
            for label in labels:
                kappa[label] = cohen_kappa(
                    [label in own for own, _ in mine], [label in other for _, other in mine]
                )
        found.append(ReviewerStats(name, answered.get(name, 0), len(mine), kappa))
    return found


def _mine_first(pair: Pair, name: str) -> tuple[list[str], list[str]]:
    """(``name``'s labels, the other's) of a pair ``name`` is in."""
    if pair.first == name:
        return pair.first_labels, pair.second_labels
    return pair.second_labels, pair.first_labels
