"""``modfactory feedback import FILE`` and ``modfactory feedback list``: moderators'
corrections from a file, and what has been corrected (imported only when used)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from modfactory.cli.app import DataDirOpt, JsonOpt, feedback_app, load_settings, out, with_producer

if TYPE_CHECKING:
    from modfactory.producer import Producer

ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Model name (default MODFACTORY_MODEL_NAME).")
]


@feedback_app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="JSONL, CSV or parquet: text and labels.")],
    model: ModelOpt = None,
    reviewer: Annotated[
        str | None, typer.Option(help="Who corrected them (rows may name their own).")
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add the corrections of FILE to the next run's data: per row a ``text`` and either
    ``labels`` (an object label -> true/false, or the list of flagged labels) or
    civil_comments score columns. Every row is checked first; importing a file again
    stores nothing twice."""
    from modfactory.data.feedback import read_corrections_file
    from modfactory.store.audit import AuditAction
    from modfactory.store.feedback import Correction, FeedbackLog
    from modfactory.triggers.feedback import corrections_since, model_labels, retrain_if_due

    name = model or load_settings(data_dir).model_name
    digest = hashlib.sha256(file.read_bytes() if file.is_file() else b"").hexdigest()[:16]

    async def act(producer: Producer) -> dict[str, Any]:
        rows = read_corrections_file(file, await model_labels(producer, name))
        log = FeedbackLog(producer.redis, producer.settings.queue_name)
        stored = 0
        for number, row in enumerate(rows, 1):
            correction = Correction(
                model_name=name,
                text=row["text"],
                labels=row["labels"],
                reviewer=row["reviewer"] or reviewer,
                at=datetime.now(UTC),
                request_id=f"import:{digest}:{number}",
                via="import",
            )
            stored += (await log.add(correction))[1]
        if stored:
            what = f"{name}: {stored} of {len(rows)} rows of {file.name}"
            await producer.record(AuditAction.CORRECTIONS_IMPORT, f"sha256:{digest}", what)
        decision = await retrain_if_due(producer, name)
        since = (await corrections_since(producer, name))[0]
        return {
            "model": name,
            "rows": len(rows),
            "stored": stored,
            "since_champion": since,
            "retrain": decision.model_dump(mode="json") if decision else None,
        }

    done = with_producer(data_dir, act)
    if as_json:
        out.print_json(json.dumps(done))
        return
    again = done["rows"] - done["stored"]
    out.print(
        f"{done['stored']:,} correction(s) of {name!r} stored"
        + (f" ({again:,} were imported before)" if again else "")
        + f"; {done['since_champion']:,} since its champion's data was built"
    )
    if done["retrain"]:
        out.print(f"retrain {done['retrain']['action']}: {escape(done['retrain']['reason'])}")


@feedback_app.command("list")
def list_corrections(
    model: ModelOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest corrections shown.")] = 20,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The newest corrections of a model name (one per text: the latest wins)."""
    from modfactory.artifacts import ArtifactStore
    from modfactory.stages.feedback import all_corrections
    from modfactory.store.feedback import FeedbackLog
    from modfactory.triggers.feedback import corrections_since

    settings = load_settings(data_dir)
    name = model or settings.model_name

    async def act(producer: Producer) -> tuple[list[dict[str, Any]], int, int]:
        log = FeedbackLog(producer.redis, settings.queue_name)
        rows, _ = await all_corrections(ArtifactStore.from_settings(settings), log, name)
        return rows, await log.count(name), (await corrections_since(producer, name))[0]

    rows, total, since = with_producer(data_dir, act)
    newest = rows[::-1][:limit]
    if as_json:
        shown = {"model": name, "texts": len(rows), "received": total, "since_champion": since}
        out.print_json(json.dumps({**shown, "corrections": newest}, default=str))
        return
    out.print(
        f"{name}: {len(rows):,} corrected text(s) from {total:,} correction(s); {since:,} "
        "since its champion's data was built"
    )
    for row in newest:
        labels = ", ".join(row["labels"]) or "nothing flagged"
        text = row["text"] if len(row["text"]) <= 70 else row["text"][:69] + "…"
        who = f" by {row['reviewer']}" if row.get("reviewer") else ""
        out.print(f"  #{row['seq']} {str(row['at'])[:19]}{escape(who)}: {escape(labels)}")
        out.print(f"      {escape(json.dumps(text, ensure_ascii=False))}", highlight=False)
