"""upload: give the train and validation files to the backend; record their ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modfactory.stages.context import StageContext, guarded, start


async def upload(ctx: dict[str, Any], run_id: str) -> None:
    """Each file id is recorded as soon as it exists, so a retry uploads only what is missing."""
    sc = StageContext.of(ctx)
    run = await start(sc, "upload", run_id)
    if run is None:
        return

    async def step() -> None:
        backend = sc.backend(run.spec.backend)
        ids: dict[str, str] = {}
        for split in ("train", "validation"):
            recorded = getattr(run.artifacts, f"{split}_file_id")
            if recorded is None:
                path = Path(getattr(run.artifacts, f"{split}_file"))
                uploaded = await backend.upload_file(path, tag=f"{run_id}-{split}")
                await sc.store.record_artifacts(
                    run_id,
                    f"uploaded {path.name} as {uploaded.id}",
                    **{f"{split}_file_id": uploaded.id},
                )
                recorded = uploaded.id
            ids[split] = recorded
        await sc.store.finish_stage(
            run_id, "upload", message=f"files {ids['train']}, {ids['validation']}"
        )
        await sc.enqueue("train", run_id)

    await guarded(sc, "upload", run_id, step)
