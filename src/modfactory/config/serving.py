"""Serving settings: `modfactory serve`'s limits and tokens, shadow scoring, and the human
loop (corrections, the review queue, drift)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode


class ServingSettings(BaseModel):
    """The serving knobs of ``Settings`` (environment names ``MODFACTORY_<NAME>``)."""

    model_config = ConfigDict(defer_build=True)

    # --- serving the champion (`modfactory serve`: /v1/moderations, /v1/classifications)
    serve_token: SecretStr | None = Field(
        None,
        description="Bearer token of the serving endpoints (secret; MODFACTORY_WEBHOOK_TOKEN "
        "is accepted too). Give scoring clients this one: it cannot trigger retrains.",
    )
    serve_thresholds: Literal["tuned", "0.5"] = Field(
        "tuned",
        description="Flag a label at its threshold tuned on validation (tuned) or above 0.5.",
    )
    serve_max_inputs: int = Field(
        128, ge=1, le=10_000, description="Most texts in one serving request (422 beyond)."
    )
    serve_max_chars: int = Field(
        20_000, ge=1, le=1_000_000, description="Most characters in one text (422 beyond)."
    )
    serve_max_body: int = Field(
        2_000_000, ge=1, description="Largest serving request body (bytes; 413 beyond)."
    )
    serve_max_batch: Annotated[int, Field(ge=1, le=10_000)] = Field(
        256,
        description="Most texts scored in one call, gathered across concurrent requests.",
    )
    shadow: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Model names whose newest candidate also scores every request served, "
        "off the request path, its agreement with the champion recorded per label "
        "(comma-separated; 1 or all: every name; unset: none).",
    )
    serve_refresh_interval: Annotated[float, Field(gt=0, le=60)] = Field(
        1.0,
        description="How often `modfactory serve` reads the registry for a new champion (s).",
    )

    # --- the human loop: moderators' corrections become the next model's data ---------
    review_token: SecretStr | None = Field(
        None,
        description="Bearer token of POST /v1/feedback (secret; MODFACTORY_WEBHOOK_TOKEN is "
        "accepted too, MODFACTORY_SERVE_TOKEN never: a scoring client cannot write data).",
    )
    feedback_rate: int = Field(
        600, ge=1, description="Most corrections one token may send per minute (429 beyond)."
    )
    feedback_holdout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.2,
        description="Share of corrected texts (by a hash of the text: always the same ones) "
        "held out as the live test set; the rest joins the train split.",
    )
    retrain_after_feedback: Annotated[int | None, Field(ge=1)] = Field(
        None,
        description="Start a run of a model name once this many corrections arrived since "
        "its champion's data was built (unset: corrections wait for the next run).",
    )

    review_sample: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0,
        description="Share of the texts `serve` answers offered to the review queue (kept "
        "most uncertain first, plus a random tenth; never a request with store=false; 0: off).",
    )
    review_overlap: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0,
        description="Share of review texts handed to two different people: a text both "
        "answered alike is agreed; one answered differently is disputed, held out of "
        "training until an operator settles it (/ui/disputes). Agreement per reviewer: "
        "`modfactory review stats`, /ui/reviewers.",
    )
    review_queue_max: int = Field(1000, ge=1, description="Most texts waiting per model name.")
    review_max_age: float = Field(
        604_800, gt=0, description="Seconds a text waits in the review queue before it goes."
    )
    drift_window: float = Field(
        3600, gt=0, description="Seconds per window of served scores (drift: each vs the first)."
    )
    drift_alert: float = Field(
        0.2, gt=0, description="PSI of a label's served scores that raises modfactory_drift_alert."
    )

    # --- people: accounts and single sign-on behind a proxy ----------------------------
    auth_proxy_header: str | None = Field(
        None,
        description="Request header naming the signed-in account, set by a sign-on proxy "
        "in front of `modfactory serve` (oauth2-proxy: X-Forwarded-Email); honoured only "
        "from MODFACTORY_AUTH_PROXY_FROM, ignored from anywhere else.",
    )
    auth_proxy_from: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="The proxy's addresses or networks (comma-separated, e.g. "
        "10.0.0.5,10.1.0.0/16); required with MODFACTORY_AUTH_PROXY_HEADER.",
    )

    audit_retention: Annotated[float, Field(gt=0)] = Field(
        365,
        description="Days the audit trail is kept in the artifact store (`audit/<day>.jsonl`, "
        "compacted from Redis by the reconciler); older days are deleted.",
    )

    @field_validator("auth_proxy_from", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        """Comma-separated addresses or networks, each checked (ValueError naming it)."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for each in value or ():
            try:
                ipaddress.ip_network(str(each), strict=False)
            except ValueError:
                example = "e.g. 10.0.0.0/8"
                raise ValueError(f"{each!r} is not an address or network: {example}") from None
        return tuple(value or ())

    @field_validator("auth_proxy_header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,100}", value.strip()):
            raise ValueError(f"{value!r} is not a header name (letters, digits and -)")
        return value.strip() if value else None
