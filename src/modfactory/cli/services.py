"""The long-running commands: ``worker`` and ``serve``; and ``schedule``, what the
workers' retrain schedule did and will do.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Annotated

import typer

from modfactory.cli.app import (
    DataDirOpt,
    JsonOpt,
    app,
    check_artifacts,
    err,
    load_settings,
    out,
    print_error,
    with_producer,
)

if TYPE_CHECKING:
    from modfactory.settings import Settings


@app.command("worker")
def worker_command(data_dir: DataDirOpt = None) -> None:
    """Run a worker until interrupted (embedded Redis when MODFACTORY_REDIS_URL is unset)."""
    from modfactory.logs import configure_logging
    from modfactory.store.embedded_redis import EmbeddedRedis, EmbeddedRedisError
    from modfactory.triggers.feedback import feedback_cron_jobs
    from modfactory.triggers.schedule import retrain_cron_jobs
    from modfactory.worker import build_worker

    settings = load_settings(data_dir)
    configure_logging(settings.log_format, logging.INFO, settings.secret_values())
    check_artifacts(settings)

    def run_worker(settings: Settings) -> None:
        try:
            triggers = retrain_cron_jobs(settings) + feedback_cron_jobs(settings)
            build_worker(settings, triggers=triggers).run()
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
    """Serve the champion (/v1/moderations, /v1/classifications), the retrain webhook, the
    runs API, /healthz and /metrics (needs a shared Redis)."""
    import uvicorn

    from modfactory.logs import configure_logging
    from modfactory.web.app import create_app

    settings = load_settings()
    configure_logging(settings.log_format, logging.INFO, settings.secret_values())
    check_artifacts(settings)
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

    from rich.markup import escape

    from modfactory.cli.fit import Column, fitted_table
    from modfactory.crontab import parse_cron
    from modfactory.triggers.schedule import ScheduleLog

    settings = load_settings(data_dir)
    decisions = with_producer(
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
    columns = [Column("at"), Column("action"), Column("run", 1), Column("reason", 2, "wrap")]
    rows = [
        [f"{d.at:%Y-%m-%d %H:%M:%S}", d.action, d.run_id or "", escape(d.reason)] for d in decisions
    ]
    out.print(fitted_table(columns, rows, out.width, "recent decisions"))
