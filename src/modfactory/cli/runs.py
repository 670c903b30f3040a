"""Commands on runs: ``run`` (create and follow), ``enqueue``, ``approve``, ``cancel``,
``status``, ``runs``, ``report``.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer

from modfactory.cli.app import (
    BackendOpt,
    DataDirOpt,
    HyperOpt,
    JsonOpt,
    SourceOpt,
    app,
    artifact_url,
    check_artifacts,
    enqueue_app,
    err,
    load_settings,
    open_redis,
    out,
    parse_hyperparameters,
    print_run_json,
    run_command,
    with_producer,
)
from modfactory.cli.render import (
    print_run,
    progress_table,
    runs_table,
)
from modfactory.store.stage_names import STAGES

SCORE_ID_PREFIX = "score-"  # store.score_job's (imported there with pydantic, not here)

if TYPE_CHECKING:
    from modfactory.producer import Producer
    from modfactory.settings import Settings
    from modfactory.store.run import Run


@app.command()
def run(
    source: SourceOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
    hyperparameter: HyperOpt = None,
    as_json: JsonOpt = False,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="Run a worker in this process (default: only with the embedded Redis).",
        ),
    ] = None,
) -> None:
    """Create a run and follow it to the end: build → upload → train → evaluate."""
    settings = load_settings(data_dir)
    check_artifacts(settings)
    final = run_command(
        _run(
            settings,
            source,
            backend,
            parse_hyperparameters(hyperparameter),
            as_json,
            worker,
        )
    )
    raise typer.Exit(_exit_code(final))


def _exit_code(run: Run) -> int:
    """0 succeeded, 3 awaiting approval, 1 anything else."""
    from modfactory.store.run_parts import RunState

    return {RunState.SUCCEEDED: 0, RunState.AWAITING_APPROVAL: 3}.get(run.state, 1)


async def _run(
    settings: Settings,
    source: str | None,
    backend: str | None,
    hyperparameters: dict[str, float | int],
    as_json: bool,
    with_worker: bool | None,
) -> Run:
    from modfactory.producer import Producer
    from modfactory.triggers.schedule import retrain_cron_jobs
    from modfactory.worker import build_worker, stop_worker

    async with open_redis(settings) as (pool, embedded):
        producer = Producer(pool, settings)
        spec = producer.spec(source=source, backend=backend, hyperparameters=hyperparameters)
        submission = await producer.submit(spec)
        run = submission.run
        if not as_json:
            if submission.created:
                err.print(f"run [bold]{run.id}[/bold]: {spec.source} on the {spec.backend} backend")
            else:
                err.print(f"following the unfinished run [bold]{run.id}[/bold] of this model")
        worker_task = None
        in_process = embedded if with_worker is None else with_worker
        if in_process:
            triggers = retrain_cron_jobs(settings)
            worker = build_worker(settings, redis=pool, triggers=triggers, handle_signals=False)
            worker_task = asyncio.create_task(worker.async_run())
        elif not as_json:
            err.print("waiting for a worker (`modfactory worker`) to pick the run up…")
        try:
            final = await _follow(producer, run.id, quiet=as_json)
        finally:
            if worker_task is not None:
                await stop_worker(worker)
                worker_task.cancel()
        print_run(final, as_json)
        return final


async def _follow(producer: Producer, run_id: str, quiet: bool) -> Run:
    """Poll the run and redraw the progress until the run ends or awaits approval."""
    from rich.live import Live

    from modfactory.store.run_parts import RunState

    with Live(console=err, refresh_per_second=4, transient=False, auto_refresh=False) as live:
        while True:
            run = await producer.run(run_id)
            if not quiet:
                live.update(progress_table(run), refresh=True)
            if run.state.terminal or run.state == RunState.AWAITING_APPROVAL:
                return run
            await asyncio.sleep(0.25)


@enqueue_app.command("pipeline")
def enqueue_pipeline(
    source: SourceOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
    hyperparameter: HyperOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a run and queue it for the workers; prints its id."""
    hyperparameters = parse_hyperparameters(hyperparameter)
    submission = with_producer(
        data_dir,
        lambda p: p.submit(p.spec(source=source, backend=backend, hyperparameters=hyperparameters)),
    )
    if as_json:
        print_run_json(submission.run)
    else:
        out.print(submission.run.id)
        if not submission.created:
            err.print("(the model's unfinished run: MODFACTORY_ACTIVE_RUN_POLICY=coalesce)")


def _enqueue_stage_command(stage: str) -> None:
    def command(
        run_id: Annotated[str, typer.Argument(help="The run id.")],
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        run_ = with_producer(data_dir, lambda p: p.enqueue(stage, run_id))
        if as_json:
            print_run_json(run_)
        else:
            out.print(f"queued {stage} for {run_.id}")

    command.__doc__ = f"Queue the {stage} stage of RUN_ID again (a failed stage is reset)."
    enqueue_app.command(stage)(command)


for _stage in STAGES:
    _enqueue_stage_command(_stage)


@app.command()
def approve(
    run_id: Annotated[str, typer.Argument(help="A run (or scoring job) awaiting approval.")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve the quoted cost of a run's training job; the job starts (or of a scoring
    job; its shards are sent)."""
    if run_id.startswith(SCORE_ID_PREFIX):
        from modfactory.cli.scores import approve_of

        return approve_of(run_id, data_dir, as_json)
    run_ = with_producer(data_dir, lambda p: p.approve(run_id))
    if as_json:
        print_run_json(run_)
    else:
        out.print(f"approved {run_.id}: its training job starts with the next worker look")


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="An unfinished run (or scoring job).")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run, and its remote training job if one is under way (or a scoring job)."""
    if run_id.startswith(SCORE_ID_PREFIX):
        from modfactory.cli.scores import cancel_of

        return cancel_of(run_id, data_dir, as_json)
    run_ = with_producer(data_dir, lambda p: p.cancel(run_id))
    if as_json:
        print_run_json(run_)
    else:
        out.print(f"cancelled {run_.id}")


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    open_: Annotated[bool, typer.Option("--open", help="Open report.html in a browser.")] = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write (again) and show RUN's report.json and self-contained report.html (kept with
    the run's artifacts, from any machine with the same settings)."""
    from modfactory.artifacts import ArtifactStore
    from modfactory.evaluation.report import report_data, write_report

    settings = load_settings(data_dir)
    check_artifacts(settings)
    run_ = with_producer(data_dir, lambda p: p.run(run_id))
    store = ArtifactStore.from_settings(settings)
    json_key, html_key = run_command(asyncio.to_thread(write_report, run_, store))
    if as_json:
        out.print_json(json.dumps(report_data(run_)))
    else:
        out.print(
            f"report: {store.url_of(html_key)}\ndata:   {store.url_of(json_key)}", highlight=False
        )
    if open_:
        import webbrowser

        here = store.local_dir("reports")  # a copy on this machine, when the store is remote
        page = run_command(asyncio.to_thread(store.local_copy, html_key, here))
        webbrowser.open(page.resolve().as_uri())


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run: stages, training progress, metrics (or a scoring job: its progress and
    what it flagged)."""
    if run_id.startswith(SCORE_ID_PREFIX):
        from modfactory.cli.scores import status_of

        return status_of(run_id, data_dir, as_json)
    run_ = with_producer(data_dir, lambda p: p.run(run_id))
    if as_json:
        print_run_json(run_)
        return
    out.print(progress_table(run_))
    print_run(run_, as_json=False)


@app.command()
def runs(
    data_dir: DataDirOpt = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first (and, on stderr, runs queued too long with no worker alive)."""
    from modfactory.store.health import queued_without_worker

    settings = load_settings(data_dir)

    async def runs_and_waiting(p: Producer) -> tuple[list[Run], list[tuple[str, float]]]:
        waiting = await queued_without_worker(
            p.redis, settings.queue_name, settings.queued_alert_after
        )
        return await p.runs(limit), waiting

    found, waiting = with_producer(data_dir, runs_and_waiting)
    for run_id, seconds in waiting:
        err.print(
            f"[yellow]warning:[/yellow] run {run_id} has been queued for {seconds / 60:.0f} min "
            "and no worker is alive: start one with `modfactory worker`"
        )
    if as_json:
        out.print_json(json.dumps([r.to_json_dict(artifact_url) for r in found]))
        return
    out.print(runs_table(found, out.width))
