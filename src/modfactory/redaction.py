"""Secrets taken out of any text that may carry one (an API's error answer, an exception, a
library's log line), and where secrets hide besides the settings' own: a URL's password,
the storage options' credentials, the object stores' own environment variables."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

# The object stores' own secret variables: never in a message even if a driver quotes one.
PROVIDER_SECRETS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
)
_SECRET_NAME = re.compile(r"secret|key|token|password|credential|connection_string|sas", re.I)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret in it replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def url_password(url: str | None) -> str:
    return unquote(urlsplit(url).password or "") if url and "://" in url else ""


def secret_leaves(options: Any, secret: bool = False) -> list[str]:
    """The string values of (storage) options held under a name that sounds secret."""
    if isinstance(options, dict):
        return [
            v
            for name, value in options.items()
            for v in secret_leaves(value, secret or bool(_SECRET_NAME.search(str(name))))
        ]
    if isinstance(options, list):
        return [v for value in options for v in secret_leaves(value, secret)]
    return [options] if secret and isinstance(options, str) and len(options) >= 4 else []


def provider_secrets() -> list[str]:
    """The values of ``PROVIDER_SECRETS`` set in the environment (long enough to matter)."""
    return [v for name in PROVIDER_SECRETS if len(v := os.environ.get(name, "")) >= 8]
