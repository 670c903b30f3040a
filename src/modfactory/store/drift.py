"""What each champion's served scores looked like, window by window: per model name,
champion run and window (MODFACTORY_DRIFT_WINDOW seconds, from the epoch), the texts
scored, and per label the texts flagged and a histogram of scores in ten bins. One Redis
hash per window (``<prefix>:drift:<name>:<run>:<window>``, kept 30 days) and a sorted set
of the windows seen; every ``serve`` replica adds its counts, so the numbers are the sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

BINS = 10
KEPT = 30 * 86_400  # seconds a window's counts are kept


@dataclass
class WindowCounts:
    """One window's (or one flush's) counts of a champion's answers."""

    texts: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    histogram: dict[str, list[int]] = field(default_factory=dict)  # label -> BINS counts

    def add(self, scores: dict[str, float], flags: dict[str, bool]) -> None:
        self.texts += 1
        for label, score in scores.items():
            bins = self.histogram.setdefault(label, [0] * BINS)
            bins[min(max(int(score * BINS), 0), BINS - 1)] += 1
            self.flagged[label] = self.flagged.get(label, 0) + bool(flags.get(label))


class DriftLog:
    def __init__(self, redis: Redis, prefix: str, window: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window = window

    def _key(self, name: str, run_id: str, window: int) -> str:
        return f"{self.prefix}:drift:{name}:{run_id}:{window}"

    def _windows(self, name: str, run_id: str) -> str:
        return f"{self.prefix}:drift-windows:{name}:{run_id}"

    def window_at(self, at: float) -> int:
        return int(at // self.window)

    async def add(self, name: str, run_id: str, at: float, counts: WindowCounts) -> None:
        """Add one flush's counts to the window of ``at``."""
        window = self.window_at(at)
        key = self._key(name, run_id, window)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(key, "texts", counts.texts)
        for label, bins in counts.histogram.items():
            pipe.hincrby(key, f"flagged|{label}", counts.flagged.get(label, 0))
            for index, n in enumerate(bins):
                if n:
                    pipe.hincrby(key, f"bin|{label}|{index}", n)
        pipe.expire(key, KEPT)
        pipe.zadd(self._windows(name, run_id), {str(window): window})
        pipe.expire(self._windows(name, run_id), KEPT)
        await pipe.execute()

    async def first_and_last(
        self, name: str, run_id: str
    ) -> tuple[WindowCounts, WindowCounts, int] | None:
        """(the first window's counts, the latest's, how many windows) of a champion's
        answers; None when it has answered nothing yet."""
        windows = self._windows(name, run_id)
        first = await self.redis.zrange(windows, 0, 0)
        if not first:
            return None
        last = await self.redis.zrange(windows, -1, -1)
        seen = await self.redis.zcard(windows)
        return (
            await self._counts(name, run_id, int(first[0])),
            await self._counts(name, run_id, int(last[0])),
            int(seen),
        )

    async def _counts(self, name: str, run_id: str, window: int) -> WindowCounts:
        counts = WindowCounts()
        for raw, value in (await self.redis.hgetall(self._key(name, run_id, window))).items():
            parts = raw.decode().split("|")
            if parts[0] == "texts":
                counts.texts = int(value)
            elif parts[0] == "flagged":
                counts.flagged[parts[1]] = int(value)
            elif parts[0] == "bin":
                counts.histogram.setdefault(parts[1], [0] * BINS)[int(parts[2])] = int(value)
        return counts
