"""Texts of concurrent requests scored together: whatever waits while the scorer is busy
goes into its next call (up to ``max_batch`` texts), so a burst of single-text requests
costs a few calls, not one each.

Before each call the batcher lets the event loop run for a moment (``linger``, stopping
as soon as no request joins): a scorer that holds the GIL in its thread keeps the loop
from reading the requests that arrived meanwhile, so without it each call would take
only the one or two requests read so far, paying a model's fixed cost per call each time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
Score = Callable[[list[str]], Awaitable[list[T]]]


class MicroBatcher(Generic[T]):
    """``await batcher.score(texts)``: one result per text, in order. A failed call fails
    every request in it, with the same exception."""

    def __init__(
        self,
        score: Score[T],
        max_batch: int = 256,
        linger: float = 0.002,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self._score = score
        self.max_batch = max_batch
        self.linger = linger
        self._on_call = on_call  # told each call's number of texts
        self._waiting: deque[tuple[list[str], asyncio.Future[list[T]]]] = deque()
        self._drainer: asyncio.Task[None] | None = None
        self.calls = 0  # scorer calls made (what batching saves shows here)

    async def score(self, texts: list[str]) -> list[T]:
        future: asyncio.Future[list[T]] = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._gather()
                batch = [self._waiting.popleft()]
                size = len(batch[0][0])
                while self._waiting and size + len(self._waiting[0][0]) <= self.max_batch:
                    size += len(self._waiting[0][0])
                    batch.append(self._waiting.popleft())
                await self._run(batch)
        finally:
            self._drainer = None

    async def _gather(self) -> None:
        """Let requests already on their way join: up to ``linger`` seconds, while each
        quarter of it brings another one and the batch is not full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger
        while sum(len(texts) for texts, _ in self._waiting) < self.max_batch:
            before = len(self._waiting)
            await asyncio.sleep(self.linger / 4)
            if len(self._waiting) == before or loop.time() >= deadline:
                return

    async def _run(self, batch: list[tuple[list[str], asyncio.Future[list[T]]]]) -> None:
        self.calls += 1
        texts = [text for asked, _ in batch for text in asked]
        if self._on_call is not None:
            self._on_call(len(texts))
        try:
            results = await self._score(texts)
        except Exception as exc:  # every request of the batch is told
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for texts, future in batch:
            if not future.done():  # a request given up meanwhile is skipped
                future.set_result(results[start : start + len(texts)])
            start += len(texts)
