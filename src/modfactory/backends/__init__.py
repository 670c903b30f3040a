"""Training backends behind one interface (``base``), found by name in one registry
(``modfactory.plugins``: the built-ins and any installed package's entry point). Built in:
the ``local`` and ``mistral`` sub-packages, each holding the files its backend owns. Shared
by all: the request rate limit (``ratelimit``) and the count of failed API requests
(``api_errors``).

May import the data wing (the local backend reads its JSONL files) and the bottom.
"""

from __future__ import annotations

import importlib

from redis.asyncio import Redis

from modfactory.backends.base import Backend, BackendError, BackendUnavailable
from modfactory.plugins import backend_names, backend_targets, check_backend_name
from modfactory.settings import Settings

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "backend_class",
    "backend_names",
    "cached_backend",
    "connected_backend",
    "get_backend",
    "job_data",
]


def backend_class(name: str) -> type[Backend]:
    """The class of the backend called ``name``, imported now; BackendError naming the
    backends installed when there is none, or what is wrong with a plugin's."""
    try:
        target = backend_targets()[check_backend_name(name)]
    except ValueError as exc:
        raise BackendError(str(exc)) from None
    module_name, _, attribute = target.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # a plugin's module may fail in any way: say which and how
        raise BackendError(
            f"backend {name!r} ({target}) cannot be loaded: {type(exc).__name__}: {exc}"
        ) from None
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise BackendError(f"backend {name!r} ({target}) is not a modfactory Backend class")
    return found


def get_backend(name: str, settings: Settings) -> Backend:
    """The backend called ``name``, configured from ``settings``."""
    return backend_class(name).from_settings(settings)


def connected_backend(name: str, settings: Settings, redis: Redis) -> Backend:
    """The backend ``name`` wired to the shared Redis (its API errors counted there; for
    Mistral, one request rate shared by every process, as Mistral's limits are per key)."""
    backend = get_backend(name, settings)
    backend.connect(redis, settings)
    return backend


def cached_backend(
    made: dict[str, Backend], name: str, settings: Settings, redis: Redis
) -> Backend:
    """The backend ``name`` from ``made``; made, connected and kept there on first use (each
    process keeps one per name: its clients and loaded models are reused)."""
    backend = made.get(name)
    if backend is None:
        backend = made[name] = connected_backend(name, settings, redis)
    return backend


def job_data(settings: Settings, name: str, job_id: str) -> tuple[list[str], list[str]]:
    """What a backend keeps for one training job — artifact keys and Redis keys — which
    prune deletes with its run; none for a backend no longer installed."""
    try:
        cls = backend_class(name)
    except BackendError:
        return [], []
    return cls.job_files(settings, job_id), cls.job_records(settings, job_id)
