"""Shadowing: each request a champion answers is scored again by the model name's newest
candidate, after the answer and off its path, and the two sets of flags are compared per
label (``store.shadow``), so a user sees how a challenger would have behaved on live
traffic before promoting it. Off by default (MODFACTORY_SHADOW); it costs a second scoring
of every request (at the backend, for a Mistral candidate)."""

from __future__ import annotations

import asyncio
import logging

from modfactory.serving.champions import ChampionServer, ServedModel
from modfactory.store.shadow import ShadowLog

log = logging.getLogger("modfactory.serving.shadow")


class Shadow:
    """``shadow.observe(...)`` after each answer; at most ``max_pending`` scorings wait
    (beyond, a request is not shadowed and ``dropped`` counts it)."""

    def __init__(self, champions: ChampionServer, tally: ShadowLog, max_pending: int = 4) -> None:
        self.champions = champions
        self.tally = tally
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: set[asyncio.Task[None]] = set()

    def observe(self, served: ServedModel, texts: list[str], flags: list[dict[str, bool]]) -> None:
        """Score ``texts`` with the challenger later; never waits, never fails."""
        if not self.champions.shadows(served.model_name):
            return
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        task = asyncio.create_task(self._compare(served, texts, flags))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _compare(
        self, served: ServedModel, texts: list[str], flags: list[dict[str, bool]]
    ) -> None:
        try:
            challenger = await self.champions.challenger(served.model_name)
            if challenger is None or challenger.run_id == served.run_id:
                return
            theirs = [challenger.moderation(s)[0] for s in await challenger.scores(texts)]
            await self.tally.add(served.model_name, served.run_id, challenger.run_id, flags, theirs)
        except Exception as exc:  # shadowing never troubles the service
            log.warning("shadowing %s failed: %s", served.model_name, type(exc).__name__)

    async def drain(self) -> None:
        """Wait for the scorings under way (at shutdown, and in tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
