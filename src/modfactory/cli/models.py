"""Commands on models: ``models``, ``promote``, ``rollback``, ``prune``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from modfactory.cli.app import (
    DataDirOpt,
    JsonOpt,
    app,
    load_settings,
    out,
    with_producer,
)
from modfactory.cli.render import (
    print_model,
    show_model,
)

if TYPE_CHECKING:
    from modfactory.producer import Producer
    from modfactory.store.registry import ModelRecord
    from modfactory.store.shadow import ShadowTally


@app.command()
def models(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Model names with their champion, earlier champions and candidates; how shadowing
    candidates agree with it, and how its served scores drifted since it was promoted."""

    async def read(producer: Producer) -> tuple[list[ModelRecord], list[ShadowTally], list]:
        return await producer.models(), await producer.shadows(), await producer.drifts()

    records, shadows, drifts = with_producer(data_dir, read)
    drift = {d.model_name: d for d in drifts}
    if as_json:
        shown = [
            {
                **r.model_dump(mode="json"),
                "shadow": [t.model_dump() for t in shadows if t.model_name == r.name],
                "drift": drift[r.name].model_dump() if r.name in drift else None,
            }
            for r in records
        ]
        out.print_json(json.dumps(shown))
        return
    for record in records:
        print_model(
            record, [t for t in shadows if t.model_name == record.name], drift.get(record.name)
        )
    if not records:
        out.print("no model yet: a run that succeeds becomes the first champion")


@app.command()
def promote(
    run_id: Annotated[str, typer.Argument(help="A succeeded run.")],
    force: Annotated[
        bool, typer.Option(help="Promote even if it did not beat the champion.")
    ] = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make RUN's model the champion of its model name."""
    show_model(with_producer(data_dir, lambda p: p.promote(run_id, force)), as_json)


@app.command()
def rollback(
    model: Annotated[
        str | None, typer.Option(help="Model name (default MODFACTORY_MODEL_NAME).")
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore the previous champion; the current one becomes a candidate."""
    show_model(with_producer(data_dir, lambda p: p.rollback(model)), as_json)


@app.command()
def prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be deleted.")
    ] = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete finished runs beyond MODFACTORY_KEEP_RUNS / MODFACTORY_KEEP_DAYS (champions
    and the runs a rollback needs are kept); the reconciler does this daily."""
    settings = load_settings(data_dir)
    gone = with_producer(data_dir, lambda p: p.prune(dry_run=dry_run))
    if as_json:
        out.print_json(json.dumps({"dry_run": dry_run, "runs": gone}))
        return
    limits = f"MODFACTORY_KEEP_RUNS={settings.keep_runs}, MODFACTORY_KEEP_DAYS={settings.keep_days}"
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {len(gone)} finished run(s) ({limits})")
    for run_id in gone[:20]:
        out.print(f"  {run_id}")
    if len(gone) > 20:
        out.print(f"  … and {len(gone) - 20} more")
