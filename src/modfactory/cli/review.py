"""``modfactory review``: label the texts of the review queue in the terminal, one at a
time (imported only when used)."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from modfactory.cli.app import DataDirOpt, JsonOpt, app, err, load_settings, out, with_producer

if TYPE_CHECKING:
    from modfactory.producer import Producer
    from modfactory.store.review import ReviewItem

HELP = "labels to flag by number (1 3), Enter: as the model did, 0: none, s: skip, q: quit"


review_app = typer.Typer(invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None)
app.add_typer(review_app, name="review")
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Model name (default MODFACTORY_MODEL_NAME).")
]


@review_app.callback()
def review(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option(help="Model name (default MODFACTORY_MODEL_NAME).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most texts to label in this session.")] = 50,
    reviewer: Annotated[str | None, typer.Option(help="Your name (default: $USER).")] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label served texts waiting for review, most uncertain first; each answer is a
    correction (as `POST /v1/feedback`), the next run's data. The texts and prompts go to
    stderr, answers are read from stdin. `review stats`: how reviewers agree."""
    if ctx.invoked_subcommand is not None:
        return
    from modfactory.triggers.feedback import model_labels, retrain_if_due
    from modfactory.web.feedback_api import REVIEW_LEASE

    settings = load_settings(data_dir)
    name = model or settings.model_name
    who = reviewer or getpass.getuser()

    async def act(producer: Producer) -> dict[str, int]:
        queue = producer.review_queue()
        labels = list(await model_labels(producer, name))
        done = {"labelled": 0, "skipped": 0, "waiting": 0}
        while done["labelled"] + done["skipped"] < limit:
            items = await queue.lease(name, 1, REVIEW_LEASE, reviewer=who)
            if not items:
                break
            item = items[0]
            _show(item, labels, await queue.size(name))
            answer = await asyncio.to_thread(_ask, labels, item)
            if answer is None or answer == "skip":
                await queue.release(name, item.id)
                done["skipped"] += answer == "skip"
                if answer is None:
                    break
                continue
            await producer.answer_review(name, item.id, answer, reviewer=who)
            done["labelled"] += 1
        done["waiting"] = await queue.size(name)
        if done["labelled"]:
            await retrain_if_due(producer, name)
        return done

    done = with_producer(data_dir, act)
    if as_json:
        out.print_json(json.dumps(done))
        return
    out.print(
        f"{done['labelled']} labelled, {done['skipped']} skipped; {done['waiting']} waiting "
        f"for review of {name!r}"
    )


def _show(item: ReviewItem, labels: list[str], waiting: int) -> None:
    err.print(f"\n[bold]{waiting} waiting[/bold] — served by {escape(item.champion_run)}")
    err.print(escape(item.text), highlight=False)
    for number, label in enumerate(labels, 1):
        score = item.scores.get(label)
        flagged = "[red]flagged[/red]" if item.flags.get(label) else "not flagged"
        shown = f" {score:.2f} {flagged}" if score is not None else ""
        err.print(f"  {number}. {escape(label)}{shown}", highlight=False)


def _ask(labels: list[str], item: ReviewItem) -> list[str] | str | None:
    """The labels to flag, "skip", or None (quit, or the input ended)."""
    while True:
        err.print(HELP, style="dim")
        line = sys.stdin.readline()
        if not line:
            return None
        text = line.strip().lower()
        if text == "q":
            return None
        if text == "s":
            return "skip"
        if text == "":
            return [label for label in labels if item.flags.get(label)]
        if text == "0":
            return []
        numbers = text.replace(",", " ").split()
        if all(n.isdigit() and 1 <= int(n) <= len(labels) for n in numbers):
            return [labels[int(n) - 1] for n in dict.fromkeys(numbers)]
        err.print(f"not understood: {escape(line.strip())!r}")


@review_app.command("stats")
def stats(model: ModelOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Per reviewer: texts answered, texts shared with another reviewer, and Cohen's kappa
    per label against the others (after 20 shared texts); and the disputes still open."""
    from modfactory.evaluation.agreement import MIN_OVERLAPS, reviewer_stats
    from modfactory.store.double_review import DoubleReviews
    from modfactory.triggers.feedback import model_labels

    name = model or load_settings(data_dir).model_name

    async def read(producer: Producer) -> tuple[list, list[str], int]:
        reviews = DoubleReviews(producer.redis, producer.settings.queue_name)
        labels = list(await model_labels(producer, name))
        found = reviewer_stats(await reviews.pairs(name), await reviews.counts(name), labels)
        still_open = sum(d.open for d in await reviews.disputes(name))
        return found, labels, still_open

    found, labels, still_open = with_producer(data_dir, read)
    if as_json:
        shown = {
            "model": name,
            "min_overlaps": MIN_OVERLAPS,
            "open_disputes": still_open,
            "reviewers": [
                {
                    "name": r.name,
                    "answered": r.answered,
                    "overlaps": r.overlaps,
                    "kappa": r.kappa if r.overlaps >= MIN_OVERLAPS else None,
                }
                for r in found
            ],
        }
        out.print_json(json.dumps(shown))
        return
    if not found:
        out.print(f"no review answered for {name!r} yet")
        return
    from rich.table import Table

    table = Table("reviewer", "answered", "shared", *labels, box=None)
    for r in found:
        table.add_row(
            escape(r.name),
            str(r.answered),
            str(r.overlaps),
            *(r.kappa_text(label) for label in labels),
        )
    out.print(table)
    out.print(f"{still_open} disputed text(s) wait to be settled (/ui/disputes)")
