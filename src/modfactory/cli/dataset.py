"""``dataset build``: the cookbook's recipe on its own, no Redis needed."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modfactory.cli.app import (
    CliError,
    DataDirOpt,
    JsonOpt,
    SourceOpt,
    dataset_app,
    err,
    load_settings,
    out,
    run_command,
)
from modfactory.settings import Settings
from modfactory.values import RecipeParams


def with_recipe_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with one option per recipe number, made from the recipe's own fields
    (``RecipeParams``) and their settings' descriptions: declared nowhere else. They reach
    ``command`` as ``recipe={name: value}``, the ones given only."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "recipe"]

    def option(name: str) -> inspect.Parameter:
        setting = Settings.model_fields[name]
        kind = RecipeParams.model_fields[name].annotation
        default = setting.default
        if name == "label_columns":
            kind, default = str, ",".join(default)
        shown = f"{default:,}" if isinstance(default, int) else default
        text = f"{setting.description} (default {shown}; MODFACTORY_{name.upper()})"
        return inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[kind | None, typer.Option(help=text)],
        )

    recipe_names = list(RecipeParams.model_fields)

    @functools.wraps(command)
    def wrapped(**values: Any) -> None:
        given = {n: values.pop(n) for n in recipe_names}
        if given.get("label_columns"):
            given["label_columns"] = tuple(c.strip() for c in given["label_columns"].split(","))
        command(**values, recipe={k: v for k, v in given.items() if v is not None})

    wrapped.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*own, *(option(n) for n in recipe_names)]
    )
    wrapped.__annotations__ = {}
    return wrapped


@dataset_app.command("build")
@with_recipe_options
def dataset_build(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for train/validation/test.jsonl.")
    ],
    source: SourceOpt = None,
    data_dir: DataDirOpt = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="auto (default: fast when it gives the same rows), fast (parquet, "
            "column-wise) or stream (datasets, row by row)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    recipe: dict[str, Any] | None = None,
) -> None:
    """The cookbook's dataset recipe → train.jsonl, validation.jsonl, test.jsonl and a chart."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modfactory.data.build import build_dataset
    from modfactory.data.sources import parse_source
    from modfactory.values import RecipeParams

    settings = load_settings(data_dir)
    overrides = recipe or {}

    async def build() -> Any:
        params = RecipeParams.from_settings(settings, **overrides)
        parsed = parse_source(source or settings.source)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=as_json,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(split: str, done: int, wanted: int) -> None:
                if split not in tasks:
                    tasks[split] = bar.add_task(f"streaming {split}", total=wanted)
                bar.update(
                    tasks[split],
                    completed=done,
                    total=max(done, wanted) if done == wanted else wanted,
                )

            chosen = engine or settings.build_engine
            if chosen not in ("auto", "fast", "stream"):
                raise CliError(f"--engine {chosen!r}: choose auto, fast or stream")
            return await asyncio.to_thread(
                build_dataset, parsed, params, out_dir, settings.data_dir, progress, chosen
            )

    summary = run_command(build())
    if as_json:
        out.print_json(summary.model_dump_json())
        return
    table = Table(
        title=f"{summary.source}" + (" — SYNTHETIC DATA" if summary.synthetic else ""),
        title_justify="left",
    )
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("safe", justify="right")
    for label in summary.labels:
        table.add_column(label, justify="right")
    for split, s in summary.splits.items():
        table.add_row(
            split,
            f"{s.rows:,}",
            f"{s.safe:,}",
            *(f"{s.labels[label]:,}" for label in summary.labels),
        )
    out.print(table)
    if summary.dropped_labels:
        out.print(
            f"dropped (under {settings.min_label_fraction:.0%}): "
            + ", ".join(summary.dropped_labels)
        )
    out.print(
        f"files in {out_dir}; chart: {summary.chart}; {summary.engine} engine"
        + (f" ({summary.engine_note})" if summary.engine_note else ""),
        highlight=False,
    )
