"""The CLI's common parts: the typer apps, shared options, settings loading, one-line
errors and exit codes, the Redis pool (configured or embedded) and the producer on it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # the rest is imported when a command runs: `--help` answers at once
    from arq.connections import ArqRedis

    from modfactory.producer import Producer
    from modfactory.settings import Settings
    from modfactory.store.run import Run

T = TypeVar("T")

# Plain help (click's): rich-drawn help costs a fifth of a second at every --help.
PLAIN_HELP: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(
    help="Train and keep fresh your own content-moderation classifier.",
    pretty_exceptions_enable=False,
    **PLAIN_HELP,
)
dataset_app = typer.Typer(help="Build the training set on its own (no Redis needed).", **PLAIN_HELP)
enqueue_app = typer.Typer(help="Queue a new run, or one stage of an existing run.", **PLAIN_HELP)
feedback_app = typer.Typer(
    help="Moderators' corrections: the next run's training and live test data.", **PLAIN_HELP
)
users_app = typer.Typer(
    help="Accounts: a name and a role each (viewer, reviewer, operator, admin), and a token.",
    **PLAIN_HELP,
)
app.add_typer(dataset_app, name="dataset")
app.add_typer(enqueue_app, name="enqueue")
app.add_typer(feedback_app, name="feedback")
app.add_typer(users_app, name="users")


def lazy_group(group: typer.Typer, module: str) -> None:
    """``group``'s commands are defined in ``module``, imported only when one of them is
    asked for (click's lazy loading): ``modfactory --help`` does not pay for its imports."""
    from typer.core import TyperGroup
    from typer.main import get_command_from_info

    class Lazy(TyperGroup):
        def _load(self) -> None:
            if self.commands:
                return
            importlib.import_module(module)  # registers its commands on ``group``
            for info in group.registered_commands:
                command = get_command_from_info(
                    info, pretty_exceptions_short=True, rich_markup_mode=None
                )
                self.commands[command.name or ""] = command

        def list_commands(self, ctx: Any) -> list[str]:
            self._load()
            return super().list_commands(ctx)

        def get_command(self, ctx: Any, name: str) -> Any:
            self._load()
            return super().get_command(ctx, name)

    group.info.cls = Lazy


out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SourceOpt = Annotated[
    str | None, typer.Option("--source", help="hf:<dataset>, a directory, or synthetic[:N].")
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="local, mistral or an installed plugin's name (default: mistral if "
        "MISTRAL_API_KEY is set, else local).",
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Where datasets, models and metrics go.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ModelOpt = Annotated[
    str | None, typer.Option(help="Model name whose champion scores (MODFACTORY_MODEL_NAME).")
]
RunOpt = Annotated[str | None, typer.Option("--run", help="Score with this run's model instead.")]
HyperOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--hyperparameter",
        "-H",
        help="KEY=VALUE, repeatable: a hyperparameter of the run's backend (an unknown key "
        "is refused, naming the backend's).",
    ),
]


EXIT_ACTIVE_RUN = 4
CLI_PATIENCE = 15.0  # s a command waits for Redis once it reached it (a failover)


class CliError(Exception):
    """An error worth one line to the user, and exit code 2."""


def load_settings(data_dir: Path | None = None) -> Settings:
    """Settings from the environment and .env; a bad value is named by its variable."""
    from pydantic import ValidationError

    from modfactory.logs import configure_logging
    from modfactory.settings import Settings

    try:
        settings = Settings(**({"data_dir": data_dir} if data_dir else {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        variable = name if name.isupper() else f"MODFACTORY_{name.upper()}"
        print_error(f"setting {variable}: {first['msg']}")
        raise typer.Exit(2) from None
    _SECRETS[:] = settings.secret_values()
    _LOADED[:] = [settings]
    configure_logging(settings.log_format, secrets=_SECRETS)
    return settings


_SECRETS: list[str] = []  # the loaded settings' secrets, taken out of every error printed
_LOADED: list[Settings] = []  # the settings loaded by this command


def check_artifacts(settings: Settings) -> None:
    """Try the artifact store (MODFACTORY_ARTIFACTS_URL) before anything runs: a missing
    bucket, wrong credentials or an unreachable endpoint exit 2, naming the setting."""
    from modfactory.artifacts import ArtifactError, ArtifactStore

    try:
        ArtifactStore.from_settings(settings).check()
    except ArtifactError as exc:
        print_error(exc)
        raise typer.Exit(2) from None


def artifact_url(key: str) -> str:
    """Where an artifact of a run is, by the loaded settings' artifact store."""
    from modfactory.artifacts import ArtifactStore

    return ArtifactStore.from_settings(_LOADED[0]).url_of(key) if _LOADED else key


def print_error(problem: object) -> None:
    """``error: <problem>`` on stderr, one line as given (no markup), secrets redacted."""
    from modfactory.settings import redact

    err.print(f"[red]error:[/red] {escape(redact(str(problem), _SECRETS))}", highlight=False)


def parse_hyperparameters(values: list[str] | None) -> dict[str, float | int]:
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


def run_command(coro: Any) -> Any:
    """Run a command's coroutine, turning known errors into one line and exit code 2.

    Ctrl-C and SIGTERM cancel it cleanly (the in-process worker and the embedded Redis are
    stopped); unfinished runs are resumed by the next worker.
    """

    from pydantic import ValidationError
    from redis.exceptions import RedisError

    from modfactory.artifacts import ArtifactError
    from modfactory.backends import BackendError
    from modfactory.data.recipe import RecipeError
    from modfactory.redis_replication import NotReplicated
    from modfactory.store.accounts import AccountError
    from modfactory.store.embedded_redis import EmbeddedRedisError
    from modfactory.store.registry import RegistryError
    from modfactory.store.run import ActiveRunExists, RunNotFound, RunStateError
    from modfactory.store.score_job import ScoreJobNotFound, ScoreJobStateError

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
        AccountError,
        ArtifactError,
        RecipeError,
        BackendError,
        EmbeddedRedisError,
        RunNotFound,
        RunStateError,
        RegistryError,
        ScoreJobNotFound,
        ScoreJobStateError,
    ) as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    except NotReplicated as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    except RedisError as exc:  # away longer than a command waits (CLI_PATIENCE)
        print_error(
            f"Redis unreachable for {CLI_PATIENCE:g} s (MODFACTORY_REDIS_URL): "
            f"{type(exc).__name__}: {exc}; nothing acknowledged was lost: try again"
        )
        raise typer.Exit(2) from None
    except ValidationError as exc:  # a recipe number out of range: one line naming it
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or exc.title
        print_error(f"{where}: {first['msg']}")
        raise typer.Exit(2) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("interrupted — unfinished runs resume when a worker starts (`modfactory worker`)")
        raise typer.Exit(130) from None


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[tuple[ArqRedis, bool]]:
    """A pool on MODFACTORY_REDIS_URL, or on an embedded server (then ``embedded`` is True)."""
    from modfactory.redis_connections import redacted
    from modfactory.store import queue
    from modfactory.store.embedded_redis import EmbeddedRedis

    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir / "redis")
        url = await asyncio.to_thread(embedded.start)
    try:
        pool = await queue.open_pool(
            url,
            settings.queue_name,
            ca_file=settings.redis_ca_file,
            patience=CLI_PATIENCE,
            min_replicas=settings.redis_min_replicas,
            first_answer_within=0,  # say so at once
        )
    except Exception as exc:
        if embedded:
            embedded.stop()
        why = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise CliError(
            f"cannot reach Redis at {redacted(url)} (MODFACTORY_REDIS_URL): {why}"
        ) from None
    try:
        yield pool, embedded is not None
    finally:
        await pool.aclose()
        if embedded:
            embedded.stop()


def with_producer(data_dir: Path | None, action: Callable[[Producer], Awaitable[T]]) -> T:
    """Run ``action`` with a producer on the configured (or embedded) Redis."""
    from modfactory.producer import Producer

    settings = load_settings(data_dir)

    async def act() -> T:
        async with open_redis(settings) as (pool, _):
            return await action(Producer(pool, settings))

    return run_command(act())


def print_run_json(run: Run) -> None:
    out.print_json(json.dumps(run.to_json_dict(artifact_url)))
