"""Each served model name's champion, loaded once and kept current.

The first request for a name loads its champion: the registry names the run and model,
the run gives the labels and the thresholds tuned on validation, the backend a scorer (a
local model is read from disk once and kept in memory). Every ``refresh_interval``
seconds the registry is read again for every name served; a changed champion (promotion
or rollback, by any process) is loaded beside the old one, which answers until the new
one is ready — so a swap never fails a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from modfactory.backends import Backend, BackendError
from modfactory.backends.base import TargetScores
from modfactory.data.recipe import TARGET
from modfactory.serving.batching import MicroBatcher
from modfactory.store.registry import ModelRegistry
from modfactory.store.run import Run, RunNotFound, RunState
from modfactory.store.runs import RunStore
from modfactory.values import PLAIN_THRESHOLD

log = logging.getLogger("modfactory.serving")
ThresholdRule = Literal["tuned", "0.5"]


class NoChampion(LookupError):
    """The model name has no champion to answer with (the message says what to do)."""


@dataclass
class ServedModel:
    """A model as served (a name's champion, or a run's model): labels, thresholds."""

    model_name: str
    run_id: str
    model_id: str
    backend: str
    target: str
    labels: list[str]
    thresholds: dict[str, float]
    rule: ThresholdRule  # tuned: flagged at a score >= its threshold; 0.5: above 0.5
    batcher: MicroBatcher[TargetScores] = field(repr=False)

    async def scores(self, texts: list[str]) -> list[dict[str, float]]:
        """Per text, the classifier's score of each of its labels (``safe`` among them,
        when the model was trained with the cookbook's safe label)."""
        results = await self.batcher.score(texts)
        return [result[self.target]["scores"] for result in results]

    def moderation(self, scores: dict[str, float]) -> tuple[dict[str, bool], dict[str, float]]:
        """(categories, category_scores): the moderation labels only — whether each is
        flagged at its threshold, and its score."""
        shown = {label: scores.get(label, 0.0) for label in self.thresholds}
        if self.rule == "0.5":  # as the metrics' plain columns count
            return {label: shown[label] > cut for label, cut in self.thresholds.items()}, shown
        return {label: shown[label] >= cut for label, cut in self.thresholds.items()}, shown


def thresholds_of(run: Run, labels: list[str], rule: ThresholdRule) -> dict[str, float]:
    """``tuned``: each label's threshold tuned on validation (0.5 where none was); ``0.5``:
    0.5 for every label."""
    tuned = run.metrics.labels if run.metrics and rule == "tuned" else {}
    return {
        label: cut
        if label in tuned and (cut := tuned[label].tuned_threshold) is not None
        else PLAIN_THRESHOLD
        for label in labels
    }


class ChampionServer:
    """The champions of the model names asked for, kept current (``refresh_forever``)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        backend: Callable[[str], Backend],
        thresholds: ThresholdRule = "tuned",
        max_batch: int = 256,
        shadowed: tuple[str, ...] = (),
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.registry = ModelRegistry(redis, prefix)
        self.store = RunStore(redis, prefix)
        self._backend = backend
        self.rule: ThresholdRule = thresholds
        self.max_batch = max_batch
        self.on_call = on_call  # told the texts of each scorer call
        self.shadowed = shadowed  # model names whose newest candidate is shadowed; "*": all
        self._current: dict[str, ServedModel] = {}
        self._challengers: dict[str, ServedModel | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def champion(self, name: str) -> ServedModel:
        """The champion of ``name``, loaded on first use; NoChampion when there is none."""
        if (found := self._current.get(name)) is not None:
            return found
        async with self._locks.setdefault(name, asyncio.Lock()):
            if (found := self._current.get(name)) is None:
                found = await self._load(name)
                self._current[name] = found
                log.info("serving %s: champion %s (%s)", name, found.run_id, found.model_id)
        return found

    async def _load(self, name: str) -> ServedModel:
        record = await self.registry.get(name)
        if record.champion is None:
            raise NoChampion(
                f"model {name!r} has no champion yet: a run under this name must succeed "
                "first (`modfactory run`), or promote one (`modfactory promote RUN`)"
            )
        try:
            run = await self.store.get(record.champion.run_id)
        except RunNotFound:
            gone = f"model {name!r}: its champion run {record.champion.run_id} is gone"
            raise NoChampion(gone) from None
        return await self.model_of(run, record.champion.model_id)

    async def model_of(self, run: Run, model_id: str | None = None) -> ServedModel:
        """``run``'s model, ready to score: the one the registry names (``model_id``), or
        the run's own once it succeeded."""
        if model_id is None:
            if run.state != RunState.SUCCEEDED or not run.artifacts.model_id:
                raise NoChampion(f"run {run.id} is {run.state}; only a succeeded run has a model")
            model_id = run.artifacts.model_id
        scorer = await self._backend(run.spec.backend).scorer(model_id)
        targets = run.training.classifier_targets
        labels = run.dataset.labels if run.dataset else []
        rule: ThresholdRule = self.rule if run.metrics else "0.5"  # nothing tuned: 0.5
        return ServedModel(
            model_name=run.spec.model_name,
            run_id=run.id,
            model_id=model_id,
            backend=run.spec.backend,
            target=targets[0]["name"] if targets else TARGET,
            labels=labels,
            thresholds=thresholds_of(run, labels, rule),
            rule=rule,
            batcher=MicroBatcher(scorer, self.max_batch, on_call=self.on_call),
        )

    def shadows(self, name: str) -> bool:
        return "*" in self.shadowed or name in self.shadowed

    async def challenger(self, name: str) -> ServedModel | None:
        """The newest candidate of ``name`` (a succeeded run that is not the champion: kept
        as a candidate, or rolled back), loaded on first use; None when there is none."""
        if name not in self._challengers:
            async with self._locks.setdefault(f"challenger:{name}", asyncio.Lock()):
                if name not in self._challengers:
                    self._challengers[name] = await self._load_challenger(name)
        return self._challengers[name]

    async def _newest_candidate(self, name: str) -> Run | None:
        record = await self.registry.get(name)
        for run_id in reversed(list(record.candidates)):  # kept in the order they came
            try:
                run = await self.store.get(run_id)
            except RunNotFound:
                continue
            if run.state == RunState.SUCCEEDED and run.artifacts.model_id:
                return run
        return None

    async def _load_challenger(self, name: str) -> ServedModel | None:
        run = await self._newest_candidate(name)
        return await self.model_of(run) if run else None

    async def refresh(self) -> list[str]:
        """Read the registry for every name served; load and swap in each changed
        champion. The names swapped; a champion that cannot be loaded yet is kept."""
        swapped = []
        for name, serving in list(self._current.items()):
            record = await self.registry.get(name)
            now = record.champion
            if now is not None and (now.run_id, now.model_id) == (serving.run_id, serving.model_id):
                continue
            if now is None:
                continue  # nothing to swap to: the last champion keeps answering
            try:
                loaded = await self._load(name)
            except (NoChampion, BackendError) as exc:
                log.warning("serving %s: cannot load champion %s yet: %s", name, now.run_id, exc)
                continue
            self._current[name] = loaded
            swapped.append(name)
            log.info("serving %s: champion is now %s (was %s)", name, loaded.run_id, serving.run_id)
        for name, shadow in list(self._challengers.items()):
            newest = await self._newest_candidate(name)
            if (newest.id if newest else None) != (shadow.run_id if shadow else None):
                self._challengers[name] = await self.model_of(newest) if newest else None
        return swapped

    async def refresh_forever(self, interval: float) -> None:
        """``refresh`` every ``interval`` seconds; Redis away is waited out, and no error
        stops the refreshing."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                log.warning("serving: cannot read the registry: %s", type(exc).__name__)
            except Exception:
                log.exception("serving: refreshing the champions failed")
