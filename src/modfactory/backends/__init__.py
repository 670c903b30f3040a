"""Training backends behind one interface (``base``): ``local`` (embedded; its training
process in ``local_trainer``) and ``mistral`` (the SDK's answers read by
``mistral_answers``, its per-request waste removed by ``mistral_fastpath``; the shared
request rate limit in ``ratelimit``).

May import the data wing (the local backend reads its JSONL files) and the bottom.
"""

from __future__ import annotations

from redis.asyncio import Redis

from modfactory.backends.api_errors import ApiErrorCounter
from modfactory.backends.base import Backend, BackendError, BackendUnavailable
from modfactory.settings import Settings

BACKENDS = ("local", "mistral")
__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "connected_backend",
    "get_backend",
]


def get_backend(name: str, settings: Settings) -> Backend:
    """The backend called ``name``, configured from ``settings``."""
    if name == "local":
        from modfactory.backends.local import LocalBackend

        return LocalBackend(
            settings.data_dir,
            epochs=settings.local_epochs,
            alpha=settings.local_alpha,
            train_timeout=settings.local_train_timeout,
            grid=settings.local_grid,
        )
    if name == "mistral":
        from modfactory.backends.mistral import MistralBackend

        return MistralBackend(settings)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def connected_backend(name: str, settings: Settings, redis: Redis) -> Backend:
    """The backend ``name``, counting its API errors in Redis and, for Mistral, sharing one
    rate limit with every process on this Redis (Mistral's limits are per API key)."""
    backend = get_backend(name, settings)
    backend.error_counter = ApiErrorCounter(redis, settings.queue_name)
    if name == "mistral":
        from modfactory.backends.mistral import shared_limiter

        backend.limiter = shared_limiter(settings, redis)  # type: ignore[attr-defined]
    return backend
