"""The artifact store: every file one stage, process or machine hands to another — a run's
split files, charts, evaluation checkpoints, metrics and report, a local backend's uploaded
files and models — under one root, over fsspec: a directory (the default: the data dir) or
a bucket (MODFACTORY_ARTIFACTS_URL: ``s3://``, ``gs://``, ``az://``, ``file://``).

This module alone makes an artifact's key and reads, writes, lists or deletes one. Keys are
relative to the root (``runs/<run>/dataset/train.jsonl``); the run document stores keys, so
a run reads the same from any machine with the same settings (older documents hold absolute
paths, which still read). An object appears whole or not at all: a file is written beside
its name and renamed; an object store shows an object only once its single PUT (or its
multipart upload) has completed. A process's own disk holds only scratch (``scratch``).

Credentials come from each provider's own configuration (``AWS_*`` and an instance role for
S3, ``AWS_ENDPOINT_URL`` included; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_*``)
or MODFACTORY_ARTIFACTS_OPTIONS; they never appear in a message: errors name the setting and
the URL, without its user part.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from pydantic import SecretStr

from modfactory.artifact_keys import (
    IN_PROGRESS,
    KEY_SEGMENT,
    SETTING,
    ArtifactError,
    ArtifactNotFound,
    ArtifactsUnavailable,
    ArtifactsUrl,
    StorageOptions,
    audit_key,
    backend_key,
    checked_key,
    checkpoint_prefix,
    dataset_key,
    display_url,
    feedback_key,
    run_key,
    score_key,
    storage_options,
)
from modfactory.fileio import atomic_output

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "SETTING",
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactStore",
    "ArtifactsUnavailable",
    "ArtifactsUrl",
    "Folder",
    "StorageOptions",
    "StoreSettings",
    "audit_key",
    "backend_key",
    "checkpoint_prefix",
    "dataset_key",
    "display_url",
    "feedback_key",
    "run_key",
    "score_key",
    "storage_options",
]


class StoreSettings(Protocol):
    """The settings' fields the store is made from (the settings import this module)."""

    artifacts_url: str | None
    artifacts_options: SecretStr | None
    data_dir: Path


class ArtifactStore:
    """One root (a directory or a bucket prefix) and the operations on keys under it.

    Every method is synchronous (fsspec's own); async code calls them in a thread. Errors
    are ``ArtifactError``s: ``ArtifactNotFound``, ``ArtifactsUnavailable`` or a refusal.
    """

    def __init__(
        self, url: str | Path, options: Mapping[str, Any] | None = None, scratch: Path | None = None
    ) -> None:
        text = str(url)
        self.protocol = urlsplit(text).scheme if "://" in text else "file"
        self.local = self.protocol == "file"
        if self.local:
            path = Path(urlsplit(text).path if "://" in text else text).expanduser().resolve()
            self.root, self.url = str(path), str(path)
        else:
            self.root = text.split("://", 1)[1].rstrip("/")
            self.url = text.rstrip("/")
        self.options = dict(options or {})
        # This machine's own directory (the data dir): scratch, logs, downloaded copies.
        self.scratch_dir = scratch or Path(tempfile.gettempdir()) / "modfactory"
        self._fs: AbstractFileSystem | None = None

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> ArtifactStore:
        options = storage_options(settings.artifacts_options)
        return cls(settings.artifacts_url or settings.data_dir, options, settings.data_dir)

    def url_of(self, key: str) -> str:
        """Where ``key`` is, as people read it (a path for a directory, else a URL)."""
        if os.path.isabs(key):  # a run document of an earlier version: a path
            return key
        return f"{display_url(self.url)}/{key}"

    def _path(self, key: str) -> str:
        if os.path.isabs(key):
            return key  # a path from an earlier version's run document (see ``_fs_for``)
        parts = PurePosixPath(key).parts
        if not parts or any(not KEY_SEGMENT.fullmatch(p) for p in parts):
            raise ArtifactError(f"not a valid artifact key: {key[:200]!r}")
        return f"{self.root}/{key}"

    @property
    def fs(self) -> AbstractFileSystem:
        if self._fs is None:
            self._fs = self._open()
        return self._fs

    def _open(self) -> AbstractFileSystem:
        import fsspec
        from fsspec.registry import known_implementations

        if self.protocol not in known_implementations and self.protocol not in fsspec.registry:
            raise ArtifactError(
                f"{SETTING}={display_url(self.url)}: {self.protocol}:// is no storage fsspec "
                "knows (s3://, gs://, az://, file://…)"
            )
        try:
            return fsspec.filesystem(self.protocol, **self.options)
        except ImportError:
            extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}
            hint = extra.get(self.protocol)
            install = f"pip install 'modfactory[{hint}]'" if hint else "install its fsspec driver"
            raise ArtifactError(
                f"{SETTING}={display_url(self.url)}: no driver for {self.protocol}:// ({install})"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ArtifactError(
                f"MODFACTORY_ARTIFACTS_OPTIONS: {self.protocol}:// does not take these options "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None

    def _fs_for(self, key: str) -> AbstractFileSystem:
        if os.path.isabs(key) and not self.local:
            from fsspec.implementations.local import LocalFileSystem

            return LocalFileSystem()
        return self.fs

    @contextlib.contextmanager
    def _translated(self, key: str) -> Iterator[None]:
        """fsspec's and its drivers' errors as ArtifactErrors naming the key and the store."""
        try:
            yield
        except ArtifactError:
            raise
        except FileNotFoundError:
            raise ArtifactNotFound(f"{self.url_of(key)}: no such artifact") from None
        except PermissionError as exc:
            raise ArtifactError(
                f"{self.url_of(key)}: access denied ({_first_line(exc)}); check the "
                f"credentials for {SETTING}"
            ) from None
        except Exception as exc:
            if not _is_io_error(exc):
                raise
            raise ArtifactsUnavailable(
                f"artifact store {display_url(self.url)} ({SETTING}) unreachable: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None

    # --- reading -------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        with self._translated(key):
            return bool(self._fs_for(key).exists(self._path(key)))

    def load(self, key: str) -> bytes:
        with self._translated(key):
            return self._fs_for(key).cat_file(self._path(key))

    def load_text(self, key: str) -> str:
        return self.load(key).decode("utf-8")

    def local_copy(self, key: str, scratch: Path) -> Path:
        """A file on this machine with the artifact's content: the file itself when the
        store is a directory, else a download into ``scratch`` (see ``scratch()``)."""
        if self.local or os.path.isabs(key):
            path = Path(self._path(key))
            if not path.is_file():
                raise ArtifactNotFound(f"{self.url_of(key)}: no such artifact")
            return path
        path = scratch / PurePosixPath(key).name
        with self._translated(key):
            self.fs.get_file(self._path(key), str(path))
        return path

    def list(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (a "directory"), sorted; [] when there are none."""
        with self._translated(prefix):
            try:
                found = self.fs.find(self._path(prefix))
            except FileNotFoundError:
                return []
        root = self.root.rstrip("/") + "/"
        keys = [str(p).removeprefix(root) for p in found]
        return sorted(k for k in keys if not IN_PROGRESS.match(PurePosixPath(k).name))

    # --- writing -------------------------------------------------------------------------
    def save(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key``, whole or not at all; returns the key."""
        with self._translated(key):
            if self.local:
                with self._local_tmp(key) as tmp:
                    tmp.write_bytes(data)
            else:
                self.fs.pipe_file(self._path(key), data)
        return key

    def save_text(self, key: str, text: str) -> str:
        return self.save(key, text.encode("utf-8"))

    def save_file(self, path: Path, key: str, *, move: bool = False) -> str:
        """Store a finished local file at ``key`` (``move``: the file may be taken, as a
        scratch file is); whole or not at all. Returns the key."""
        with self._translated(key):
            if self.local:
                with self._local_tmp(key) as tmp:  # a move is a rename on one file system
                    (shutil.move if move else shutil.copyfile)(path, tmp)
            else:
                self.fs.put_file(str(path), self._path(key))
        return key

    @contextlib.contextmanager
    def _local_tmp(self, key: str) -> Iterator[Path]:
        """A file beside ``key``'s, unique to this writer, renamed onto it after the block."""
        final = Path(self._path(key))
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(final) as tmp:
            yield tmp

    def delete(self, prefix: str) -> None:
        """Delete ``prefix`` and everything under it (nothing there: nothing done)."""
        with self._translated(prefix):
            path = self._path(prefix)
            if self.local and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif self.local:
                Path(path).unlink(missing_ok=True)
            elif keys := self.fs.find(path):
                self.fs.rm(keys)

    # --- scratch and start-up ----------------------------------------------------------------
    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private directory on this machine's disk, deleted after the block."""
        base = self.scratch_dir / "scratch"
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base) as directory:
            yield Path(directory)

    def local_dir(self, name: str) -> Path:
        """A directory of this machine's own (logs, caches): nothing another process needs."""
        directory = self.scratch_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def check(self) -> None:
        """Write, read and delete a small object at the root, so a missing bucket, wrong
        credentials or an unreachable endpoint are found before any run (ArtifactError
        naming the setting and the URL)."""
        probe = f"_modfactory-probe-{secrets.token_hex(6)}"
        try:
            if self.local:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            self.save(probe, b"ok")
            if self.load(probe) != b"ok":
                raise ArtifactError("the probe object read back differs")
            self.delete(probe)
        except ArtifactNotFound:
            raise ArtifactError(
                f"{SETTING}={display_url(self.url)}: the bucket or directory does not exist"
            ) from None
        except ArtifactError as exc:
            if str(exc).startswith(("MODFACTORY_", SETTING)):
                raise  # it names its setting already
            raise ArtifactError(
                f"{SETTING}={display_url(self.url)} cannot be used: {exc}"
            ) from None
        except OSError as exc:  # a local directory that cannot be made
            raise ArtifactError(
                f"{SETTING}={display_url(self.url)} cannot be used: {_first_line(exc)}"
            ) from None
        except (TypeError, ValueError) as exc:  # the driver refused an option on first use
            raise ArtifactError(
                f"MODFACTORY_ARTIFACTS_OPTIONS: the {self.protocol}:// driver refused them "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from None


class Folder:
    """Named objects under one prefix of a store — a classification's checkpoints, say."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def names(self) -> list[str]:
        start = self.prefix + "/"
        return [k.removeprefix(start) for k in self.store.list(self.prefix) if k.startswith(start)]

    def read(self, name: str) -> bytes | None:
        try:
            return self.store.load(checked_key(self.prefix, name))
        except ArtifactNotFound:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.store.save(checked_key(self.prefix, name), data)

    def delete(self, name: str) -> None:
        self.store.delete(checked_key(self.prefix, name))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _is_io_error(exc: Exception) -> bool:
    """An error of the store's transport (network, timeout, the driver's own), not a bug."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    module = type(exc).__module__.split(".")[0]
    return module in {"botocore", "aiobotocore", "aiohttp", "google", "azure", "requests"}
