"""``modfactory classify``: score texts from the command line with the champion (or a
run's model), exactly as ``modfactory serve`` would answer them; a file into a file in
batches, never whole in memory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.markup import escape

from modfactory.cli.app import (
    CliError,
    DataDirOpt,
    JsonOpt,
    ModelOpt,
    RunOpt,
    app,
    check_artifacts,
    err,
    load_settings,
    open_redis,
    out,
    run_command,
)

if TYPE_CHECKING:
    from arq.connections import ArqRedis

    from modfactory.backends import Backend
    from modfactory.data.archive import Archive
    from modfactory.serving.champions import ServedModel
    from modfactory.settings import Settings

Scored = dict[str, Any]  # {"text", "categories", "category_scores"}


@app.command()
def classify(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to score.")] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="A .jsonl, .csv or .parquet file of texts."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the scores there (.jsonl, .csv, .parquet)."),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="The input's text column (default MODFACTORY_TEXT_COLUMN).")
    ] = None,
    model: ModelOpt = None,
    run_id: RunOpt = None,
    thresholds: Annotated[
        Literal["tuned", "0.5"] | None,
        typer.Option(help="Flag at the thresholds tuned on validation, or above 0.5."),
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score texts with the champion (or --run RUN): per label, a score and a flag. With
    --input and --output the file is read and written in batches (any size)."""
    from modfactory.data.texts import file_format, read_texts, write_scores

    settings = load_settings(data_dir)
    check_artifacts(settings)  # a model may be read from it
    streamed = input_file is not None and output is not None

    async def act() -> tuple[ServedModel, list[Scored] | int]:
        if bool(texts) == (input_file is not None):
            raise CliError("give texts to score, or --input FILE (not both)")
        if output is not None:
            file_format(output)  # an unknown format is refused before any work
        column = text_column or settings.text_column
        archive = None
        if streamed:
            archive = await asyncio.to_thread(_archive, input_file, column, settings)
            wanted: list[str] = []
        else:
            wanted = texts or await asyncio.to_thread(read_texts, input_file, column)
        async with open_redis(settings) as (pool, _):
            served = _Served(pool, settings, thresholds or settings.serve_thresholds)
            try:
                chosen = await served.of(run_id, model or settings.model_name)
                if archive is not None and output is not None:
                    return chosen, await _stream(
                        chosen, archive, output, settings.serve_max_batch, quiet=as_json
                    )
                rows = await _score(chosen, wanted, settings, quiet=as_json or not input_file)
            finally:
                await served.close()
        return chosen, rows

    served, rows = run_command(act())
    if output is not None and not streamed:
        assert isinstance(rows, list)
        write_scores(output, rows)
    _report(served, rows, output, as_json)


def _archive(path: Path | None, column: str, settings: Settings) -> Archive:
    from modfactory.data.archive import open_archive

    if path is not None and not path.is_file():
        raise CliError(f"{path}: no such file")
    return open_archive(str(path), column, None, settings.data_dir)


async def _stream(
    served: ServedModel, archive: Archive, output: Path, max_batch: int, quiet: bool
) -> int:
    """Score ``archive`` batch by batch into ``output``; the rows written."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from modfactory.data.texts import ScoresWriter

    writer = ScoresWriter(output)
    columns = (
        SpinnerColumn(),
        TextColumn("scoring: {task.completed:,} texts"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
            task = bar.add_task("scoring", total=None)
            batches = archive.batches()
            while (table := await asyncio.to_thread(next, batches, None)) is not None:
                chunk = table.column("text").to_pylist()
                scored = []
                for start in range(0, len(chunk), max_batch):  # as `serve` sends them
                    scored += await served.scores(chunk[start : start + max_batch])
                rows = []
                for text, scores in zip(chunk, scored, strict=True):
                    categories, shown = served.moderation(scores)
                    rows.append({"text": text, "categories": categories, "category_scores": shown})
                await asyncio.to_thread(writer.write, rows)
                bar.update(task, advance=len(chunk))
    except BaseException:
        writer.close(keep=False)
        raise
    writer.close()
    return writer.rows


class _Served:
    """The model that scores, as ``serve`` would load it: a run's, or a name's champion."""

    def __init__(self, pool: ArqRedis, settings: Settings, rule: str) -> None:
        from modfactory.backends import cached_backend
        from modfactory.serving.champions import ChampionServer

        self.pool, self.settings = pool, settings
        self.backends: dict[str, Backend] = {}

        def backend(name: str) -> Backend:  # (made once: setdefault made one per call)
            return cached_backend(self.backends, name, settings, pool)

        self.server = ChampionServer(pool, settings.queue_name, backend, rule)

    async def of(self, run_id: str | None, model_name: str) -> ServedModel:
        from modfactory.producer import Producer
        from modfactory.serving.champions import NoChampion

        try:
            if run_id:
                return await self.server.model_of(
                    await Producer(self.pool, self.settings).run(run_id)
                )
            return await self.server.champion(model_name)
        except NoChampion as exc:
            raise CliError(str(exc)) from None

    async def close(self) -> None:
        for each in self.backends.values():
            await each.close()


async def _score(
    served: ServedModel, texts: list[str], settings: Settings, quiet: bool
) -> list[Scored]:
    """Score in batches, with a progress bar on stderr (not for a few texts or --json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    rows: list[Scored] = []
    with Progress(*columns, console=err, disable=quiet) as bar:
        task = bar.add_task("scoring", total=len(texts))
        for start in range(0, len(texts), settings.serve_max_batch):
            chunk = texts[start : start + settings.serve_max_batch]
            for text, scores in zip(chunk, await served.scores(chunk), strict=True):
                categories, shown = served.moderation(scores)
                rows.append({"text": text, "categories": categories, "category_scores": shown})
            bar.update(task, advance=len(chunk))
    return rows


def _report(
    served: ServedModel, rows: list[Scored] | int, output: Path | None, as_json: bool
) -> None:
    about = {
        "model": served.model_name,
        "champion": {"run_id": served.run_id, "model_id": served.model_id},
        "thresholds": served.thresholds,
    }
    count = rows if isinstance(rows, int) else len(rows)
    if as_json:
        found = {"output": str(output), "texts": count} if output else {"results": rows}
        out.print_json(json.dumps({**about, **found}))
        return
    summary = (
        f"{count:,} texts scored by {served.run_id} ({served.model_id}) of "
        f"{served.model_name}" + (f" → {output}" if output else "")
    )
    if output or isinstance(rows, int):
        err.print(summary, highlight=False)
        return
    from rich.table import Table

    table = Table(title_justify="left")
    table.add_column("text", overflow="fold", ratio=3)
    for label in served.thresholds:
        table.add_column(label, justify="right", overflow="fold")
    for row in rows:
        cells = [
            f"[bold red]{score:.2f}[/bold red]" if row["categories"][label] else f"{score:.2f}"
            for label, score in row["category_scores"].items()
        ]
        table.add_row(escape(row["text"]), *cells)
    out.print(table)
    at = "the thresholds tuned on validation" if served.rule == "tuned" else "scores above 0.5"
    err.print(f"{summary}; flagged (red) at {at}", highlight=False)
