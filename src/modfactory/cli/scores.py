"""Commands on scoring jobs: ``score`` (create and follow), ``scores``; ``status``,
``cancel`` and ``approve`` of a scoring job's id come here too."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modfactory.cli.app import (
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
    with_producer,
)

if TYPE_CHECKING:
    from modfactory.producer import Producer
    from modfactory.settings import Settings
    from modfactory.store.score_job import ScoreJob, ScoreProgress


SourceArg = Annotated[
    str,
    typer.Argument(
        help="What to score: a parquet, CSV or JSONL file or a directory of them, an "
        "object-store URL, hf:<dataset> or synthetic:N."
    ),
]
TextColumnOpt = Annotated[
    str | None, typer.Option(help="The text column (default MODFACTORY_TEXT_COLUMN).")
]
IdColumnOpt = Annotated[
    str | None, typer.Option(help="A column naming each row (else its row number).")
]
KeepTextOpt = Annotated[
    bool, typer.Option("--keep-text", help="Write each text beside its scores.")
]
ToReviewOpt = Annotated[
    int, typer.Option(min=0, help="Offer the N most uncertain texts to the review queue.")
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        help="Also copy the parts here when scored: a directory or an object-store URL "
        "(s3://bucket/results/); checked before anything is queued."
    ),
]
BatchOpt = Annotated[
    bool,
    typer.Option(
        "--batch/--no-batch",
        help="Through the backend's batch API where it has one (Mistral: half the price); "
        "--no-batch: per-request classify calls under the shared rate limit.",
    ),
]
DetachOpt = Annotated[
    bool, typer.Option("--detach", help="Print the job's id and return; workers score it.")
]
WorkerOpt = Annotated[
    bool | None,
    typer.Option(
        "--worker/--no-worker",
        help="Run a worker in this process (default: only with the embedded Redis).",
    ),
]


@app.command()
def score(
    source: SourceArg,
    model: ModelOpt = None,
    run_id: RunOpt = None,
    text_column: TextColumnOpt = None,
    id_column: IdColumnOpt = None,
    keep_text: KeepTextOpt = False,
    to_review: ToReviewOpt = 0,
    output: OutputOpt = None,
    batch: BatchOpt = True,
    detach: DetachOpt = False,
    worker: WorkerOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score an archive with the champion (or --run RUN), sharded over the workers: each
    shard written whole to scores/<id>/ in the artifact store, exactly once."""
    settings = load_settings(data_dir)
    check_artifacts(settings)

    async def act() -> ScoreJob:
        from modfactory.producer import Producer

        async with open_redis(settings) as (pool, embedded):
            producer = Producer(pool, settings)
            spec = await producer.score_spec(
                source,
                model_name=model,
                run_id=run_id,
                text_column=text_column,
                id_column=id_column,
                keep_text=keep_text,
                to_review=to_review,
                batch_api=batch,
                output=output,
            )
            job = await producer.submit_score(spec)
            if detach:
                return job
            if not as_json:
                err.print(
                    f"scoring job [bold]{job.id}[/bold]: {escape(spec.source)} by "
                    f"{spec.run_id} ({spec.model_id})"
                )
            in_process = embedded if worker is None else worker
            return await _follow(producer, settings, job.id, in_process, quiet=as_json)

    job = run_command(act())
    if detach and not as_json:
        out.print(job.id)
        return
    show(job, None, as_json)
    raise typer.Exit(exit_code(job))


def exit_code(job: ScoreJob) -> int:
    """0 succeeded, 3 awaiting approval, 1 anything else (as for runs)."""
    return {"succeeded": 0, "awaiting_approval": 3}.get(job.state, 1)


async def _follow(
    producer: Producer, settings: Settings, score_id: str, in_process: bool, quiet: bool
) -> ScoreJob:
    """Redraw the job's progress until it ends (with a worker in this process if asked)."""
    from rich.live import Live

    from modfactory.worker import build_worker, stop_worker

    task = None
    if in_process:
        running = build_worker(settings, redis=producer.redis, handle_signals=False)
        task = asyncio.create_task(running.async_run())
    elif not quiet:
        err.print("waiting for the workers (`modfactory worker`) to score it…")
    try:
        with Live(console=err, refresh_per_second=4, auto_refresh=False, transient=True) as live:
            while True:
                job = await producer.scores.get(score_id)
                if not quiet:
                    rows = await producer.scores.rows_in_progress(score_id)
                    live.update(progress_line(job, job.progress(rows)), refresh=True)
                if job.state.terminal or job.state == "awaiting_approval":
                    return job
                await asyncio.sleep(0.25)
    finally:
        if task is not None:
            await stop_worker(running)
            task.cancel()


def progress_line(job: ScoreJob, p: ScoreProgress) -> str:
    """``state · rows done of total · shards · rows/s · ETA``, as one line."""
    if not job.planned:
        return f"{job.id}: {job.state} — reading {job.spec.source} into shards"
    parts = [
        f"{job.id}: {job.state}",
        f"{p.rows_done:,} of {p.rows_total:,} rows",
        f"{p.shards_done} of {p.shards_total} shards",
    ]
    if p.rows_per_second:
        parts.append(f"{p.rows_per_second:,.0f} rows/s")
    if p.eta_seconds is not None:
        parts.append(f"ETA {p.eta_seconds:,.0f} s")
    return " · ".join(parts)


def show(job: ScoreJob, progress: ScoreProgress | None, as_json: bool) -> None:
    """A job as ``status`` prints it: progress, then per label what was flagged."""
    from modfactory.artifacts import score_key
    from modfactory.cli.app import artifact_url
    from modfactory.scoring.report import report_key
    from modfactory.scoring.shard import output_key

    progress = progress or job.progress({})
    if as_json:
        document = job.model_dump(mode="json") | {"progress": progress.model_dump()}
        document["parts"] = [artifact_url(output_key(job.id, i)) for i in range(len(job.shards))]
        out.print_json(json.dumps(document))
        return
    out.print(escape(progress_line(job, progress)), highlight=False)
    if job.quote is not None:
        via = "batch jobs" if job.batch else "per-request classify calls"
        out.print(
            f"quote:  {job.quote.cost:g} {job.quote.currency} for about "
            f"{job.quote.tokens:,} tokens through {via} ({escape(job.quote.basis)})",
            highlight=False,
        )
    if job.state == "awaiting_approval":
        out.print(
            f"above MODFACTORY_MAX_COST: `modfactory approve {job.id}` sends it; "
            f"`modfactory cancel {job.id}` drops it",
            highlight=False,
        )
    if job.error:
        out.print(f"[red]error:[/red] {escape(job.error)}", highlight=False)
    if job.summary is None:
        return
    table = Table(title=f"flagged at the {job.spec.thresholds} thresholds", title_justify="left")
    for column in ("label", "threshold", "flagged", "share", "highest"):
        table.add_column(column, justify="left" if column in ("label", "highest") else "right")
    for label, about in job.summary.labels.items():
        top = about.top[0] if about.top else None
        shown = f"{top.score:.3f} {top.text or '#' + top.id}" if top else ""
        table.add_row(
            label,
            f"{about.threshold:.3f}",
            f"{about.flagged:,}",
            f"{about.share:.2%}",
            escape(shown[:60]),
        )
    out.print(table)
    out.print(f"parts:  {artifact_url(score_key(job.id))}/", highlight=False)
    if job.summary.exported_to:
        out.print(f"copied: {escape(job.summary.exported_to)}", highlight=False)
    out.print(f"report: {artifact_url(report_key(job.id))}", highlight=False)


def status_of(score_id: str, data_dir: Path | None, as_json: bool) -> None:
    """``modfactory status SCORE_ID``."""

    async def read(p: Producer) -> tuple[ScoreJob, ScoreProgress]:
        job = await p.scores.get(score_id)
        return job, job.progress(await p.scores.rows_in_progress(score_id))

    job, progress = with_producer(data_dir, read)
    show(job, progress, as_json)


def approve_of(score_id: str, data_dir: Path | None, as_json: bool) -> None:
    """``modfactory approve SCORE_ID``."""
    job = with_producer(data_dir, lambda p: p.approve_score(score_id))
    if as_json:
        show(job, None, True)
    else:
        out.print(f"approved {job.id}: its shards are sent with the next worker")


def cancel_of(score_id: str, data_dir: Path | None, as_json: bool) -> None:
    """``modfactory cancel SCORE_ID``."""
    job = with_producer(data_dir, lambda p: p.cancel_score(score_id))
    if as_json:
        show(job, None, True)
    else:
        out.print(f"cancelled {job.id}: no shard starts after this; the parts done are kept")


@app.command()
def scores(
    data_dir: DataDirOpt = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List scoring jobs, newest first."""
    found = with_producer(data_dir, lambda p: p.scores.list(limit))
    if as_json:
        out.print_json(json.dumps([j.model_dump(mode="json") for j in found]))
        return
    if not found:
        out.print("no scoring jobs yet: `modfactory score SOURCE`")
        return
    table = Table(title_justify="left")
    for column in ("job", "state", "model", "source", "rows", "created"):
        table.add_column(column)
    for job in found:
        table.add_row(
            job.id,
            str(job.state),
            f"{job.spec.model_name} ({job.spec.run_id})",
            escape(job.spec.source),
            f"{job.total_rows:,}" if job.planned else "",
            f"{job.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)
