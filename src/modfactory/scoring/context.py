"""What every scoring job needs, built once per worker process: settings, Redis, the
scoring-job store, the artifact store, the backends (shared with the stages'), and the
models loaded for scoring (each once per process)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from modfactory.artifacts import ArtifactStore
from modfactory.backends import Backend, cached_backend
from modfactory.backends.base import Scorer
from modfactory.settings import Settings
from modfactory.store.score_jobs import ScoreJobStore

LOADED_MODELS = 2  # models kept loaded by one worker process for scoring


@dataclass
class ScoringContext:
    settings: Settings
    redis: ArqRedis
    artifacts: ArtifactStore
    backends: dict[str, Backend] = field(default_factory=dict)  # by name, made on first use
    store: ScoreJobStore = field(init=False)
    _scorers: OrderedDict[tuple[str, str], Scorer] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.store = ScoreJobStore(self.redis, self.settings.queue_name)

    @classmethod
    def of(cls, ctx: dict[str, Any]) -> ScoringContext:
        """The ScoringContext the worker put in arq's ``ctx``."""
        return ctx["scoring"]

    def backend(self, name: str) -> Backend:
        return cached_backend(self.backends, name, self.settings, self.redis)

    async def scorer(self, backend: str, model_id: str) -> Scorer:
        """``model_id``'s scorer, loaded once by this process (the last few kept)."""
        key = (backend, model_id)
        if key not in self._scorers:
            self._scorers[key] = await self.backend(backend).scorer(model_id)
            while len(self._scorers) > LOADED_MODELS:
                self._scorers.popitem(last=False)
        self._scorers.move_to_end(key)
        return self._scorers[key]
