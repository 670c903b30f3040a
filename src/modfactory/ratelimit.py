"""A client-side request rate limit for asyncio code."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """``await limiter.wait()`` before each request: successive requests leave at least
    ``1 / rate`` seconds apart (plus 2 % slack against clock jitter), so no one-second
    window ever holds more than ``rate`` of them."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.02 / rate if rate else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            delay = self._next - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = time.monotonic() + self.interval
