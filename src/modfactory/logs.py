"""Logging: one line per event, as text or as JSON (MODFACTORY_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from modfactory.settings import redact

LogFormat = Literal["text", "json"]
_FIELDS = ("run_id", "stage")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "run_id"?, "stage"?, "error"?}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: getattr(record, k) for k in _FIELDS if getattr(record, k, None)})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


class TextFormatter(logging.Formatter):
    """``time level logger: [run stage] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        context = " ".join(str(getattr(record, k)) for k in _FIELDS if getattr(record, k, None))
        if context:
            record.message = f"[{context}] {record.message}"
        return super().formatMessage(record)


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines with every secret in them replaced by ``***``: a
    library's line (or an exception's text) cannot print a key this process holds."""

    def __init__(self, inner: logging.Formatter, secrets: Sequence[str]) -> None:
        super().__init__()
        self.inner, self.secrets = inner, tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record), self.secrets)


def configure_logging(
    fmt: LogFormat, level: int = logging.WARNING, secrets: Sequence[str] = ()
) -> None:
    """Send every logger's lines to stderr in ``fmt`` (replacing earlier handlers), with
    ``secrets`` (``Settings.secret_values()``) redacted."""
    handler = logging.StreamHandler()
    inner = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in _CHATTY:  # a line per client made ("Found credentials in environment…")
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))


_CHATTY = ("botocore", "aiobotocore", "s3fs", "fsspec", "gcsfs", "adlfs", "azure")


def adopt_library_loggers(*names: str) -> None:
    """Libraries that add their own stderr handler when imported (``datasets``,
    ``huggingface_hub``) would print each line twice, once unformatted: once logging is
    configured, their lines go through its handler only."""
    if not logging.getLogger().handlers:
        return
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers[:] = [h for h in logger.handlers if type(h) is not logging.StreamHandler]
        logger.propagate = True
