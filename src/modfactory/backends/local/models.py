"""The local backend's saved models: loaded from the artifact store by model id, the few
used last kept in memory, and scored (per text, each label's calibrated probability)."""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from typing import Any

from modfactory.artifacts import ArtifactNotFound, ArtifactStore
from modfactory.backends.base import BackendError, TargetScores
from modfactory.backends.local.jobs import model_key
from modfactory.backends.local.selection import scores as selection_scores

MODEL_PREFIX = "ft:classifier:local:"
JOB_ID = re.compile(r"ftjob-[\w-]{1,64}")
CACHED_MODELS = 4  # loaded models kept in memory: a challenger, its champion, and a few


class SavedModels:
    """Models by id, the ``CACHED_MODELS`` used last kept loaded (thread-safe: classify runs
    in worker threads)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, model: str) -> dict[str, Any]:
        """The saved bundle of ``model`` (read from the store every time)."""
        job_id = model.removeprefix(MODEL_PREFIX)
        if not model.startswith(MODEL_PREFIX) or not JOB_ID.fullmatch(job_id):
            raise BackendError(f"local backend: {model!r} is not a local model id")
        try:
            data = self.store.load(model_key(job_id))
        except ArtifactNotFound:
            where = self.store.url_of(model_key(job_id))
            raise BackendError(f"local backend: model {model!r} not found at {where}") from None
        import joblib

        return joblib.load(io.BytesIO(data))

    def scores(self, model: str, inputs: list[str]) -> list[TargetScores]:
        """``model``'s scores of ``inputs``, loading it if it is not among those kept."""
        with self._lock:
            if model not in self._loaded:
                self._loaded[model] = self.load(model)
                while len(self._loaded) > CACHED_MODELS:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(model)
            bundle = self._loaded[model]
        return scores_of(bundle, inputs)


def scores_of(bundle: dict[str, Any], inputs: list[str]) -> list[TargetScores]:
    """A saved model's scores of ``inputs``: per text, each label's probability."""
    if bundle.get("version") != 2:  # the plain SGD models of earlier versions' grid "off"
        raise BackendError(
            "local backend: this model was saved in a format no longer read (plain SGD); "
            "train it again"
        )
    target = bundle["target"]
    return [{target: {"scores": s}} for s in selection_scores(bundle, inputs)]
