"""The webhook's retrain: what a ``POST /v1/retrain`` body may ask for, and the run it starts.

The HTTP side (the body read with a limit, the signature or token checked, refusals as
JSON) is ``web.app``'s; here, only what differs from the server's settings is checked —
a source the webhook may name, a valid recipe, hyperparameters in range — before the run is
submitted.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field, create_model

from modfactory.data.recipe import RecipeError
from modfactory.data.sources import allowed_source
from modfactory.producer import Producer, Submission
from modfactory.settings import Settings
from modfactory.store.run import RunSpec
from modfactory.values import RecipeParams

log = logging.getLogger("modfactory.triggers.webhook")

RecipeOverrides = create_model(  # every recipe number, optional; unknown names refused
    "RecipeOverrides",
    __config__=ConfigDict(extra="forbid"),
    **{name: (f.annotation | None, None) for name, f in RecipeParams.model_fields.items()},
)


class RetrainRequest(BaseModel):
    """The optional body of ``POST /v1/retrain``: what differs from the server's settings."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(None, max_length=200)  # the sender's delivery id (logged)
    source: str | None = None
    backend: str | None = Field(None, max_length=32)  # a name in modfactory.plugins
    model_name: str | None = Field(None, pattern=r"^[\w.-]+$")
    hyperparameters: dict[str, float | int] | None = None
    recipe: RecipeOverrides | None = None  # type: ignore[valid-type]


class SourceRefused(RecipeError):
    """The body names a source the webhook may not (MODFACTORY_WEBHOOK_SOURCES)."""


def retrain_spec(producer: Producer, settings: Settings, wanted: RetrainRequest) -> RunSpec:
    """The run ``wanted`` asks for. SourceRefused, a ValidationError of the recipe, or a
    RecipeError / BackendError naming what is wrong."""
    if wanted.source is not None:
        try:
            allowed_source(wanted.source, settings.webhook_allowed_sources)
        except RecipeError as exc:
            raise SourceRefused(str(exc)) from None
    return producer.spec(
        source=wanted.source,
        backend=wanted.backend,
        hyperparameters=wanted.hyperparameters,
        model_name=wanted.model_name,
        **(wanted.recipe.model_dump(exclude_none=True) if wanted.recipe else {}),
    )


def log_retrain(wanted: RetrainRequest, submission: Submission) -> None:
    log.info(
        "retrain requested over HTTP%s: %s",
        f" (request {wanted.request_id})" if wanted.request_id else "",
        "created" if submission.created else "coalesced",
        extra={"run_id": submission.run.id},
    )
