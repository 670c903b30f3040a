"""Mistral's Classifier Factory through the official SDK (``mistralai==2.5.1``), async only.

A request has three outcomes: done, not done, or unknown — a 5xx, a timeout or a dropped
connection after the request left may mean the work was done and only the answer lost.
So every call that creates, starts or pays is exactly-once whatever happens to its answer:
before it, and again after every unknown outcome, the object is looked up (files by name
and size — the name carries the run id —, jobs by their suffix, a start by the job's
status); only when it is not there is the request sent again. A 429 or a refused
connection is known not done and is simply retried (Retry-After honoured, and shared with
every worker through the rate limiter); 401 / 403 / 422 fail at once with a message naming
what to fix. Every request waits for the limiter just before it goes on the wire (an httpx
request hook, so the SDK's own work cannot make it late): MODFACTORY_MISTRAL_RPS over all
requests, MODFACTORY_CLASSIFY_RPS over classify and moderate too. The API key never leaves
the SDK's Authorization header: no message, log line or record built here contains it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import BaseModel

from modfactory.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    HyperRanges,
    JobRequest,
    TargetScores,
    checked_hyperparameters,
)
from modfactory.backends.mistral.answers import error_detail, job_of
from modfactory.backends.mistral.batch import MistralBatches
from modfactory.backends.mistral.fastpath import CookielessClient, speed_up_sdk
from modfactory.backends.ratelimit import Limiter, RateLimiter, SharedRateLimiter
from modfactory.settings import Settings, redact
from modfactory.values import (
    JobStatus,
    TrainingJob,
    UploadedFile,
)

log = logging.getLogger("modfactory.mistral")
T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)

_RANGES: HyperRanges = {
    "training_steps": (int, 1, 1_000_000),
    "learning_rate": (float, 1e-8, 1),
    "weight_decay": (float, 0, 1),
    "warmup_fraction": (float, 0, 1),
    "epochs": (float, 1e-9, 1_000),
    "seq_len": (int, 100, 1_000_000),
}
_KEY_ADVICE = "check MISTRAL_API_KEY (a valid key of a workspace with fine-tuning enabled)"
# Transport failures that mean the request never reached the API (known not done).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
Recover = Callable[[], Awaitable[T | None]]


SDK_MISSING = (
    "the mistral backend needs the Mistral SDK, an extra of modfactory's: "
    "pip install 'modfactory[mistral]'"
)


class MistralBackend(MistralBatches, Backend):
    """The ``mistral`` backend."""

    name = "mistral"
    batch_api = True
    moderation_model = "mistral-moderation-latest"
    moderation_labels: ClassVar[dict[str, str]] = {  # its categories -> civil_comments'
        "sexual": "sexual_explicit",
        "hate_and_discrimination": "identity_attack",
        "violence_and_threats": "threat",
    }

    def __init__(self, settings: Settings) -> None:
        if settings.mistral_api_key is None:
            raise BackendError("the mistral backend needs MISTRAL_API_KEY")
        if importlib.util.find_spec("mistralai") is None:
            raise BackendError(SDK_MISSING)
        self.settings = settings
        self.base_model = settings.mistral_model
        self.suffix_prefix = settings.mistral_job_suffix
        self.max_batch = settings.classify_batch_size  # a request's worth, as evaluate sends
        self.limiter: Limiter = RateLimiter(rate_buckets(settings))
        self._client: Any = None
        self._http: httpx.AsyncClient | None = None

    @property
    def client(self) -> Any:
        """The SDK client, made on first use (validating hyperparameters needs none)."""
        if self._client is None:
            from mistralai.client import Mistral

            speed_up_sdk()
            key = self.settings.mistral_api_key
            self._http = CookielessClient(
                follow_redirects=True, event_hooks={"request": [self._pace]}
            )
            self._client = Mistral(
                api_key=lambda: key.get_secret_value(),
                server_url=self.settings.mistral_server_url,
                async_client=self._http,
                timeout_ms=int(self.settings.mistral_timeout * 1000),
            )
        return self._client

    def connect(self, redis: Any, settings: Settings) -> None:
        """Count API errors in Redis, and pace requests by one rate shared with every
        process on this Redis (Mistral's limits are per API key)."""
        super().connect(redis, settings)
        self.limiter = shared_limiter(settings, redis)

    def _backoff(self, attempt: int) -> float:
        """Full jitter on MODFACTORY_MISTRAL_RETRY_BACKOFF · 2^attempt, capped at 30 s."""
        return random.uniform(0, min(30.0, self.settings.mistral_retry_backoff * 2**attempt))

    async def _pace(self, request: httpx.Request) -> None:
        """Wait for the rate limiter; the last step before ``request`` is sent."""
        await self.limiter.wait(*request_buckets(request.url.path))

    def hyperparameters(self, overrides: dict[str, float | int]) -> dict[str, float | int]:
        s = self.settings
        values: dict[str, float | int | None] = {
            "training_steps": s.mistral_training_steps,
            "learning_rate": s.mistral_learning_rate,
            "weight_decay": s.mistral_weight_decay,
            "warmup_fraction": s.mistral_warmup_fraction,
            "epochs": s.mistral_epochs,
            "seq_len": s.mistral_seq_len,
        }
        values.update(checked_hyperparameters(self.name, overrides, _RANGES))
        return {k: v for k, v in values.items() if v is not None}

    async def close(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _redacted(self, text: str) -> str:
        return redact(text, self.settings.secret_values())

    def _without_secrets(self, value: ModelT) -> ModelT:
        """``value`` with no secret in what the API wrote into it."""
        dumped = value.model_dump_json()
        redacted = self._redacted(dumped)
        return value if redacted == dumped else type(value).model_validate_json(redacted)

    def _job(self, out: Any) -> TrainingJob:
        """The SDK's job as a TrainingJob."""
        return self._without_secrets(job_of(out))

    # --- calls with retries ---------------------------------------------------------------
    async def _call(
        self,
        what: str,
        request: Callable[[], Awaitable[T]],
        *,
        recover: Recover[T] | None = None,
    ) -> T:
        """``request()`` with retries on transient failures; clear errors on the others.

        ``recover`` (for requests that create, start or pay) looks up what the request
        would have done; it is called after every failure whose outcome is unknown (5xx,
        timeout, lost connection, 409), and what it finds is the answer — the request is
        sent again only when it finds nothing.
        """
        from mistralai.client.errors import MistralError, NoResponseError

        attempts = self.settings.mistral_max_retries + 1
        for attempt in range(1, attempts + 1):
            unknown = True
            try:
                return await request()
            except MistralError as exc:
                status = exc.status_code
                await self.count_api_error(str(status))
                if status in (401, 403):
                    raise BackendError(
                        f"Mistral refused to {what} (HTTP {status}): {_KEY_ADVICE}"
                    ) from None
                if status == 422 or (400 <= status < 500 and status not in (408, 409, 429)):
                    found = await recover() if recover is not None and status != 422 else None
                    if found is not None:
                        log.info("%s: HTTP %d, but it is done already", what, status)
                        return found
                    detail = error_detail(self._redacted(exc.body))  # redacted before cut short
                    raise BackendError(
                        f"Mistral rejected the request to {what} (HTTP {status}): {detail}"
                    ) from None
                reason, retry_after = f"HTTP {status}", _retry_after(exc.headers)
                if status == 429:
                    unknown = False
                    await self.limiter.hold_off(retry_after if retry_after is not None else 1.0)
            except (httpx.TimeoutException, httpx.TransportError, NoResponseError) as exc:
                reason, retry_after = f"{type(exc).__name__}", None
                unknown = not isinstance(exc, _NOT_SENT)
                await self.count_api_error(reason)
            if unknown and recover is not None:
                found = await recover()
                if found is not None:
                    log.info("%s: %s, but it was done: the answer was lost", what, reason)
                    return found
            if attempt == attempts:
                raise BackendUnavailable(
                    f"Mistral did not answer the request to {what} after {attempts} attempts "
                    f"({reason})"
                )
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            log.info("%s: %s, retry %d/%d in %.1f s", what, reason, attempt, attempts - 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # --- files -----------------------------------------------------------------------------
    async def upload_file(self, path: Path, tag: str) -> UploadedFile:
        """Upload as ``<tag>.jsonl``, unless a file of that name and size is there already."""
        return await self._upload(path, f"{tag}.jsonl", "fine-tune")

    async def _upload(self, path: Path, name: str, purpose: str) -> UploadedFile:
        """``path`` uploaded as ``name`` for ``purpose``, exactly once: a file of that name
        and size found there (before, or after an unknown outcome) is the upload."""
        size = path.stat().st_size

        async def uploaded_already() -> UploadedFile | None:
            found = await self._call(
                f"list files named {name}",
                lambda: self.client.files.list_async(search=name, purpose=purpose, page_size=100),
            )
            for existing in found.data:
                if existing.filename == name and existing.size_bytes == size:
                    return UploadedFile(id=existing.id, filename=name, bytes=existing.size_bytes)
            return None

        existing = await uploaded_already()
        if existing is not None:
            log.info("file %s is already uploaded as %s", name, existing.id)
            return existing

        async def upload() -> UploadedFile:
            with path.open("rb") as content:
                out = await self.client.files.upload_async(
                    file={"file_name": name, "content": content}, purpose=purpose
                )
            return UploadedFile(id=out.id, filename=name, bytes=out.size_bytes)

        return await self._call(f"upload {name}", upload, recover=uploaded_already)

    # --- jobs ------------------------------------------------------------------------------
    async def create_job(self, request: JobRequest) -> TrainingJob:
        """Create the classifier job, unless one with this suffix exists already."""

        async def created_already() -> TrainingJob | None:
            existing = await self._call(
                f"list jobs with suffix {request.suffix}",
                lambda: self.client.fine_tuning.jobs.list_async(
                    suffix=request.suffix, page_size=100
                ),
            )
            for job in existing.data:
                if job.suffix == request.suffix:
                    return await self.get_job(job.id)
            return None

        existing = await created_already()
        if existing is not None:
            log.info("job %s with suffix %s exists already", existing.id, request.suffix)
            return existing
        integrations = None
        if self.settings.wandb_project and self.settings.wandb_api_key:
            integrations = [
                {
                    "project": self.settings.wandb_project,
                    "api_key": self.settings.wandb_api_key.get_secret_value(),
                }
            ]

        async def create() -> TrainingJob:
            return self._job(
                await self.client.fine_tuning.jobs.create_async(
                    model=request.model,
                    job_type="classifier",
                    training_files=[{"file_id": request.training_file_id, "weight": 1}],
                    validation_files=request.validation_file_ids,
                    hyperparameters=request.hyperparameters,
                    suffix=request.suffix,
                    auto_start=False,
                    integrations=integrations,
                )
            )

        return await self._call("create the fine-tuning job", create, recover=created_already)

    async def get_job(self, job_id: str) -> TrainingJob:
        return self._job(
            await self._call(
                f"get job {job_id}", lambda: self.client.fine_tuning.jobs.get_async(job_id=job_id)
            )
        )

    async def start_job(self, job_id: str) -> TrainingJob:
        """Start a VALIDATED job. A job seen past VALIDATED was started (by this request
        whose answer was lost, or an earlier one): that is the answer, not an error."""

        async def started_already() -> TrainingJob | None:
            job = await self.get_job(job_id)
            return None if job.status in (JobStatus.VALIDATED, JobStatus.VALIDATING) else job

        async def start() -> TrainingJob:
            return self._job(await self.client.fine_tuning.jobs.start_async(job_id=job_id))

        return await self._call(f"start job {job_id}", start, recover=started_already)

    async def cancel_job(self, job_id: str) -> TrainingJob:
        """Cancel a job; cancelling one that is cancelled or finished already is no error."""

        async def over_already() -> TrainingJob | None:
            job = await self.get_job(job_id)
            ended = job.terminal or job.status == JobStatus.CANCELLATION_REQUESTED
            return job if ended else None

        async def cancel() -> TrainingJob:
            return self._job(await self.client.fine_tuning.jobs.cancel_async(job_id=job_id))

        return await self._call(f"cancel job {job_id}", cancel, recover=over_already)

    async def classify(self, model: str, inputs: list[str]) -> list[TargetScores]:
        response = await self._call(
            f"classify {len(inputs)} texts with {model}",
            lambda: self.client.classifiers.classify_async(model=model, inputs=inputs),
        )
        return [
            {target: {"scores": dict(result.scores)} for target, result in row.items()}
            for row in response.results
        ]

    async def moderate(self, model: str, inputs: list[str]) -> list[dict[str, float]]:
        response = await self._call(
            f"moderate {len(inputs)} texts with {model}",
            lambda: self.client.classifiers.moderate_async(model=model, inputs=inputs),
        )
        return [dict(result.category_scores or {}) for result in response.results]


def rate_buckets(settings: Settings) -> dict[str, float | None]:
    """The limiter's buckets: all requests, and the evaluate stage's share of them."""
    return {"api": settings.mistral_rps, "classify": settings.classify_rps}


_CLASSIFY_PATHS = ("/classifications", "/moderations")


def request_buckets(path: str) -> tuple[str, ...]:
    """The buckets a request to ``path`` counts against: ``api``, and ``classify`` for
    the classify and moderate endpoints."""
    return ("api", "classify") if path.endswith(_CLASSIFY_PATHS) else ("api",)


def shared_limiter(settings: Settings, redis: Any) -> SharedRateLimiter:
    """The one rate limit of every process on ``redis`` that uses this API account."""
    namespace = f"{settings.queue_name}:rate:{account_id(settings)}"
    return SharedRateLimiter(redis, namespace, rate_buckets(settings))


def account_id(settings: Settings) -> str:
    """Names the API account in shared Redis keys without revealing its key: a digest of
    the server URL and the key (Mistral's limits are per key)."""
    key = settings.mistral_api_key.get_secret_value() if settings.mistral_api_key else ""
    server = settings.mistral_server_url or "https://api.mistral.ai"
    return hashlib.sha256(f"{server}\n{key}".encode()).hexdigest()[:16]


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), 60.0) if value is not None else None
    except ValueError:
        return None
