"""Every knob of modfactory, in one class: where things live, the recipe, promotion,
triggers, retention and the worker here; training (``config.training``) and serving with
its human loop (``config.serving``) in the groups it gathers.

Values come from the environment (prefix ``MODFACTORY_``) or a ``.env`` file in the
working directory; the Mistral key is read under its usual name ``MISTRAL_API_KEY``.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modfactory.artifact_keys import ArtifactsUrl, StorageOptions, storage_options
from modfactory.config.serving import ServingSettings
from modfactory.config.training import TrainingSettings
from modfactory.crontab import CronPeriod, CronText
from modfactory.redaction import provider_secrets, redact, secret_leaves, url_password
from modfactory.redis_connections import RedisCaFile, RedisUrl
from modfactory.values import CIVIL_COMMENTS_LABELS, HeadlineMetric, RecipeParams

__all__ = ["CIVIL_COMMENTS_LABELS", "HeadlineMetric", "Settings", "redact"]


def _recipe(name: str) -> Any:
    """The recipe number ``name`` as a setting: its field in ``RecipeParams`` (default,
    range, description), declared there once."""
    return RecipeParams.model_fields[name]


class Settings(TrainingSettings, ServingSettings, BaseSettings):
    """modfactory configuration (environment, ``.env``, or keyword arguments in code)."""

    model_config = SettingsConfigDict(
        env_prefix="MODFACTORY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,  # an error must never echo a secret it was given
        defer_build=True,  # validators are built on first use: `--help` answers at once
    )

    # --- where things live -------------------------------------------------------
    data_dir: Path = Field(
        Path("modfactory-data"),
        description="This machine's own files (embedded Redis, caches, scratch, logs), and the "
        "artifacts when MODFACTORY_ARTIFACTS_URL is unset.",
    )
    redis_url: RedisUrl = Field(
        None,
        repr=False,  # may hold a password
        description="Redis to use: redis://[user:password@]host[:port][/db], rediss://… "
        "(TLS), unix:///path.sock, or redis+sentinel://host:26379[,host:26379…]/service[/db] "
        "(the sentinels of a primary and its replicas). Unset: the CLI starts an embedded "
        "redis-server with its data under DATA_DIR/redis.",
    )
    redis_ca_file: RedisCaFile = Field(
        None,
        description="PEM file of the authority that signs the Redis server's TLS certificate "
        "(rediss:// URLs), when it is not one the system trusts.",
    )
    redis_min_replicas: Annotated[int, Field(ge=0, le=16)] = Field(
        0,
        description="Replicas that must hold a write before it is acknowledged: a run "
        "created, a correction taken, a file uploaded, a job created or started, a promotion "
        "(Redis WAIT). 0: a single Redis, or loss of the last second's writes in a failover "
        "accepted; 1 with a primary and a replica.",
    )
    queue_name: str = Field("modfactory", description="arq queue name (and Redis key prefix).")
    artifacts_url: ArtifactsUrl = Field(
        None,
        repr=False,  # may hold a user and password
        description="Where runs' files live (splits, charts, checkpoints, reports, local "
        "models): a directory, file:///…, s3://bucket/prefix, gs://…, az://… — shared by "
        "every worker and server. Unset: MODFACTORY_DATA_DIR.",
    )
    artifacts_options: StorageOptions = Field(
        None,
        description="JSON object of fsspec storage options for MODFACTORY_ARTIFACTS_URL, e.g. "
        '{"endpoint_url": "http://minio:9000"} (secret: it may hold credentials; unset: '
        "the provider's own configuration, AWS_* for S3).",
    )

    # --- the dataset recipe (the cookbook's numbers) -------------------------------
    source: str = Field(
        "hf:google/civil_comments",
        description="hf:<dataset>, a local directory of split files, or synthetic[:N].",
    )
    text_column: str = _recipe("text_column")
    label_columns: Annotated[tuple[str, ...], NoDecode] = _recipe("label_columns")
    n_train: int = _recipe("n_train")
    n_validation: int = _recipe("n_validation")
    n_test: int = _recipe("n_test")
    seed: int = _recipe("seed")
    threshold: float = _recipe("threshold")
    zero_flags_fraction: float = _recipe("zero_flags_fraction")
    max_label_fraction: float = _recipe("max_label_fraction")
    min_label_fraction: float = _recipe("min_label_fraction")

    build_engine: Literal["auto", "fast", "stream"] = Field(
        "auto",
        description="How build selects rows: fast (parquet read column-wise), stream "
        "(datasets, row by row) or auto (fast when it provably gives the same rows).",
    )

    # --- champion / challenger -------------------------------------------------------
    model_name: str = Field(
        "moderation", pattern=r"^[\w.-]+$", description="Registry name the runs compete under."
    )
    promotion_metric: HeadlineMetric = Field(
        "macro_pr_auc", description="Test metric a challenger must beat the champion on."
    )
    promotion_margin: float = Field(
        0.0, ge=0, description="By how much it must beat the champion to be promoted."
    )

    # --- triggers: one run per model name, cron, webhook -----------------------------
    active_run_policy: Literal["refuse", "coalesce"] = Field(
        "refuse",
        description="A trigger while the model name has an unfinished run: refuse it "
        "(HTTP 409, CLI exit 4), or coalesce (answer with the unfinished run).",
    )
    retrain_cron: CronText = Field(
        None,
        description="Retrain on this cron schedule (e.g. '0 3 * * *'; 6 fields: seconds first). "
        "A tick is skipped, with the reason recorded, while a run is unfinished or when the "
        "source and recipe are unchanged since the champion (or a recent candidate) was trained.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key of `modfactory serve`'s signed requests (secret).",
    )
    webhook_token: SecretStr | None = Field(
        None, description="Bearer token `modfactory serve` also accepts (secret)."
    )
    webhook_sources: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Sources a webhook request may name, comma-separated: hf:<dataset>, "
        "synthetic (any synthetic:N), or directories (any sub-directory allowed). Unset: "
        "only MODFACTORY_SOURCE.",
    )
    webhook_tolerance: int = Field(
        300, ge=1, description="How old (or early) a signed request's timestamp may be (s)."
    )
    webhook_max_body: int = Field(
        65_536, ge=1, description="Largest request body `modfactory serve` reads (bytes)."
    )
    serve_host: str = Field("127.0.0.1", description="`modfactory serve` listens here.")
    serve_port: int = Field(8080, ge=0, le=65535, description="`modfactory serve` port.")
    public_url: str | None = Field(
        None,
        description="Base URL of run links in webhook answers (unset: the request's own).",
    )

    # --- retention ---------------------------------------------------------------------
    keep_runs: Annotated[int | None, Field(ge=1)] = Field(
        500,
        description="Finished runs kept: older ones are pruned (Redis and run directory) "
        "daily by the reconciler and by `modfactory prune`, except champions and the runs "
        "a rollback needs (unset: no limit by count).",
    )
    keep_days: Annotated[float | None, Field(gt=0)] = Field(
        None,
        description="Finished runs younger than this many days are kept whatever "
        "MODFACTORY_KEEP_RUNS says (unset: no limit by age).",
    )

    # --- worker ----------------------------------------------------------------------
    max_jobs: int = Field(10, ge=1, description="Concurrent arq jobs per worker.")
    job_timeout: Annotated[int, Field(ge=10)] = Field(
        600,
        description="Longest a single stage job may run (s) before it is interrupted and "
        "queued again.",
    )
    worker_lease: Annotated[float, Field(ge=1, le=600)] = Field(
        15,
        description="A worker renews its lease every third of this (s); a job whose worker "
        "has not renewed it for this long (killed, its machine lost) is taken up again by the "
        "reconciler (the second round to find it lost: a Redis restart lapses every lease).",
    )
    health_check_interval: int = Field(30, ge=1, description="Worker heartbeat period (s).")
    stage_max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        5,
        description="Attempts of one stage that make no progress (a lost worker, an "
        "unreachable backend, a timeout, each at the same point) before the run fails naming "
        "the stage and how its last attempt ended; attempts that moved the stage on do not "
        "count.",
    )
    stage_min_attempt: Annotated[float, Field(gt=0, le=3600)] = Field(
        10.0,
        description="Seconds an attempt must last (or end of itself, with an error) to count "
        "against MODFACTORY_STAGE_MAX_ATTEMPTS; attempts whose worker was lost sooner are "
        "allowed four times as often.",
    )
    reconcile_interval: CronPeriod = Field(  # range first: the divisor check then divides
        60,
        ge=1,
        le=3600,
        description="Seconds between two rounds of the reconciler, which queues the lost "
        "step of any unfinished run again (a divisor of 60, or of 3600 in whole minutes).",
    )
    queued_alert_after: Annotated[int, Field(ge=1)] = Field(
        300,
        description="A run queued this long (s) while no worker is alive is reported by "
        "`modfactory runs` and makes /healthz say so.",
    )
    score_shard_rows: Annotated[int, Field(ge=100, le=10_000_000)] = Field(
        50_000,
        description="Rows in one shard of a scoring job (`modfactory score`): the unit a "
        "worker takes, writes whole and, if it is lost, scores again; a worker's memory "
        "grows with it.",
    )
    score_sources: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Sources `POST /v1/scores` may name, comma-separated: hf:<dataset>, "
        "synthetic (any synthetic:N), URL prefixes (s3://bucket/archive/) or directories "
        "(anything under them). Unset: none (the CLI may score any source it can read).",
    )
    score_batch_rows: Annotated[int, Field(ge=1, le=100_000)] = Field(
        2_000, description="Rows a local model scores in one call within a shard."
    )
    score_shard_timeout: Annotated[int, Field(ge=10)] = Field(
        3600, description="Seconds one shard of a scoring job may take before it is retried."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as JSON objects (one per line)."
    )

    @field_validator("label_columns", "webhook_sources", "score_sources", "shadow", mode="before")
    @classmethod
    def _split_labels(cls, value: object) -> object:
        """Accept a comma-separated list as well as JSON."""
        if isinstance(value, str):
            if value.strip().startswith("["):
                return tuple(json.loads(value))
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    def secret_values(self) -> tuple[str, ...]:
        """Every secret this configuration holds: the API and W&B keys, the webhook secret
        and tokens, the Redis and artifact URLs' passwords, the storage options' credentials
        (and the object stores' own variables) — what ``redact`` takes out of any text."""
        keys = (
            self.mistral_api_key,
            self.wandb_api_key,
            self.webhook_secret,
            self.webhook_token,
            self.serve_token,
            self.review_token,
        )
        values = [k.get_secret_value() for k in keys if k is not None]
        values += [url_password(self.redis_url), url_password(self.artifacts_url)]
        values += secret_leaves(storage_options(self.artifacts_options)) + provider_secrets()
        return tuple(sorted({v for v in values if v}, key=len, reverse=True))

    @property
    def webhook_allowed_sources(self) -> tuple[str, ...]:
        """What a webhook caller may name as its source (default: the configured one)."""
        return self.webhook_sources or (self.source,)

    @property
    def shadowed(self) -> tuple[str, ...]:
        """The model names MODFACTORY_SHADOW names ("*": all of them)."""
        every = {"1", "all", "true", "*"}
        return ("*",) if any(name.lower() in every for name in self.shadow) else self.shadow

    @property
    def moderation_baseline(self) -> str | None:
        """The backend whose moderation model runs are compared with (Mistral's, with a key
        and its SDK installed)."""
        return "mistral" if self.mistral_api_key and find_spec("mistralai") else None

    @property
    def default_backend(self) -> str:
        """The backend a run gets when it does not name one."""
        auto = "mistral" if self.mistral_api_key else "local"
        return auto if self.backend == "auto" else self.backend
