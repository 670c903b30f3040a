"""A count of failed backend API requests, kept in Redis (what ``/metrics`` exports)."""

from __future__ import annotations

from redis.asyncio import Redis


def api_errors_key(prefix: str) -> str:
    return f"{prefix}:backend-api-errors"


class ApiErrorCounter:
    """``await counter(backend, kind)``: one failed backend request (HTTP status or error)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = api_errors_key(prefix)

    async def __call__(self, backend: str, kind: str) -> None:
        await self.redis.hincrby(self.key, f"{backend}|{kind}", 1)
