"""``modfactory``: build, train and evaluate a moderation classifier from the command line.

Entry point only: parse, call the producer / worker / dataset builder, print. Progress goes
to stderr; ``--json`` prints one JSON document on stdout. Exit codes: 0 done, 1 the run
failed or was cancelled, 2 bad input or setting, 3 awaiting approval, 4 the model name
has an unfinished run (MODFACTORY_ACTIVE_RUN_POLICY=refuse), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from arq.connections import ArqRedis, create_pool
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from modfactory.backends import BackendError
from modfactory.data.recipe import RecipeError
from modfactory.logs import configure_logging
from modfactory.producer import Producer
from modfactory.settings import Settings, redact
from modfactory.store import queue
from modfactory.store.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from modfactory.store.registry import ModelRecord, RegistryError
from modfactory.store.runs import (
    STAGES,
    ActiveRunExists,
    Run,
    RunNotFound,
    RunState,
    RunStateError,
    RunStore,
)
from modfactory.triggers.monitoring import queued_without_worker

T = TypeVar("T")

app = typer.Typer(
    help="Train and keep fresh your own content-moderation classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dataset_app = typer.Typer(
    help="Build the training set on its own (no Redis needed).", no_args_is_help=True
)
enqueue_app = typer.Typer(
    help="Queue a new run, or one stage of an existing run.", no_args_is_help=True
)
app.add_typer(dataset_app, name="dataset")
app.add_typer(enqueue_app, name="enqueue")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SourceOpt = Annotated[
    str | None, typer.Option("--source", help="hf:<dataset>, a directory, or synthetic[:N].")
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend", help="local or mistral (default: mistral if MISTRAL_API_KEY is set)."
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where datasets, models and metrics go.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
HyperOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--hyperparameter", "-H", help="KEY=VALUE, repeatable (local: epochs, alpha, seed)."
    ),
]


EXIT_ACTIVE_RUN = 4


class CliError(Exception):
    """An error worth one line to the user, and exit code 2."""


def _settings(data_dir: Path | None = None) -> Settings:
    """Settings from the environment and .env; a bad value is named by its variable."""
    try:
        settings = Settings(**({"data_dir": data_dir} if data_dir else {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        variable = name if name.isupper() else f"MODFACTORY_{name.upper()}"
        print_error(f"setting {variable}: {first['msg']}")
        raise typer.Exit(2) from None
    _SECRETS[:] = settings.secret_values()
    configure_logging(settings.log_format, secrets=_SECRETS)
    return settings


_SECRETS: list[str] = []  # the loaded settings' secrets, taken out of every error printed


def print_error(problem: object) -> None:
    """``error: <problem>`` on stderr, one line as given (no markup), secrets redacted."""
    err.print(f"[red]error:[/red] {escape(redact(str(problem), _SECRETS))}", highlight=False)


def _hyperparameters(values: list[str] | None) -> dict[str, float | int]:
    parsed: dict[str, float | int] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(f"--hyperparameter {item!r}: expected KEY=VALUE")
        try:
            parsed[key] = int(raw) if raw.lstrip("-").isdigit() else float(raw)
        except ValueError:
            raise CliError(f"--hyperparameter {key}: {raw!r} is not a number") from None
    return parsed


def _main(coro: Any) -> Any:
    """Run a command's coroutine, turning known errors into one line and exit code 2.

    Ctrl-C and SIGTERM cancel it cleanly (the in-process worker and the embedded Redis are
    stopped); unfinished runs are resumed by the next worker.
    """

    async def cancellable() -> Any:
        task = asyncio.current_task()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    try:
        return asyncio.run(cancellable())
    except ActiveRunExists as exc:
        print_error(exc)
        raise typer.Exit(EXIT_ACTIVE_RUN) from None
    except (
        CliError,
        RecipeError,
        BackendError,
        EmbeddedRedisError,
        RunNotFound,
        RunStateError,
        RegistryError,
        ValidationError,
    ) as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("interrupted — unfinished runs resume when a worker starts (`modfactory worker`)")
        raise typer.Exit(130) from None


@asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[tuple[ArqRedis, bool]]:
    """A pool on MODFACTORY_REDIS_URL, or on an embedded server (then ``embedded`` is True)."""
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        url = await asyncio.to_thread(embedded.start)
    try:
        pool = await create_pool(
            queue.redis_settings(url, retries=0),  # someone is waiting: say so at once
            job_serializer=queue.serialize,
            job_deserializer=queue.deserialize,
            default_queue_name=settings.queue_name,
        )
    except Exception as exc:
        if embedded:
            embedded.stop()
        why = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise CliError(
            f"cannot reach Redis at {queue.redacted(url)} (MODFACTORY_REDIS_URL): {why}"
        ) from None
    try:
        yield pool, embedded is not None
    finally:
        await pool.aclose()
        if embedded:
            embedded.stop()


def _with_producer(data_dir: Path | None, action: Callable[[Producer], Awaitable[T]]) -> T:
    """Run ``action`` with a producer on the configured (or embedded) Redis."""
    settings = _settings(data_dir)

    async def act() -> T:
        async with _redis(settings) as (pool, _):
            return await action(Producer(pool, settings))

    return _main(act())


def _print_run_json(run: Run) -> None:
    out.print_json(json.dumps(run.to_json_dict()))


# --- run ------------------------------------------------------------------------------
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
    final = _main(
        _run(
            _settings(data_dir), source, backend, _hyperparameters(hyperparameter), as_json, worker
        )
    )
    raise typer.Exit(_exit_code(final))


def _exit_code(run: Run) -> int:
    """0 succeeded, 3 awaiting approval, 1 anything else."""
    return {RunState.SUCCEEDED: 0, RunState.AWAITING_APPROVAL: 3}.get(run.state, 1)


async def _run(
    settings: Settings,
    source: str | None,
    backend: str | None,
    hyperparameters: dict[str, float | int],
    as_json: bool,
    with_worker: bool | None,
) -> Run:
    from modfactory.triggers.schedule import retrain_cron_jobs
    from modfactory.worker import build_worker, stop_worker

    async with _redis(settings) as (pool, embedded):
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
            final = await _follow(producer.store, run.id, quiet=as_json)
        finally:
            if worker_task is not None:
                await stop_worker(worker)
                worker_task.cancel()
        _print_run(final, as_json)
        return final


async def _follow(store: RunStore, run_id: str, quiet: bool) -> Run:
    """Poll the run store and redraw the progress until the run ends or awaits approval."""
    with Live(console=err, refresh_per_second=4, transient=False, auto_refresh=False) as live:
        while True:
            run = await store.get(run_id)
            if not quiet:
                live.update(_progress_table(run), refresh=True)
            if run.state.terminal or run.state == RunState.AWAITING_APPROVAL:
                return run
            await asyncio.sleep(0.25)


def _progress_table(run: Run) -> Table:
    table = Table(title=f"{run.id} — {run.state}", title_justify="left", expand=False)
    for column in ("stage", "state", "time", "detail"):
        table.add_column(column)
    for name in STAGES:
        stage = run.stages[name]
        took = ""
        if stage.started_at:
            end = stage.finished_at or run.updated_at
            took = f"{(end - stage.started_at).total_seconds():.1f} s"
        detail = stage.error or ""
        if stage.state == "running" and stage.last_error:
            detail = f"retrying (attempt {stage.attempts} ended: {stage.last_error})"
        if name == "train" and run.training.status and not stage.error:
            last = run.training.checkpoints[-1] if run.training.checkpoints else None
            detail = run.training.status
            if last and last.train_loss is not None:
                detail += f" · step {last.step} train loss {last.train_loss:.4f}"
            if last and last.valid_loss is not None:
                detail += f" valid loss {last.valid_loss:.4f}"
        if name == "build" and run.dataset:
            detail = ", ".join(f"{s} {v.rows:,}" for s, v in run.dataset.splits.items())
            detail += " (synthetic)" if run.dataset.synthetic else ""
        if run.progress and run.progress.stage == name and stage.state == "running":
            p = run.progress
            detail = f"{p.what}: {p.done:,} of {p.total:,}"
        colour = {"succeeded": "green", "failed": "red", "running": "yellow"}.get(
            stage.state, "dim"
        )
        table.add_row(name, f"[{colour}]{stage.state}[/{colour}]", took, detail)
    return table


def _metrics_table(metrics: dict[str, Any], synthetic: bool) -> Table:
    """Per label: prevalence, F1 at 0.5, then precision / recall / F1 at the threshold tuned
    on validation, and the AUCs with their bootstrap 95 % intervals."""
    title = f"test metrics ({metrics['rows']:,} rows); thresholds tuned on validation"
    table = Table(title=title + (" — SYNTHETIC DATA" if synthetic else ""), title_justify="left")
    columns = (
        "label",
        "prevalence",
        "F1 @0.5",
        "threshold",
        "precision",
        "recall",
        "F1",
        "ROC-AUC (95% CI)",
        "PR-AUC (95% CI)",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "label" else "right")

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    def auc(m: dict[str, Any], key: str) -> str:
        ci = m.get(f"{key}_ci")
        return fmt(m.get(key)) + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")

    rows = [
        (label, m, f"{m['prevalence']:.1%}", fmt(m.get("tuned_threshold")))
        for label, m in metrics["labels"].items()
    ]
    rows += [(f"[bold]{avg}[/bold]", metrics[avg], "", "") for avg in ("micro", "macro")]
    flagged = metrics["flagged"]
    rows.append(("[bold]flagged vs safe[/bold]", flagged, f"{flagged['prevalence']:.1%}", ""))
    for name, m, prevalence, threshold in rows:
        table.add_row(
            name,
            prevalence,
            fmt(m["f1"]),
            threshold,
            fmt(m.get("tuned_precision")),
            fmt(m.get("tuned_recall")),
            fmt(m.get("tuned_f1")),
            auc(m, "roc_auc"),
            auc(m, "pr_auc"),
        )
    table.caption = (
        f"subset accuracy {metrics['subset_accuracy']:.3f} at 0.5, "
        f"{metrics.get('tuned_subset_accuracy', float('nan')):.3f} at the tuned thresholds"
    )
    return table


def _print_comparison(metrics: dict[str, Any]) -> None:
    """The baselines and the champion/challenger verdict, one line each."""
    promotion = metrics.get("promotion")
    if not promotion:
        return
    metric = promotion["metric"]
    for name, values in metrics.get("baselines", {}).items():
        value = values.get(metric)
        shown = "—" if value is None else f"{value:.3f}"
        out.print(f"{name} baseline {metric}: {shown}", highlight=False)
    verdict = "[green]promoted[/green]" if promotion["promoted"] else "kept as a candidate"
    out.print(
        f"model {promotion['model_name']}: {verdict} — {promotion['reason']}", highlight=False
    )


def _print_run(run: Run, as_json: bool) -> None:
    if as_json:
        _print_run_json(run)
        return
    if run.metrics:
        out.print(_metrics_table(run.metrics, bool(run.dataset and run.dataset.synthetic)))
        _print_comparison(run.metrics)
    for label, path in (
        ("distribution chart", run.artifacts.distribution_chart),
        ("loss curve", run.artifacts.loss_chart),
        ("metrics", run.artifacts.metrics_file),
        ("report", run.artifacts.report_html),
    ):
        if path:
            out.print(f"{label}: {path}", highlight=False)
    if run.artifacts.model_id:
        out.print(f"model: {run.artifacts.model_id}", highlight=False)
    if run.state == RunState.AWAITING_APPROVAL:
        meta = run.training.metadata
        out.print(
            f"run {run.id} awaits approval: job {run.artifacts.training_job_id} is quoted "
            f"{meta.get('cost')} {meta.get('cost_currency', '')} for "
            f"{meta.get('expected_duration_seconds', '?')} s of training. "
            f"`modfactory approve {run.id}` starts it; `modfactory cancel {run.id}` cancels it.",
            highlight=False,
        )
        return
    colour = "green" if run.state == "succeeded" else "red"
    out.print(
        f"run {run.id}: [{colour}]{run.state}[/{colour}]"
        + (f" — {run.error}" if run.error else ""),
        highlight=False,
    )


# --- dataset build ----------------------------------------------------------------------
@dataset_app.command("build")
def dataset_build(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for train/validation/test.jsonl.")
    ],
    source: SourceOpt = None,
    data_dir: DataDirOpt = None,
    n_train: Annotated[
        int | None, typer.Option(help="Rows taken from train (default 1,000,000).")
    ] = None,
    n_validation: Annotated[
        int | None, typer.Option(help="Rows taken from validation (default 50,000).")
    ] = None,
    n_test: Annotated[
        int | None, typer.Option(help="Rows taken from test (default 50,000).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Shuffle seed (default 42).")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="A label is set when score > threshold (0.5).")
    ] = None,
    zero_flags_fraction: Annotated[
        float | None, typer.Option(help="Share of unflagged rows kept (0.1).")
    ] = None,
    max_label_fraction: Annotated[
        float | None, typer.Option(help="Cap on a label's share of flagged rows (0.2).")
    ] = None,
    min_label_fraction: Annotated[
        float | None, typer.Option(help="Drop labels rarer than this (0.01).")
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column (text).")] = None,
    label_columns: Annotated[
        str | None, typer.Option(help="Comma-separated score columns.")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="auto (default: fast when it gives the same rows), fast (parquet, "
            "column-wise) or stream (datasets, row by row)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The cookbook's dataset recipe → train.jsonl, validation.jsonl, test.jsonl and a chart."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modfactory.data.build import build_dataset
    from modfactory.data.sources import parse_source
    from modfactory.values import RecipeParams

    settings = _settings(data_dir)
    overrides = {
        "n_train": n_train,
        "n_validation": n_validation,
        "n_test": n_test,
        "seed": seed,
        "threshold": threshold,
        "zero_flags_fraction": zero_flags_fraction,
        "max_label_fraction": max_label_fraction,
        "min_label_fraction": min_label_fraction,
        "text_column": text_column,
        "label_columns": tuple(c.strip() for c in label_columns.split(","))
        if label_columns
        else None,
    }

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

    summary = _main(build())
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


# --- worker, enqueue, status, runs ---------------------------------------------------------
@app.command("worker")
def worker_command(data_dir: DataDirOpt = None) -> None:
    """Run a worker until interrupted (embedded Redis when MODFACTORY_REDIS_URL is unset)."""
    from modfactory.triggers.schedule import retrain_cron_jobs
    from modfactory.worker import build_worker

    settings = _settings(data_dir)
    configure_logging(settings.log_format, logging.INFO, settings.secret_values())

    def run_worker(settings: Settings) -> None:
        try:
            build_worker(settings, triggers=retrain_cron_jobs(settings)).run()
        except asyncio.CancelledError:  # arq re-raises the jobs it cancelled on SIGTERM
            logging.getLogger("modfactory.worker").info(
                "stopped; the jobs it interrupted run again on the next worker"
            )

    if settings.redis_url:
        run_worker(settings)
        return
    try:
        with EmbeddedRedis(settings.data_dir / "redis") as url:
            err.print(f"embedded Redis at {url} (data in {settings.data_dir / 'redis'})")
            run_worker(settings.model_copy(update={"redis_url": url}))
    except EmbeddedRedisError as exc:
        print_error(exc)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (MODFACTORY_SERVE_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (MODFACTORY_SERVE_PORT).")
    ] = None,
) -> None:
    """Serve the retrain webhook, the runs API, /healthz and /metrics (needs a shared Redis)."""
    import uvicorn

    from modfactory.triggers.api import create_app

    settings = _settings()
    configure_logging(settings.log_format, logging.INFO, settings.secret_values())
    try:
        api = create_app(settings)
    except ValueError as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    uvicorn.run(
        api,
        host=host or settings.serve_host,
        port=settings.serve_port if port is None else port,
        log_config=None,
        server_header=False,
    )


@app.command()
def schedule(
    data_dir: DataDirOpt = None,
    limit: Annotated[int, typer.Option(help="How many recent decisions.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """The retrain schedule (MODFACTORY_RETRAIN_CRON): next ticks and recent decisions."""
    from datetime import datetime

    from modfactory.crontab import parse_cron
    from modfactory.triggers.schedule import ScheduleLog

    settings = _settings(data_dir)
    decisions = _with_producer(
        data_dir, lambda p: ScheduleLog(p.redis, settings.queue_name).recent(limit)
    )
    upcoming = (
        parse_cron(settings.retrain_cron).next_times(datetime.now().astimezone(), 3)
        if settings.retrain_cron
        else []
    )
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "cron": settings.retrain_cron,
                    "next": [t.isoformat() for t in upcoming],
                    "decisions": [d.model_dump(mode="json") for d in decisions],
                }
            )
        )
        return
    if settings.retrain_cron:
        out.print(f"MODFACTORY_RETRAIN_CRON={settings.retrain_cron!r}; next ticks (worker time):")
        for tick in upcoming:
            out.print(f"  {tick:%Y-%m-%d %H:%M:%S %Z}", highlight=False)
    else:
        out.print("no schedule: set MODFACTORY_RETRAIN_CRON (e.g. '0 3 * * *') for the workers")
    table = Table(title="recent decisions", title_justify="left")
    for column in ("at", "action", "run", "reason"):
        table.add_column(column)
    for d in decisions:
        table.add_row(f"{d.at:%Y-%m-%d %H:%M:%S}", d.action, d.run_id or "", d.reason)
    out.print(table)


@enqueue_app.command("pipeline")
def enqueue_pipeline(
    source: SourceOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
    hyperparameter: HyperOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a run and queue it for the workers; prints its id."""
    hyperparameters = _hyperparameters(hyperparameter)
    submission = _with_producer(
        data_dir,
        lambda p: p.submit(p.spec(source=source, backend=backend, hyperparameters=hyperparameters)),
    )
    if as_json:
        _print_run_json(submission.run)
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
        run_ = _with_producer(data_dir, lambda p: p.enqueue(stage, run_id))
        if as_json:
            _print_run_json(run_)
        else:
            out.print(f"queued {stage} for {run_.id}")

    command.__doc__ = f"Queue the {stage} stage of RUN_ID again (a failed stage is reset)."
    enqueue_app.command(stage)(command)


for _stage in STAGES:
    _enqueue_stage_command(_stage)


def _run_command(action: str, run_id: str, data_dir: Path | None, as_json: bool) -> Run:
    """``approve`` / ``cancel``: one producer call on an existing run."""
    run_ = _with_producer(data_dir, lambda p: getattr(p, action)(run_id))
    if as_json:
        _print_run_json(run_)
    return run_


@app.command()
def approve(
    run_id: Annotated[str, typer.Argument(help="A run awaiting approval.")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve the quoted cost of a run's training job; the job starts."""
    run_ = _run_command("approve", run_id, data_dir, as_json)
    if not as_json:
        out.print(f"approved {run_.id}: its training job starts with the next worker look")


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="An unfinished run.")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run, and its remote training job if one is under way."""
    run_ = _run_command("cancel", run_id, data_dir, as_json)
    if not as_json:
        out.print(f"cancelled {run_.id}")


@app.command()
def models(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Model names with their champion, earlier champions and candidates."""

    async def records_of(producer: Producer) -> list[ModelRecord]:
        return [await producer.registry.get(n) for n in await producer.registry.names()]

    records = _with_producer(data_dir, records_of)
    if as_json:
        out.print_json(json.dumps([r.model_dump(mode="json") for r in records]))
        return
    for record in records:
        _print_model(record)
    if not records:
        out.print("no model yet: a run that succeeds becomes the first champion")


def _add_run_id_column(table: Table, run_ids: list[str]) -> None:
    """A run id is never cut: the other columns fold first, however narrow the terminal."""
    table.add_column("run", no_wrap=True, min_width=max(map(len, run_ids), default=3))


def _print_model(record: ModelRecord) -> None:
    table = Table(title=f"model {record.name}", title_justify="left")
    table.add_column("role")
    ids = [p.run_id for p in [*record.history, *filter(None, [record.champion])]]
    _add_run_id_column(table, [*ids, *record.candidates])
    for column in ("model", "why"):
        table.add_column(column, overflow="fold")
    if record.champion:
        c = record.champion
        table.add_row("[green]champion[/green]", c.run_id, c.model_id, c.reason)
    for earlier in reversed(record.history):
        table.add_row("earlier", earlier.run_id, earlier.model_id, earlier.reason)
    for run_id, reason in record.candidates.items():
        table.add_row("candidate", run_id, "", reason)
    out.print(table)


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
    _show_model(_with_producer(data_dir, lambda p: p.promote(run_id, force)), as_json)


@app.command()
def rollback(
    model: Annotated[
        str | None, typer.Option(help="Model name (default MODFACTORY_MODEL_NAME).")
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore the previous champion; the current one becomes a candidate."""
    _show_model(_with_producer(data_dir, lambda p: p.rollback(model)), as_json)


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
    settings = _settings(data_dir)
    gone = _with_producer(data_dir, lambda p: p.prune(dry_run=dry_run))
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


def _show_model(record: ModelRecord, as_json: bool) -> None:
    if as_json:
        out.print_json(record.model_dump_json())
    else:
        _print_model(record)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    open_: Annotated[bool, typer.Option("--open", help="Open report.html in a browser.")] = False,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write (again) and show RUN's report.json and self-contained report.html."""
    from modfactory.evaluation.report import report_data, write_report

    run_ = _with_producer(data_dir, lambda p: p.store.get(run_id))
    directory = (_settings(data_dir).data_dir / "runs" / run_.id).resolve()
    json_path, html_path = write_report(run_, directory)
    if as_json:
        out.print_json(json.dumps(report_data(run_)))
    else:
        out.print(f"report: {html_path}\ndata:   {json_path}", highlight=False)
    if open_:
        import webbrowser

        webbrowser.open(html_path.as_uri())


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one run: stages, training progress, metrics."""
    run_ = _with_producer(data_dir, lambda p: p.store.get(run_id))
    if as_json:
        _print_run_json(run_)
        return
    out.print(_progress_table(run_))
    _print_run(run_, as_json=False)


@app.command()
def runs(
    data_dir: DataDirOpt = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List runs, newest first (and, on stderr, runs queued too long with no worker alive)."""
    settings = _settings(data_dir)

    async def runs_and_waiting(p: Producer) -> tuple[list[Run], list[tuple[str, float]]]:
        waiting = await queued_without_worker(
            p.redis, settings.queue_name, settings.queued_alert_after
        )
        return await p.store.list(limit), waiting

    found, waiting = _with_producer(data_dir, runs_and_waiting)
    for run_id, seconds in waiting:
        err.print(
            f"[yellow]warning:[/yellow] run {run_id} has been queued for {seconds / 60:.0f} min "
            "and no worker is alive: start one with `modfactory worker`"
        )
    if as_json:
        out.print_json(json.dumps([r.to_json_dict() for r in found]))
        return
    table = Table(title_justify="left")
    _add_run_id_column(table, [r.id for r in found])
    for column in ("state", "stage", "source", "backend", "macro F1", "created"):
        table.add_column(column, overflow="fold")
    for r in found:
        f1 = f"{r.metrics['macro']['f1']:.3f}" if r.metrics else ""
        table.add_row(
            r.id,
            str(r.state),
            r.current_stage or "",
            r.spec.source,
            r.spec.backend,
            f1,
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)
