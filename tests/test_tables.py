"""The CLI's tables read in any terminal: at 60, 80 and 120 columns (and piped) no header,
state, id, value or number is split across lines, and nothing is wider than the terminal."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from modfactory.cli import fit
from modfactory.cli.render import age, metrics_table, print_model, runs_table
from modfactory.evaluation.metrics import evaluate_scores
from modfactory.evaluation.tables import metrics_table as built_metrics_table
from modfactory.store.registry import ModelRecord, Promotion
from modfactory.store.run import Run, RunState
from modfactory.store.run_parts import RunSpec
from modfactory.values import RecipeParams

WIDTHS = (60, 80, 120)
LABELS = ["toxicity", "insult", "identity_attack", "sexual_explicit", "threat", "obscene"]


def shown(renderables: list, width: int) -> list[str]:
    console = Console(width=width, record=True, soft_wrap=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for renderable in renderables:
        console.print(renderable)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= width, "\n".join(lines)
    return lines


def whole(text: str, lines: list[str]) -> bool:
    """``text`` stands on one line, as it is."""
    return any(text in line for line in lines)


def some_metrics():
    rng = random.Random(3)
    truth = [[x for x in LABELS if rng.random() < 0.2] or ["safe"] for _ in range(300)]
    scores = [{x: min(1.0, (x in t) * 0.4 + rng.random() * 0.6) for x in LABELS} for t in truth]
    return evaluate_scores(truth, scores, LABELS, dict.fromkeys(LABELS, 0.5))


@pytest.mark.parametrize("width", WIDTHS)
def test_the_metrics_tables_split_no_label_header_or_number(width: int) -> None:
    metrics = some_metrics()
    tables = metrics_table(metrics, synthetic=True, width=width)
    lines = shown(tables, width)
    built = built_metrics_table(metrics, counts=False, intervals=False)
    headers = [c.header for c in tables[0].columns]  # type: ignore[attr-defined]
    assert {"label", "F1", "PR-AUC"} <= set(headers)
    assert all(whole(h, lines) for h in headers)
    shown_at = [built.columns.index(fit_header) for fit_header in _long_names(headers)]
    for _, cells in built.rows:
        assert whole(cells[0], lines)
        for i in shown_at[1:]:
            assert whole(cells[i], lines), (cells[i], "\n".join(lines))
    for label, m in metrics.labels.items():  # intervals: in their own table, whole
        assert whole(f"{m.pr_auc_ci[0]:.3f}-{m.pr_auc_ci[1]:.3f}", lines), label
    if width >= 80:
        assert len(headers) == 9  # every column fits at 80
    else:
        assert whole("not shown at this width", " ".join(lines).split("\n"))


def _long_names(headers: list[str]) -> list[str]:
    short = {"prev.": "prevalence", "F1@.5": "F1 @0.5", "thresh": "threshold", "prec.": "precision"}
    return [short.get(h, h) for h in headers]


def a_run(i: int, source: str, state: RunState, backend: str = "local") -> Run:
    run = Run(
        id=f"run-20261201-20{i:02d}00-abc{i:03d}",
        spec=RunSpec(source=source, backend=backend, recipe=RecipeParams()),
        state=state,
    )
    run.created_at = datetime.now(UTC) - timedelta(minutes=7 * i)
    return run


@pytest.mark.parametrize("width", WIDTHS)
def test_the_runs_table_cuts_only_sources_and_names_what_it_left_out(width: int) -> None:
    runs = [
        a_run(1, "synthetic:30000", RunState.SUCCEEDED),
        a_run(2, "hf:google/civil_comments", RunState.AWAITING_APPROVAL, "mistral"),
        a_run(3, "/data/exports/comments-2026-11-30/parquet", RunState.FAILED),
    ]
    table = runs_table(runs, width)
    lines = shown([table], width)
    headers = [c.header for c in table.columns]
    at = headers.index("source") if "source" in headers else None
    for run in runs:
        assert whole(run.id, lines) and whole(str(run.state), lines)
        row = next(line.split() for line in lines if run.id in line)
        if at is not None:
            source = run.spec.source
            cell = row[at]
            assert cell == source or (cell.endswith("…") and source.startswith(cell[:-1]))
    left_out = [
        h for h in ("run", "state", "stage", "source", "backend", "F1", "age") if h not in headers
    ]
    if left_out:
        said = " ".join(line.strip() for line in lines)
        assert f"not shown at this width: {', '.join(left_out)}" in said
    assert all(whole(h, lines) for h in ("run", "state", "F1"))
    if width >= 120:
        assert whole("/data/exports/comments-2026-11-30/parquet", lines)
        assert whole("backend", lines) and whole("mistral", lines)
    if width >= 80:
        assert whole("age", lines)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_model_table_wraps_reasons_between_words(width: int) -> None:
    champion = Promotion(
        run_id="run-20261201-200100-abc001",
        model_id="ft:classifier:ministral-3b-latest:8e2706f0:20250416:cbe076ac",
        at=datetime.now(UTC),
        reason="macro_pr_auc 0.912 beat run-20261130-101010-fff000's 0.890 by 0.022 (margin 0.005)",
    )
    record = ModelRecord(
        name="moderation",
        champion=champion,
        candidates={"run-20261201-200200-abc002": "macro_pr_auc 0.880 is below 0.912 + 0.005"},
    )
    console = Console(width=width, record=True, soft_wrap=True, file=open("/dev/null", "w"))  # noqa: SIM115
    import modfactory.cli.render as render

    saved, render.out = render.out, console
    try:
        print_model(record)
    finally:
        render.out = saved
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= width
    for text in (champion.reason, record.candidates["run-20261201-200200-abc002"]):
        assert all(whole(word, lines) for word in text.split()), "\n".join(lines)
    assert whole(champion.run_id, lines) and whole("run-20261201-200200-abc002", lines)
    if width >= 120:
        assert any(line.split()[2].endswith("…") for line in lines if champion.run_id in line)


def test_ages_read_in_the_largest_whole_unit() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert [age(now - timedelta(seconds=s), now) for s in (5, 125, 7300, 3 * 86_400)] == [
        "5 s",
        "2 min",
        "2 h",
        "3 d",
    ]


def test_a_cut_value_ends_with_an_ellipsis() -> None:
    assert fit.shorten("synthetic:300000", 12) == "synthetic:3…"
    assert fit.shorten("short", 12) == "short"
