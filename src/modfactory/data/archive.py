"""An archive to score: the rows of a source read as a text column (and an optional id
column), in batches, never whole in memory.

A source is a parquet, CSV or JSON Lines file, a directory of them (every such file in
name order; one format), an object-store URL of either (``s3://bucket/comments/``, read
over fsspec with the provider's own credentials), ``hf:<dataset>`` (its parquet files,
every split in order) or ``synthetic:N`` (N generated comments). Errors are one line
naming the source, file, row or column at fault (``RecipeError``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modfactory.data.recipe import SPLITS, RecipeError

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
READ_ROWS = 10_000  # rows read from a file at a time
SYNTHETIC_ARCHIVE = re.compile(r"^synthetic:(\d{1,9})$")
MAX_SYNTHETIC_ROWS = 100_000_000
SYNTHETIC_CHUNK = 100_000  # synthetic rows generated at a time


@dataclass(frozen=True)
class Archive:
    """A readable source and the columns to read; made by ``open_archive``."""

    source: str
    files: tuple[str, ...]  # local paths or URLs, in reading order
    fmt: str  # parquet | csv | jsonl
    text_column: str
    id_column: str | None = None

    def batches(self) -> Iterator[pa.Table]:
        """Tables of ``row`` (the row's number in the archive, from 0), ``id`` (the id
        column as text, else the row number) and ``text``, in order."""
        import pyarrow as pa

        row = 0
        for name in self.files:
            for batch in _read(name, self.fmt, self.text_column, self.id_column):
                texts = batch.column(self.text_column)
                if texts.null_count:
                    first = texts.is_null().to_pylist().index(True)
                    raise RecipeError(
                        f"{_shown(name)}, row {row + first + 1}: {self.text_column!r} is empty"
                    )
                numbers = pa.array(range(row, row + batch.num_rows), pa.int64())
                ids = batch.column(self.id_column) if self.id_column else numbers
                yield pa.table({"row": numbers, "id": ids.cast(pa.string()), "text": texts})
                row += batch.num_rows

    def shards(self, rows: int) -> Iterator[pa.Table]:
        """The archive cut into tables of ``rows`` rows (the last may hold fewer); memory
        holds one shard and one batch."""
        import pyarrow as pa

        held: list[pa.Table] = []
        count = 0
        for table in self.batches():
            while table.num_rows:
                take = min(rows - count, table.num_rows)
                held.append(table.slice(0, take))
                count += take
                table = table.slice(take)
                if count == rows:
                    yield pa.concat_tables(held).combine_chunks()
                    held, count = [], 0
        if count:
            yield pa.concat_tables(held).combine_chunks()


def open_archive(source: str, text_column: str, id_column: str | None, data_dir: Path) -> Archive:
    """The archive ``source`` names, its columns checked in every file (RecipeError
    naming the source, the file, and the columns it has)."""
    source = source.strip()
    if not source:
        raise RecipeError("no source to score: give a file, a directory, a URL or hf:<dataset>")
    if not text_column:
        raise RecipeError("the text column may not be empty (--text-column)")
    fmt, files = _files(source, data_dir)
    archive = Archive(source, tuple(files), fmt, text_column, id_column or None)
    for name in files:
        names = _columns(name, fmt)
        for wanted in (text_column, id_column):
            if wanted and wanted not in names:
                raise RecipeError(
                    f"{_shown(name)}: no column {wanted!r} (it has {', '.join(names) or 'none'})"
                )
    return archive


def allowed_archive(value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if an API caller may score it, else RecipeError saying what is allowed.

    Each entry of ``allowed`` (MODFACTORY_SCORE_SOURCES) is an ``hf:`` dataset id,
    ``synthetic`` (any ``synthetic:N``), a URL prefix (``s3://bucket/archive/``: anything
    under it) or a directory (any file or directory under it, symlinks resolved). A value
    with ``..``, a NUL or a control character is refused before anything is looked at."""
    value = value.strip()
    refused = RecipeError(
        f"source {value[:200]!r} is not one the API may score; allowed: "
        f"{', '.join(allowed) or 'none (set MODFACTORY_SCORE_SOURCES)'}"
    )
    if not value or re.search(r"[\x00-\x1f]", value) or ".." in re.split(r"[/\\]", value):
        raise refused
    for entry in (e.strip() for e in allowed):
        if not entry:
            continue
        if value.startswith("hf:") or entry.startswith("hf:"):
            if value == entry:
                return value
        elif SYNTHETIC_ARCHIVE.match(value):
            if entry == "synthetic":
                return value
        elif "://" in entry and not entry.startswith("file://"):
            prefix = entry if entry.endswith("/") else entry + "/"
            if value == entry or value.startswith(prefix):
                return value
        elif "://" not in value or value.startswith("file://"):
            root = Path(entry.removeprefix("file://")).expanduser().resolve()
            target = Path(value.removeprefix("file://")).expanduser().resolve()
            if target == root or root in target.parents:
                return value
    raise refused


def _files(source: str, data_dir: Path) -> tuple[str, list[str]]:
    if source.startswith("hf:"):
        return "parquet", _hub_files(source)
    if match := SYNTHETIC_ARCHIVE.match(source):
        return "parquet", [str(_synthetic_file(int(match.group(1)), data_dir))]
    if "://" in source and not source.startswith("file://"):
        return _url_files(source)
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_file():
        return _format_of(path.name, source), [str(path)]
    if not path.is_dir():
        raise RecipeError(f"source {source!r}: no such file or directory")
    found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
    return _one_format(source, found)


def _url_files(url: str) -> tuple[str, list[str]]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        if fs.isfile(path):
            return _format_of(path, url), [url]
        protocol = url.partition("://")[0]
        keys = sorted(k for k in fs.find(path) if Path(k).suffix.lower() in FORMATS)
    except (ImportError, ValueError) as exc:
        raise RecipeError(f"source {url}: no way to read it ({exc})") from None
    except Exception as exc:  # the store's own errors: no access, unreachable
        raise RecipeError(f"source {url}: cannot be read ({_first_line(exc)})") from None
    return _one_format(url, [f"{protocol}://{k}" for k in keys])


def _one_format(source: str, found: list[str]) -> tuple[str, list[str]]:
    if not found:
        raise RecipeError(f"source {source}: no .parquet, .csv or .jsonl file in it")
    kinds = {FORMATS[Path(f).suffix.lower()] for f in found}
    if len(kinds) > 1:
        raise RecipeError(f"source {source}: its files mix formats ({', '.join(sorted(kinds))})")
    return kinds.pop(), found


def _format_of(name: str, source: str) -> str:
    try:
        return FORMATS[Path(name).suffix.lower()]
    except KeyError:
        raise RecipeError(
            f"source {source}: unknown format {Path(name).suffix!r}; use .parquet, .csv or .jsonl"
        ) from None


def _hub_files(source: str) -> list[str]:
    from modfactory.data.sources import parquet_split_files, parse_source

    parsed = parse_source(source)
    files = parquet_split_files(parsed, Path("."))
    if files is None:
        raise RecipeError(f"source {source}: the Hub holds it in no parquet files")
    return [f for split in SPLITS for f in files.get(split, [])]


def _synthetic_file(rows: int, data_dir: Path) -> Path:
    """``rows`` generated comments in one parquet file, written once, in chunks."""
    import pyarrow.parquet as pq

    from modfactory.data.synthetic import generate_split
    from modfactory.fileio import atomic_output

    if not 1 <= rows <= MAX_SYNTHETIC_ROWS:
        raise RecipeError(f"source synthetic:{rows}: 1 to {MAX_SYNTHETIC_ROWS:,} rows")
    path = data_dir / "sources" / f"archive-synthetic-{rows}.parquet"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        writer = None
        for seed, start in enumerate(range(0, rows, SYNTHETIC_CHUNK)):
            table = generate_split(min(SYNTHETIC_CHUNK, rows - start), 7_000 + seed)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
    return path


def _opened(name: str) -> Any:
    """A binary file object of a local path or a URL."""
    if "://" in name:
        import fsspec

        return fsspec.open(name, "rb").open()
    return open(name, "rb")


def _columns(name: str, fmt: str) -> list[str]:
    try:
        with _opened(name) as f:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                return list(pq.read_schema(f).names)
            first = next(iter(_batches(f, fmt, None)), None)
            return list(first.schema.names) if first is not None else []
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(f"{_shown(name)}: cannot be read as {fmt} ({_first_line(exc)})") from None


def _read(name: str, fmt: str, text: str, id_column: str | None) -> Iterator[pa.Table]:
    import pyarrow as pa

    columns = [text, *([id_column] if id_column else [])]
    try:
        with _opened(name) as f:
            for batch in _batches(f, fmt, columns):
                table = pa.Table.from_batches([batch]).select(columns)
                kind = table.schema.field(text).type
                if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                    if fmt == "parquet" or not pa.types.is_null(kind):
                        raise RecipeError(f"{_shown(name)}: {text!r} is {kind}, not text")
                    table = table.set_column(0, text, table.column(text).cast(pa.string()))
                yield table
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(f"{_shown(name)}: cannot be read as {fmt} ({_first_line(exc)})") from None


def _batches(f: Any, fmt: str, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS, columns=columns)
    elif fmt == "csv":
        from pyarrow import csv

        types = {c: pa.string() for c in columns or []}  # a text of digits is text
        convert = csv.ConvertOptions(include_columns=columns, column_types=types)
        yield from csv.open_csv(f, convert_options=convert)
    else:
        from pyarrow import json

        if columns is None:
            yield from json.open_json(f)
            return
        schema = pa.schema([(columns[0], pa.string())])  # the text; an id as it comes
        parse = json.ParseOptions(explicit_schema=schema)
        yield from json.open_json(f, parse_options=parse)


def _shown(name: str) -> str:
    from modfactory.artifact_keys import display_url

    return display_url(name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
