"""Mistral's Batch API for the mistral backend: a scoring job's shard as one batch job on
``/v1/classifications``, exactly once — its input uploaded as ``<tag>.jsonl`` (purpose
``batch``, found again by name and size), the job found again by its metadata before it
is created and after every unknown outcome —, followed, cancelled, and its output file
read back as each request's results; and what classifying costs, per request or in batch.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modfactory.backends.base import BackendError, TargetScores
from modfactory.backends.mistral.answers import batch_lines, batch_of
from modfactory.values import BatchJob, BatchStatus, PriceQuote, UploadedFile

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from modfactory.settings import Settings

log = logging.getLogger("modfactory.mistral")
BATCH_LIST_PAGES = 20  # pages of 100 batch jobs looked through for one's metadata


class MistralBatches:
    """The batch methods of ``MistralBackend`` (which supplies what is declared here)."""

    settings: Settings
    client: Any
    _call: Callable[..., Awaitable[Any]]
    _redacted: Callable[[str], str]
    _without_secrets: Callable[[BatchJob], BatchJob]
    _upload: Callable[[Path, str, str], Awaitable[UploadedFile]]

    def quote_classify(self, tokens: int, *, batch: bool) -> PriceQuote:
        """MODFACTORY_MISTRAL_CLASSIFY_PRICE per million tokens, times
        MODFACTORY_MISTRAL_BATCH_DISCOUNT in batch jobs."""
        price = self.settings.mistral_classify_price
        if batch:
            price *= self.settings.mistral_batch_discount
        how = "in batch jobs" if batch else "per request"
        return PriceQuote(
            cost=round(tokens / 1e6 * price, 4),
            currency="EUR",
            tokens=tokens,
            basis=f"{price:g} EUR per million tokens {how}",
        )

    async def _find_batch(self, model: str, metadata: dict[str, str]) -> BatchJob | None:
        """The batch job of ``model`` carrying all of ``metadata`` (asked of the API, and
        checked here: a server that ignores the filter still cannot mislead)."""
        for page in range(BATCH_LIST_PAGES):
            found = await self._call(
                f"list batch jobs {metadata}",
                lambda page=page: self.client.batch.jobs.list_async(
                    model=model, metadata=metadata, page=page, page_size=100
                ),
            )
            for job in found.data:
                theirs = job.metadata or {}
                if all(str(theirs.get(k)) == v for k, v in metadata.items()):
                    return self._batch(job)
            if len(found.data) < 100:
                return None
        return None

    def _batch(self, out: Any) -> BatchJob:
        """The SDK's batch job as a BatchJob."""
        return self._without_secrets(batch_of(out))

    async def submit_batch(
        self, model: str, requests: list[list[str]], tag: str, metadata: dict[str, str]
    ) -> BatchJob:
        """Upload the requests as ``<tag>.jsonl`` (purpose ``batch``) and create the job on
        ``/v1/classifications``, unless a job with this metadata exists already (then that
        one is the answer, before and after every unknown outcome)."""

        async def created_already() -> BatchJob | None:
            return await self._find_batch(model, metadata)

        existing = await created_already()
        if existing is not None:
            log.info("batch job %s for %s exists already", existing.id, metadata)
            return existing
        with tempfile.TemporaryDirectory(prefix="modfactory-batch-") as scratch:
            path = Path(scratch) / f"{tag}.jsonl"
            with path.open("w", encoding="utf-8") as out:
                for number, texts in enumerate(requests):
                    out.write(json.dumps({"custom_id": str(number), "body": {"input": texts}}))
                    out.write("\n")
            uploaded = await self._upload(path, path.name, "batch")

        async def create() -> BatchJob:
            return self._batch(
                await self.client.batch.jobs.create_async(
                    input_files=[uploaded.id],
                    endpoint="/v1/classifications",
                    model=model,
                    metadata=metadata,
                    timeout_hours=self.settings.mistral_batch_timeout_hours,
                )
            )

        return await self._call(f"create the batch job {tag}", create, recover=created_already)

    async def get_batch(self, batch_id: str) -> BatchJob:
        return self._batch(
            await self._call(
                f"get batch job {batch_id}",
                lambda: self.client.batch.jobs.get_async(job_id=batch_id),
            )
        )

    async def cancel_batch(self, batch_id: str) -> BatchJob:
        async def over_already() -> BatchJob | None:
            job = await self.get_batch(batch_id)
            return job if job.terminal or job.status == BatchStatus.CANCELLATION_REQUESTED else None

        found = await over_already()
        if found is not None:
            return found

        async def cancel() -> BatchJob:
            return self._batch(await self.client.batch.jobs.cancel_async(job_id=batch_id))

        return await self._call(f"cancel batch job {batch_id}", cancel, recover=over_already)

    async def batch_results(self, job: BatchJob) -> list[list[TargetScores]]:
        if job.output_file is None:
            raise BackendError(f"batch job {job.id} is {job.status} and has no output file")
        file_id = job.output_file

        async def download() -> bytes:
            answer = await self.client.files.download_async(file_id=file_id)
            try:
                return await answer.aread()
            finally:
                await answer.aclose()

        content = await self._call(f"download the output of batch job {job.id}", download)
        try:
            lines = batch_lines(content, job.id, job.total_requests)
        except ValueError as exc:
            raise BackendError(self._redacted(str(exc))) from None
        return [
            [{target: {"scores": dict(r["scores"])} for target, r in row.items()} for row in line]
            for line in lines
        ]
