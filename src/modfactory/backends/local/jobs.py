"""The local backend's training jobs, kept in Redis so that no job is tied to a machine.

Three keys per job under ``<prefix>:local:job:<id>``: the record (``LocalJob``: status,
files, hyperparameters; written by the backend, atomically), the trainer's progress
(``TrainerProgress``: checkpoints, the choice per label; written by the trainer holding the
lease, and only while it holds it) and the trainer's lease (``TrainerLease``: a token with
a time to live, renewed by the trainer). No lease and no saved model means nobody trains
the job: the next look starts a trainer — one, as the lease is taken with SET NX first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from modfactory.artifacts import backend_key
from modfactory.redis_json import update_document
from modfactory.redis_replication import (
    NotReplicated,
    note_history,
    replicated,
    replicated_sync,
)
from modfactory.values import JobStatus

if TYPE_CHECKING:
    import redis as sync_redis
    from redis.asyncio import Redis


class LocalJob(BaseModel):
    """A local training job as the backend keeps it (files are artifact keys)."""

    id: str
    status: JobStatus = JobStatus.QUEUED
    model: str
    target: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, float | int] = Field(default_factory=dict)
    grid: str = "small"
    labels: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    trainer_starts: int = 0  # leases taken to start a trainer (tries: at most MAX_TRAINER_STARTS)
    deadline: float | None = None  # Unix time the trainer must be done by
    deadline_seconds: float | None = None
    error: str | None = None


class TrainerProgress(BaseModel):
    """What the trainer holding the lease reports: a checkpoint per candidate fitted."""

    state: Literal["running", "succeeded", "failed", "cancelled"] = "running"
    trainer: int = 0  # which trainer of the job reports: 1 the first that ran, 2 the next…
    host: str = ""
    pid: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    checkpoints: list[dict[str, Any]] = Field(default_factory=list)
    candidate: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    error: str | None = None

    def as_metadata(self) -> dict[str, Any]:
        """What the trainer chose per label, and the candidate it is fitting, as a job's
        metadata."""
        found: dict[str, Any] = {"selection": self.selection} if self.selection else {}
        if self.candidate and self.state == "running":
            found["fitting"] = self.candidate
        return found


log = logging.getLogger("modfactory.backends.local")
CONFIG_ENV = "MODFACTORY_LOCAL_TRAINER"  # JSON: redis_url, prefix, artifacts, lease


def model_key(job_id: str) -> str:
    """Where a local job's model is kept in the artifact store."""
    return backend_key("local", "jobs", job_id, "model.joblib")


def overdue(timeout: float) -> str:
    """Why a job whose trainer ran past its deadline failed."""
    return (
        f"the local trainer ran longer than MODFACTORY_LOCAL_TRAIN_TIMEOUT ({timeout:g} s); "
        "choose a smaller MODFACTORY_LOCAL_GRID or raise the timeout"
    )


def job_key(prefix: str, job_id: str, part: str = "") -> str:
    """The Redis key of a job's record (``part``: ``progress`` or ``trainer``)."""
    return f"{prefix}:local:job:{job_id}" + (f":{part}" if part else "")


def job_keys(prefix: str, job_id: str) -> list[str]:
    return [job_key(prefix, job_id, part) for part in ("", "progress", "trainer")]


def new_token() -> str:
    """A trainer's lease token: where it runs, and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


class JobRecords:
    """The backend's side: records read and changed atomically, leases taken for trainers."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    async def get(self, job_id: str) -> LocalJob | None:
        raw = await self.redis.get(job_key(self.prefix, job_id))
        return LocalJob.model_validate_json(raw) if raw else None

    async def create(self, job: LocalJob) -> bool:
        """Store ``job`` unless a job with its id exists; whether it was stored."""
        return bool(
            await self.redis.set(job_key(self.prefix, job.id), job.model_dump_json(), nx=True)
        )

    async def update(self, job_id: str, change: Any) -> LocalJob:
        """Apply ``change(job) -> bool`` atomically (a concurrent change: applied again)."""

        def load(raw: bytes | None) -> LocalJob:
            if raw is None:
                raise LookupError(job_id)
            return LocalJob.model_validate_json(raw)

        job, _ = await update_document(self.redis, job_key(self.prefix, job_id), load, change)
        return job

    async def progress(self, job_id: str) -> TrainerProgress:
        raw = await self.redis.get(job_key(self.prefix, job_id, "progress"))
        return TrainerProgress.model_validate_json(raw) if raw else TrainerProgress()

    async def trainer(self, job_id: str) -> str | None:
        """The token of the trainer holding the job's lease (None: no trainer is alive)."""
        raw = await self.redis.get(job_key(self.prefix, job_id, "trainer"))
        return raw.decode() if raw else None

    async def take_lease(self, job_id: str, token: str, seconds: float) -> bool:
        """Take the job's lease for a trainer about to start; False when one holds it, or
        when it is not replicated in time (a lease a failover may lose starts no trainer)."""
        key = job_key(self.prefix, job_id, "trainer")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, token, nx=True, px=int(seconds * 1000))
            noted = note_history(pipe, self.redis)
            answers = await pipe.execute()
        taken, history = answers[0], answers[-1] if noted else None
        if not taken:
            return False
        try:
            await replicated(self.redis, f"the trainer lease of local job {job_id}", history)
        except NotReplicated as exc:
            log.warning("%s: no trainer started", exc)
            with contextlib.suppress(RedisError):
                await release_lease(self.redis, self.prefix, job_id, token)
            return False
        return True


class LeaseLost(Exception):
    """The trainer cannot be sure it still holds the lease: it must stop at once."""


SAFE_SHARE = 0.75  # of a lease: how long after its last renewal a trainer may go on
RENEW_SHARE = 1 / 3  # of a lease: how often a trainer renews it


def outage_ridden_out(lease_seconds: float) -> float:
    """The longest Redis outage (a failover) a trainer works through: past it, it stops."""
    return lease_seconds * (SAFE_SHARE - RENEW_SHARE)


class TrainerLease:
    """The trainer's side: its lease, renewed; progress written only while it is held.

    A renewal counts once the replicas the client asks for hold it (``redis_replication``),
    and the trainer may go on for ``SAFE_SHARE`` of a lease from when that renewal was
    *sent* — before the lease can lapse on the primary or on any replica that may be made
    primary. Redis unreachable (a failover) is waited out within that time; past it every
    call raises LeaseLost and the trainer exits, so a lease that lapses never has a live
    trainer behind it when the next look starts another. (Redis counts a lease's time to
    live on its own clock, as this process does: clocks must not run at different rates.)
    """

    def __init__(
        self, redis: sync_redis.Redis, prefix: str, job_id: str, token: str, seconds: float
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.job_id = job_id
        self.token = token.encode()
        self.seconds = seconds
        self.key = job_key(prefix, job_id, "trainer")
        self.safe_until = time.monotonic() + seconds * SAFE_SHARE  # the backend just took it

    def _patiently(self, action: Any) -> Any:
        """``action()``, tried again while Redis is unreachable, until it is not safe to."""
        from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

        delay = 0.1
        while True:
            try:
                return action()
            except (ConnectionError, TimeoutError, ReadOnlyError) as exc:
                left = self.safe_until - time.monotonic()
                if left <= 0:
                    raise LeaseLost(f"Redis unreachable until the lease is unsafe ({exc})") from exc
                time.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)

    def job(self) -> LocalJob:
        raw = self._patiently(lambda: self.redis.get(job_key(self.prefix, self.job_id)))
        if raw is None:
            raise LookupError(f"no local job {self.job_id!r}")
        return LocalJob.model_validate_json(raw)

    def progress(self) -> TrainerProgress:
        raw = self._patiently(lambda: self.redis.get(job_key(self.prefix, self.job_id, "progress")))
        return TrainerProgress.model_validate_json(raw) if raw else TrainerProgress()

    def _held(self, also: Any) -> Any:
        """Run ``also(pipe)`` in a transaction that holds only if the lease is still ours
        (a concurrent change of the key, e.g. our own renewal, is no loss: try again).
        False when the lease is no longer ours, else the primary's replication history it
        ran in (``note_history``; True when the client waits for no replica)."""
        from redis.exceptions import WatchError

        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(self.key)
                    if pipe.get(self.key) != self.token:
                        return False
                    pipe.multi()
                    also(pipe)
                    noted = note_history(pipe, self.redis)
                    answers = pipe.execute()
                    return answers[-1] if noted else True
                except WatchError:
                    continue

    def _still_safe(self) -> None:
        if time.monotonic() > self.safe_until:
            raise LeaseLost("the lease was not renewed in time")

    def _while_held(self, also: Any) -> bool:
        """``_held(also)``, patiently, while the lease is safe: False if it is not ours."""
        self._still_safe()
        return self._patiently(lambda: self._held(also)) is not False

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer ours (lapsed, or taken by another).
        LeaseLost when it cannot be renewed and replicated in time. A renewal the primary
        took but that a failover may lose is made again, on the new primary."""
        sent = time.monotonic()
        what = f"the lease of local job {self.job_id}"

        def renewed() -> bool:
            history = self._held(lambda pipe: pipe.pexpire(self.key, int(self.seconds * 1000)))
            if history is not False:
                replicated_sync(self.redis, what, history, self.safe_until)
            return history is not False

        self._still_safe()
        if not self._patiently(renewed):
            return False
        self.safe_until = sent + self.seconds * SAFE_SHARE
        return True

    def write(self, progress: TrainerProgress) -> bool:
        key = job_key(self.prefix, self.job_id, "progress")
        return self._while_held(lambda pipe: pipe.set(key, progress.model_dump_json()))

    def release(self) -> None:
        self._while_held(lambda pipe: pipe.delete(self.key))


async def release_lease(redis: Redis, prefix: str, job_id: str, token: str) -> bool:
    """Delete the job's lease if ``token`` still holds it (a trainer started here, stopped)."""
    key = job_key(prefix, job_id, "trainer")
    return bool(await redis.eval(_RELEASE, 1, key, token))


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


# --- changes of a record (``JobRecords.update`` applies them) ----------------------------
def when(current: JobStatus, /, **fields: Any) -> Any:
    """A record change: ``fields`` set if the job is ``current`` (else nothing changes)."""

    def change(job: LocalJob) -> bool:
        if job.status != current:
            return False
        for name, value in fields.items():
            setattr(job, name, value)
        return True

    return change


def cancel(job: LocalJob) -> bool:
    if job.status.terminal:
        return False
    job.status = JobStatus.CANCELLED
    return True


def started_once(job: LocalJob) -> bool:
    job.trainer_starts += 1
    return True


def url_of(redis: Redis) -> str:
    """A URL for the Redis ``redis`` is connected to (the embedded one has no setting)."""
    from urllib.parse import quote

    kwargs = redis.connection_pool.connection_kwargs
    user, password = quote(kwargs.get("username") or ""), quote(kwargs.get("password") or "")
    auth = f"{user}:{password}@" if password else ""
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if "SSL" in redis.connection_pool.connection_class.__name__ else "redis"
    host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
    return f"{scheme}://{auth}{host}:{port}/{kwargs.get('db', 0)}"


def now() -> datetime:
    return datetime.now(UTC)
