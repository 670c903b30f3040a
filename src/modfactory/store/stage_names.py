"""The pipeline's stages, in order — declared once, importable without loading the store
(the CLI registers a command per stage at start-up)."""

from __future__ import annotations

from typing import Literal, get_args

StageName = Literal["build", "upload", "train", "evaluate"]
STAGES: tuple[StageName, ...] = get_args(StageName)


def next_stage(stage: str) -> StageName | None:
    """The stage that follows ``stage`` in the pipeline (None after the last)."""
    i = STAGES.index(stage) + 1
    return STAGES[i] if i < len(STAGES) else None
