"""``modfactory review``: label the texts of the review queue in the terminal, one at a
time (imported only when used)."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from modfactory.cli.app import DataDirOpt, JsonOpt, app, err, load_settings, out, with_producer

if TYPE_CHECKING:
    from modfactory.producer import Producer
    from modfactory.store.feedback import Correction
    from modfactory.store.review import ReviewItem

HELP = "labels to flag by number (1 3), Enter: as the model did, 0: none, s: skip, q: quit"


@app.command()
def review(
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
    stderr, answers are read from stdin."""
    from modfactory.triggers.feedback import model_labels, retrain_if_due
    from modfactory.web.feedback_api import REVIEW_LEASE, review_queue

    settings = load_settings(data_dir)
    name = model or settings.model_name
    who = reviewer or getpass.getuser()

    async def act(producer: Producer) -> dict[str, int]:
        queue = review_queue(producer.redis, settings)
        labels = list(await model_labels(producer, name))
        done = {"labelled": 0, "skipped": 0, "waiting": 0}
        while done["labelled"] + done["skipped"] < limit:
            items = await queue.lease(name, 1, REVIEW_LEASE)
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
            await producer.correct(_correction(item, answer, who), answer=True)
            await queue.remove(name, item.id)
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


def _correction(item: ReviewItem, labels: list[str], reviewer: str) -> Correction:
    from modfactory.store.feedback import Correction

    return Correction(
        model_name=item.model_name,
        text=item.text,
        labels=labels,
        reviewer=reviewer,
        at=datetime.now(UTC),
        request_id=f"review:{item.id}",  # answered twice (a lease lapsed): stored once
        via="review",
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
