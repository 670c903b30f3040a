"""Texts to score, read from a file, and their scores written to one: JSON Lines, CSV or
parquet, chosen by the file's extension — whole (``read_texts``, ``write_scores``) or in
batches (``ScoresWriter``), so that a large file never sits in memory. Errors name the
file, and the row at fault."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from modfactory.data.recipe import RecipeError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def file_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise RecipeError(
            f"{path}: unknown format {path.suffix!r}; use .jsonl, .csv or .parquet"
        ) from None


def read_texts(path: Path, column: str) -> list[str]:
    """Every row's ``column``, in order; RecipeError naming the file (and row) at fault."""
    fmt = file_format(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such file")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        if column not in schema.names:
            raise RecipeError(f"{path}: no column {column!r} (it has {', '.join(schema.names)})")
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        rows: list[Any] = values
    elif fmt == "csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                names = ", ".join(reader.fieldnames or [])
                raise RecipeError(f"{path}: no column {column!r} (it has {names})")
            rows = [record[column] for record in reader]
    else:
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise RecipeError(f"{path}, line {number}: not JSON ({exc})") from None
                if not isinstance(record, dict) or column not in record:
                    raise RecipeError(f"{path}, line {number}: no {column!r} field")
                rows.append(record[column])
    for number, value in enumerate(rows, 1):
        if not isinstance(value, str):
            raise RecipeError(
                f"{path}, row {number}: {column!r} is {type(value).__name__}, not text"
            )
    return rows


def write_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows of ``{"text", "categories": {label: bool}, "category_scores": {label: float}}``:
    as they are in JSON Lines; flattened to ``text, <label>_score, <label>_flagged``
    columns in CSV and parquet."""
    fmt = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        return
    flat = [_flat(row) for row in rows]
    if fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["text"])
            writer.writeheader()
            writer.writerows(flat)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(flat), path)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": row["text"],
        **{f"{k}_score": v for k, v in row["category_scores"].items()},
        **{f"{k}_flagged": v for k, v in row["categories"].items()},
    }


class ScoresWriter:
    """Scores written batch by batch, as ``write_scores`` writes them at once, into a file
    that appears whole when the writer closes (a failure leaves the old file, or none)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fmt, self.rows = path, file_format(path), 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._file: Any = None
        self._writer: Any = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.fmt == "jsonl":
            self._file = self._file or self._tmp.open("w", encoding="utf-8")
            self._file.writelines(json.dumps(row) + "\n" for row in rows)
        elif self.fmt == "csv":
            flat = [_flat(row) for row in rows]
            if self._writer is None:
                self._file = self._tmp.open("w", encoding="utf-8", newline="")
                self._writer = csv.DictWriter(self._file, fieldnames=list(flat[0]))
                self._writer.writeheader()
            self._writer.writerows(flat)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist([_flat(row) for row in rows])
            self._writer = self._writer or pq.ParquetWriter(self._tmp, table.schema)
            self._writer.write_table(table)
        self.rows += len(rows)

    def close(self, *, keep: bool = True) -> None:
        """Finish the file and put it in place (``keep=False``: drop it)."""
        if self.fmt == "parquet" and self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        if not keep:
            self._tmp.unlink(missing_ok=True)
            return
        if self.rows == 0:
            write_scores(self.path, [])  # an empty file of its format
            return
        self._tmp.replace(self.path)
