"""Where a dataset comes from: ``hf:<name>``, a local directory of split files, or synthetic.

Every source is opened as a streamed ``datasets.IterableDataset`` per split, exactly as the
cookbook opens ``google/civil_comments``, so ``shuffle(seed, buffer_size).take(n)``
selects the very same rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modfactory.data import synthetic
from modfactory.data.recipe import SPLITS, RecipeError
from modfactory.fileio import atomic_output
from modfactory.logs import adopt_library_loggers

log = logging.getLogger("modfactory.data.sources")

if TYPE_CHECKING:
    from datasets import IterableDataset

HUB_CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the Hub before giving up


class SourceUnreachable(RecipeError):
    """The source cannot be reached (no network, the Hub down, an unknown dataset); the
    message is one line naming the source and what to do instead."""

    def __init__(self, name: str, why: str) -> None:
        first_line = (why.strip().splitlines() or [""])[0][:200]
        super().__init__(
            f"source hf:{name} cannot be reached ({first_line}); build from a local "
            "directory of split files instead (--source DIR), or from the Hugging Face "
            "cache with HF_HUB_OFFLINE=1"
        )


def check_hub_reachable(name: str) -> None:
    """SourceUnreachable at once when the Hub cannot be resolved or connected to, answers
    an error, or has no dataset ``name`` this machine may read — one request, instead of
    the Hub clients' own retries (the better part of a minute, every retry logged).
    Offline mode (HF_HUB_OFFLINE=1) reads the cache and asks nothing."""
    from urllib.parse import urlsplit

    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    if constants.HF_HUB_OFFLINE:
        return
    endpoint = urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = "its host cannot be resolved" if isinstance(exc, socket.gaierror) else exc
        raise SourceUnreachable(name, f"{constants.ENDPOINT}: {reason}") from None
    url = f"{constants.ENDPOINT}/api/datasets/{name}"
    try:  # the headers carry HF_TOKEN when one is set; nothing here logs or repeats them
        answer = httpx.get(
            url, headers=build_hf_headers(), timeout=HUB_CONNECT_TIMEOUT, follow_redirects=True
        )
    except httpx.HTTPError as exc:
        raise SourceUnreachable(name, f"{constants.ENDPOINT}: {type(exc).__name__}") from None
    if answer.status_code in (401, 403, 404):
        raise SourceUnreachable(
            name,
            f"the Hub at {constants.ENDPOINT} has no dataset {name} this machine may read "
            f"(HTTP {answer.status_code}: check the name, or set HF_TOKEN for a private or "
            "gated dataset)",
        )
    if answer.status_code >= 400:
        raise SourceUnreachable(
            name, f"the Hub at {constants.ENDPOINT} answered HTTP {answer.status_code}"
        )


STREAM_END_PAUSE = 0.1  # s; ``datasets`` waits 5 s after every parquet stream (see below)


def _import_datasets() -> None:
    """Import ``datasets`` with its and the Hub client's log lines sent through ours only.

    After each stream of parquet files ``datasets`` sleeps 5 s, so that Arrow's reading
    threads are gone before a program that exits right after a scan does (apache/arrow
    #39862, #45214: a 100 ms pause is reported to be enough). A build streams three splits
    and then writes its files, so it waits ``STREAM_END_PAUSE`` instead of 15 s."""
    import datasets  # (the import installs the libraries' own stderr handlers)

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = STREAM_END_PAUSE
    adopt_library_loggers("datasets", "huggingface_hub")


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
_SYNTHETIC = re.compile(r"^synthetic(?::(\d+))?$")
MAX_SYNTHETIC_ROWS = 1_000_000


@dataclass(frozen=True)
class Source:
    """A parsed ``--source`` value."""

    kind: str  # "hf" | "dir" | "synthetic"
    location: str
    rows: int = 0

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.location}"
        if self.kind == "synthetic":
            return f"synthetic:{self.rows}"
        return self.location


def parse_source(value: str) -> Source:
    """Parse ``hf:NAME``, ``synthetic[:N]`` or a directory path; fail on anything else."""
    value = value.strip()
    if value.startswith("hf:"):
        name = value[3:]
        if not name:
            raise RecipeError("source 'hf:' needs a dataset name, e.g. hf:google/civil_comments")
        return Source("hf", name)
    match = _SYNTHETIC.match(value)
    if match:
        digits = match.group(1) or str(synthetic.DEFAULT_ROWS)
        rows = int(digits) if len(digits) <= 9 else MAX_SYNTHETIC_ROWS + 1
        if not 10 <= rows <= MAX_SYNTHETIC_ROWS:
            raise RecipeError(
                f"source {value[:40]!r}: synthetic takes 10 to {MAX_SYNTHETIC_ROWS:,} rows"
            )
        return Source("synthetic", "synthetic", rows)
    path = Path(value).expanduser()
    if not path.is_dir():
        raise RecipeError(
            f"source {value!r} is neither hf:<dataset>, synthetic[:N] nor an existing directory"
        )
    return Source("dir", str(path.resolve()))


def allowed_source(value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if a webhook caller may choose it, else RecipeError saying what is allowed.

    Each entry of ``allowed`` (MODFACTORY_WEBHOOK_SOURCES) is an ``hf:`` dataset id, a
    synthetic source (``synthetic`` allows any ``synthetic:N`` within the cap), or a
    directory under which any sub-directory is allowed. A path is resolved, symlinks
    included, before it is compared, and may not contain ``..``; nothing on the disk is
    looked at for a path that is not allowed.
    """
    value = value.strip()
    refused = RecipeError(
        f"source {value[:200]!r} is not one a webhook may choose; allowed: "
        f"{', '.join(allowed) or 'none'} (MODFACTORY_WEBHOOK_SOURCES)"
    )
    if value.startswith("hf:") or _SYNTHETIC.match(value):
        wanted = parse_source(value)
        for entry in allowed:
            if value == entry.strip() or (wanted.synthetic and entry.strip() == "synthetic"):
                return value
        raise refused
    if not value or "\x00" in value or ".." in Path(value).parts:
        raise refused
    target = Path(value).expanduser().resolve()
    for entry in allowed:
        entry = entry.strip()
        if entry.startswith("hf:") or _SYNTHETIC.match(entry) or not entry:
            continue
        root = Path(entry).expanduser().resolve()
        if target == root or root in target.parents:
            parse_source(value)  # it must exist, as a directory
            return value
    raise refused


def split_files(directory: Path) -> dict[str, list[str]]:
    """Files named after their split (``train*``, ``validation*``, ``test*``), sorted."""
    files: dict[str, list[str]] = {}
    for split in SPLITS:
        found = sorted(
            p
            for p in directory.iterdir()
            if p.is_file() and p.name.startswith(split) and p.suffix in _BUILDERS
        )
        if not found:
            raise RecipeError(
                f"source {directory}: no {split}* file (.parquet, .csv or .jsonl) found; "
                f"files there: {', '.join(sorted(p.name for p in directory.iterdir())) or 'none'}"
            )
        kinds = {_BUILDERS[p.suffix] for p in found}
        if len(kinds) > 1:
            raise RecipeError(f"source {directory}: {split} files mix formats ({sorted(kinds)})")
        files[split] = [str(p) for p in found]
    return files


def parquet_split_files(source: Source, data_dir: Path) -> dict[str, list[str]] | None:
    """Each split's parquet files, local, in the order streaming reads them; None when the
    source is not made of parquet files. ``hf:`` sources are downloaded once into the
    ``datasets`` cache (with progress bars); RecipeError when that fails."""
    if source.kind == "hf":
        return _hub_parquet_files(source.location)
    if source.kind == "synthetic":  # written once as parquet: built without `datasets`
        return split_files(_synthetic_directory(source, data_dir, "parquet"))
    files = split_files(Path(source.location))
    if any(Path(p).suffix != ".parquet" for paths in files.values() for p in paths):
        return None
    return files


def _hub_parquet_files(name: str) -> dict[str, list[str]] | None:
    _import_datasets()
    from datasets import DownloadManager, load_dataset_builder

    check_hub_reachable(name)
    try:
        data_files = load_dataset_builder(name).config.data_files or {}
    except Exception as exc:  # the Hub is unreachable, the name unknown…
        raise SourceUnreachable(name, _why(exc)) from None
    urls = {split: list(data_files.get(split, [])) for split in SPLITS}
    every = [url for split_urls in urls.values() for url in split_urls]
    if not all(urls.values()) or any(not url.endswith(".parquet") for url in every):
        return None
    try:
        return DownloadManager(dataset_name=name).download(urls)
    except Exception as exc:
        raise SourceUnreachable(name, f"downloading its parquet files: {_why(exc)}") from None


def open_splits(source: Source, data_dir: Path) -> dict[str, IterableDataset]:
    """The three splits as streamed datasets (synthetic data is written once, then streamed)."""
    _import_datasets()
    from datasets import load_dataset

    if source.kind == "hf":
        check_hub_reachable(source.location)
        try:
            streams = load_dataset(source.location, streaming=True)
        except Exception as exc:  # the Hub is unreachable, the name unknown…
            raise SourceUnreachable(source.location, _why(exc)) from None
        missing = [s for s in SPLITS if s not in streams]
        if missing:
            raise RecipeError(f"source hf:{source.location} has no split {missing[0]!r}")
        return {split: streams[split] for split in SPLITS}
    if source.kind == "synthetic":
        directory = _synthetic_directory(source, data_dir, "jsonl")
    else:
        directory = Path(source.location)
    files = split_files(directory)
    return {
        split: load_dataset(
            _BUILDERS[Path(paths[0]).suffix], data_files={split: paths}, streaming=True
        )[split]
        for split, paths in files.items()
    }


def _synthetic_directory(source: Source, data_dir: Path, fmt: str) -> Path:
    """The synthetic source's files, written once: parquet for the fast engine, JSONL for
    streaming (``datasets`` pauses after each streamed parquet split)."""
    suffix = "" if fmt == "jsonl" else f"-{fmt}"
    return synthetic.write_source(
        data_dir / "sources" / f"synthetic-{source.rows}{suffix}", source.rows, fmt=fmt
    )


def fingerprint(source: Source, cache_dir: Path) -> str | None:
    """What the source holds now, in one string: equal fingerprints mean the same data.

    ``hf:`` sources: the dataset's revision on the Hub (None when the Hub cannot be asked).
    Directories: a hash over each split file's name and content hash; a file's content hash
    is cached under ``cache_dir`` by size and mtime, so only changed files are read again
    (touching a file without changing it does not change the fingerprint). Synthetic
    sources are deterministic: their row count.
    """
    if source.kind == "synthetic":
        return f"synthetic:{source.rows}"
    if source.kind == "hf":
        try:
            from huggingface_hub import HfApi

            check_hub_reachable(source.location)
            return f"hf:{source.location}@{HfApi().dataset_info(source.location, timeout=10).sha}"
        except Exception as exc:  # offline, unknown dataset, Hub down: no fingerprint
            log.info("no revision for hf:%s (%s)", source.location, type(exc).__name__)
            return None
    cache_file = cache_dir / "file-hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    parts = []
    for split, paths in split_files(Path(source.location)).items():
        for path in paths:
            stat = Path(path).stat()
            entry = cache.get(path)
            if not entry or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
                entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _hash(path)}
                cache[path] = entry
            parts.append(f"{split}/{Path(path).name}:{entry['sha256']}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(cache_file) as tmp:
        tmp.write_text(json.dumps(cache))
    return "files:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
