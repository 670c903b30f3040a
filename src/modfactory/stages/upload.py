"""upload: give the train and validation files to the backend; record their ids."""

from __future__ import annotations

import asyncio

from modfactory.stages.context import StageContext
from modfactory.store.run import Run


async def upload_files(sc: StageContext, run: Run) -> None:
    """Each file id is recorded as soon as it exists, so a retry uploads only what is missing."""
    backend = sc.backend(run.spec.backend)
    ids: dict[str, str] = {}
    for split in ("train", "validation"):
        recorded = getattr(run.artifacts, f"{split}_file_id")
        if recorded is None:
            key = getattr(run.artifacts, f"{split}_file")
            name = key.rpartition("/")[2]
            await sc.store.note(run.id, "upload", f"uploading {name} as {run.id}-{split}.jsonl")
            with sc.artifacts.scratch() as scratch:
                path = await asyncio.to_thread(sc.artifacts.local_copy, key, scratch)
                uploaded = await backend.upload_file(path, tag=f"{run.id}-{split}")
            await sc.store.record_artifacts(
                run.id,
                f"uploaded {name} as {uploaded.id}",
                **{f"{split}_file_id": uploaded.id},
            )
            recorded = uploaded.id
        ids[split] = recorded
    await sc.store.finish_stage(
        run.id, "upload", message=f"files {ids['train']}, {ids['validation']}"
    )
