"""``dataset build``: the cookbook's recipe on its own, no Redis needed."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from modfactory.cli.app import (
    CliError,
    DataDirOpt,
    JsonOpt,
    SourceOpt,
    dataset_app,
    load_settings,
    out,
    run_command,
)
from modfactory.cli.render import dataset_table, split_progress
from modfactory.values import DatasetSummary, RecipeParams


def with_recipe_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with one option per recipe number, made from the recipe's own fields
    (``RecipeParams``: defaults and descriptions), declared nowhere else. They reach
    ``command`` as ``recipe={name: value}``, the ones given only."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "recipe"]

    def option(name: str) -> inspect.Parameter:
        field = RecipeParams.model_fields[name]
        kind, default = field.annotation, field.default
        if name == "label_columns":
            kind, default = str, ",".join(default)
        shown = f"{default:,}" if isinstance(default, int) else default
        text = f"{field.description} (default {shown}; MODFACTORY_{name.upper()})"
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
        if given["label_columns"] is not None:
            columns = tuple(c.strip() for c in given["label_columns"].split(",") if c.strip())
            if not columns:
                raise typer.BadParameter(
                    "name at least one score column", param_hint="--label-columns"
                )
            given["label_columns"] = columns
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
    from modfactory.data.build import build_dataset
    from modfactory.data.sources import parse_source

    settings = load_settings(data_dir)
    chosen = engine or settings.build_engine

    async def build() -> tuple[DatasetSummary, RecipeParams]:
        params = RecipeParams.from_settings(settings, **(recipe or {}))  # refused: one line
        if chosen not in ("auto", "fast", "stream"):
            raise CliError(f"--engine {chosen!r}: choose auto, fast or stream")
        parsed = parse_source(source or settings.source)
        with split_progress(quiet=as_json) as progress:
            summary = await asyncio.to_thread(
                build_dataset, parsed, params, out_dir, settings.data_dir, progress, chosen
            )
        return summary, params

    summary, params = run_command(build())
    if as_json:
        out.print_json(summary.model_dump_json())
        return
    out.print(dataset_table(summary))
    if summary.dropped_labels:
        dropped = ", ".join(summary.dropped_labels)
        out.print(f"dropped (under {params.min_label_fraction:.0%}): {dropped}")
    out.print(
        f"files in {out_dir}; chart: {summary.chart}; {summary.engine} engine"
        + (f" ({summary.engine_note})" if summary.engine_note else ""),
        highlight=False,
    )
