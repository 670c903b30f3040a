"""Where artifacts live and how the store is named: the keys (relative to the store's root,
each segment checked), the settings' types of MODFACTORY_ARTIFACTS_URL and _OPTIONS, a URL
as shown in messages, and the store's errors. ``artifacts`` does the reading and writing."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, SecretStr

SETTING = "MODFACTORY_ARTIFACTS_URL"
KEY_SEGMENT = re.compile(r"[\w][\w.=-]*")  # one segment of a key: never empty, "..", or a path
IN_PROGRESS = re.compile(
    r"^\..+\.tmp$"
)  # a writer's file in progress (``atomic_output``): unlisted


class ArtifactError(Exception):
    """The artifact store refused (a bad setting, no access, a missing object); the message
    names the setting and URL or the key, never a credential."""


class ArtifactNotFound(ArtifactError):
    """An artifact the run document names is not in the store."""


class ArtifactsUnavailable(ArtifactError):
    """The store could not be reached (down, a timeout, a dropped connection): try later."""


def run_key(run_id: str, *parts: str) -> str:
    """The key of a run's artifact: ``runs/<run>/<parts>``."""
    return checked_key("runs", run_id, *parts)


def backend_key(backend: str, *parts: str) -> str:
    """The key of a file a backend keeps (an uploaded file, a model): ``<backend>/<parts>``."""
    return checked_key(backend, *parts)


def dataset_key(run_id: str, name: str) -> str:  # train.jsonl, distribution.svg…
    return run_key(run_id, "dataset", name)


def checkpoint_prefix(run_id: str, name: str) -> str:  # one classification's batches
    return run_key(run_id, "evaluate", name)


def feedback_key(model_name: str, *parts: str) -> str:  # moderators' corrections, compacted
    return checked_key("feedback", model_name, *parts)


def score_key(score_id: str, *parts: str) -> str:  # a scoring job's shards, parts, report
    """``scores/<id>/<parts>``: its output ``part-00000.parquet``…, its shards' inputs
    under ``input/``, ``report.html``."""
    return checked_key("scores", score_id, *parts)


def audit_key(day: str = "") -> str:  # the audit log, one JSONL object per UTC day
    return checked_key("audit", f"{day}.jsonl") if day else "audit/"


def checked_key(*parts: str) -> str:
    for part in (p for whole in parts for p in whole.split("/")):
        if not KEY_SEGMENT.fullmatch(part):
            raise ArtifactError(f"not a valid artifact key segment: {part[:80]!r}")
    return "/".join(parts)


def _checked_url(value: str | None) -> str | None:
    """A directory, or scheme://bucket[/prefix]; whether it works is checked at start."""
    value = (value or "").strip() or None
    scheme, sep, rest = (value or "").partition("://")
    bad = value and re.search(r"[\s\x00-\x1f]", value)
    if bad or (sep and not (re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) and rest.strip("/"))):
        raise ValueError("a directory or scheme://bucket[/prefix], e.g. s3://bucket/modfactory")
    return value


def storage_options(value: SecretStr | None) -> dict[str, Any]:
    """MODFACTORY_ARTIFACTS_OPTIONS parsed: fsspec's storage options ({} when unset)."""
    if value is None or not value.get_secret_value().strip():
        return {}
    try:
        options = json.loads(value.get_secret_value())
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise ValueError("must be a JSON object of fsspec storage options")
    return options


def _checked_options(value: SecretStr | None) -> SecretStr | None:
    return value if storage_options(value) else None


ArtifactsUrl = Annotated[str | None, AfterValidator(_checked_url)]
StorageOptions = Annotated[SecretStr | None, AfterValidator(_checked_options)]


def display_url(url: str) -> str:
    """``url`` without a user or password, as shown in messages."""
    split = urlsplit(url)
    if split.scheme and "@" in split.netloc:
        split = split._replace(netloc=split.netloc.rpartition("@")[2])
    return urlunsplit(split) if split.scheme else url
