"""Training settings: the backend, Mistral's job and API, the local model, the cost cap,
how a job is followed and how evaluate classifies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator

from modfactory.plugins import BackendSetting


class TrainingSettings(BaseModel):
    """The training knobs of ``Settings`` (environment names ``MODFACTORY_<NAME>``)."""

    model_config = ConfigDict(defer_build=True)

    # ------------------------------------------------------------------
    backend: BackendSetting = Field(
        "auto",
        description="auto (mistral when MISTRAL_API_KEY is set, else local), local, "
        "mistral, or the name of an installed backend plugin.",
    )
    mistral_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("MISTRAL_API_KEY", "MODFACTORY_MISTRAL_API_KEY"),
        description="Mistral API key (never logged, never stored in Redis).",
    )
    mistral_server_url: str | None = Field(
        None, description="Mistral API base URL (a proxy or an emulator); unset: the SDK's default."
    )
    mistral_model: str = Field("ministral-3b-latest", description="Base model to fine-tune.")
    mistral_training_steps: int = Field(200, ge=1, description="Classifier Factory training steps.")
    mistral_learning_rate: float = Field(5e-5, ge=1e-8, le=1, description="Learning rate.")
    mistral_weight_decay: float | None = Field(
        None, ge=0, le=1, description="Weight decay (unset: the API's default, 0.1)."
    )
    mistral_warmup_fraction: float | None = Field(
        None, ge=0, le=1, description="Warm-up fraction (unset: the API's default, 0.05)."
    )
    mistral_epochs: float | None = Field(
        None, gt=0, description="Epochs (unset: computed by the API from the steps)."
    )
    mistral_seq_len: int | None = Field(None, ge=100, description="Sequence length (unset: API's).")
    mistral_job_suffix: str = Field(
        "mf",
        pattern=r"^[a-z0-9]{0,6}$",
        description="Mistral backend: start of each job's suffix (the rest identifies the run): "
        "up to 6 of a-z 0-9.",
    )
    wandb_project: str | None = Field(None, description="Weights & Biases project for the job.")
    wandb_api_key: SecretStr | None = Field(None, description="Weights & Biases key (secret).")
    mistral_timeout: float = Field(60.0, gt=0, description="Timeout of one API request (s).")
    mistral_max_retries: int = Field(
        6, ge=0, le=20, description="Retries of a request on 429, 5xx, timeouts, lost connections."
    )
    mistral_retry_backoff: float = Field(
        0.5,
        gt=0,
        le=30,
        description="Backoff before a retry: full jitter on this · 2^attempt (s), capped at 30 s; "
        "a 429's Retry-After is waited instead.",
    )
    max_cost: Annotated[float | None, Field(ge=0)] = Field(
        None,
        description="Cost cap: a training job or scoring job quoted above it waits for "
        "`modfactory approve RUN_OR_SCORE_ID`.",
    )
    mistral_classify_price: Annotated[float, Field(ge=0)] = Field(
        0.1,
        description="EUR per million tokens a fine-tuned classifier reads per request "
        "(what scoring jobs are quoted with: set it from your Mistral price list).",
    )
    mistral_batch_discount: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="Batch jobs' price as a share of the per-request price."
    )
    mistral_batch_timeout_hours: Annotated[int, Field(ge=1, le=168)] = Field(
        24, description="Hours a batch job of a scoring job may run before Mistral ends it."
    )
    local_grid: Literal["small", "full", "off"] = Field(
        "small",
        description="Local backend: candidates per label, the best on validation kept — "
        "small (plain and NB-weighted n-grams x 3 strengths), full (2 n-gram sets x 2 "
        "weightings x 7 strengths) or off (one plain candidate, C = 1: the fastest).",
    )
    local_train_processes: Annotated[int | None, Field(ge=1, le=256)] = Field(
        None,
        description="Local backend: processes a trainer fits candidates with (default: the "
        "machine's CPUs); the model chosen does not depend on it.",
    )
    local_train_timeout: Annotated[float, Field(ge=1)] = Field(
        3600.0,
        description="Local backend: longest a training job may run (s); its trainer "
        "process is then stopped and the job fails, naming this setting.",
    )
    poll_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between two looks at a training job (±10 % jitter; the local "
        "backend looks every second, a look being a few Redis reads).",
    )
    poll_max_interval: float = Field(
        120.0, gt=0, description="Longest wait between looks while nothing changes (backoff)."
    )
    classify_batch_size: int = Field(64, ge=1, le=1024, description="Texts per classify call.")
    classify_concurrency: int = Field(
        4, ge=1, le=64, description="Classify calls in flight at once during evaluate."
    )
    classify_rps: float | None = Field(
        4.0,
        ge=0.01,  # slower would leave a caller waiting for minutes
        description="Most classify and moderate calls per second over all workers: the "
        "evaluate stage's share of MODFACTORY_MISTRAL_RPS (unset: no limit of its own).",
    )
    mistral_rps: Annotated[float | None, Field(ge=0.01)] = Field(
        5.0,
        description="Most Mistral API requests per second over all workers and runs "
        "(Mistral limits each API key); shared through Redis (unset: no limit).",
    )

    @field_validator("wandb_api_key")
    @classmethod
    def _wandb_key_length(cls, value: SecretStr | None) -> SecretStr | None:
        """The API takes 40-character W&B keys; say so before a job is created."""
        if value is not None and len(value.get_secret_value()) != 40:
            raise ValueError("a Weights & Biases API key has 40 characters")
        return value
