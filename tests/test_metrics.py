"""The metrics: each number is what it says, with its interval and its prevalence."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from modfactory.evaluation.metrics import bootstrap_aucs, evaluate_scores, tune_thresholds

LABELS = ["toxicity", "insult", "threat"]


def data(n: int = 400, seed: int = 1):
    rng = np.random.default_rng(seed)
    truth, scores = [], []
    for _ in range(n):
        row = [
            label
            for label, rate in zip(LABELS, (0.3, 0.2, 0.0), strict=True)
            if rng.random() < rate
        ]
        truth.append(row or ["safe"])
        scores.append(
            {
                label: float(np.clip((label in row) * 0.4 + rng.random() * 0.6, 0, 1))
                for label in LABELS
            }
        )
    return truth, scores


def test_numbers_match_their_definitions() -> None:
    truth, scores = data()
    thresholds = tune_thresholds(*data(seed=2), LABELS)
    report = evaluate_scores(truth, scores, LABELS, thresholds).model_dump()
    y = np.array([[label in row for label in LABELS] for row in truth], dtype=int)
    s = np.array([[row[label] for label in LABELS] for row in scores])
    tox = report["labels"]["toxicity"]
    assert tox["prevalence"] == pytest.approx(y[:, 0].mean()) and tox["support"] == y[:, 0].sum()
    assert tox["f1"] == pytest.approx(f1_score(y[:, 0], s[:, 0] > 0.5))
    assert tox["tuned_f1"] == pytest.approx(f1_score(y[:, 0], s[:, 0] >= thresholds["toxicity"]))
    assert tox["roc_auc"] == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    assert tox["pr_auc"] == pytest.approx(average_precision_score(y[:, 0], s[:, 0]))
    for key in ("roc_auc", "pr_auc"):
        low, high = tox[f"{key}_ci"]
        assert low < tox[key] < high and high - low < 0.3
    assert report["labels"]["threat"]["roc_auc"] is None  # no positive: undefined, not 0.5
    assert report["macro"]["roc_auc"] == pytest.approx(
        np.mean([tox["roc_auc"], report["labels"]["insult"]["roc_auc"]])
    )
    assert report["subset_accuracy"] == pytest.approx(((s > 0.5) == y).all(axis=1).mean())
    flagged = report["flagged"]
    assert flagged["prevalence"] == pytest.approx(y.any(axis=1).mean())
    assert flagged["f1"] == pytest.approx(f1_score(y.any(axis=1), (s > 0.5).any(axis=1)))


def test_tuned_thresholds_maximise_f1_on_the_rows_they_are_tuned_on() -> None:
    truth, scores = data(seed=3)
    thresholds = tune_thresholds(truth, scores, LABELS)
    y = np.array([["insult" in row] for row in truth], dtype=int)[:, 0]
    s = np.array([row["insult"] for row in scores])
    best = f1_score(y, s >= thresholds["insult"])
    assert all(best >= f1_score(y, s >= t) - 1e-12 for t in np.linspace(0.01, 0.99, 99))
    assert thresholds["threat"] == 0.5  # no positives to tune on


def test_vectorised_bootstrap_aucs_equal_sklearns_ties_included() -> None:
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(100):
        n = int(rng.integers(2, 60))
        y = (rng.random((5, n)) < rng.random()).astype(int)
        s = np.round(rng.random((5, n)), int(rng.integers(0, 3)))  # 0-2 decimals: many ties
        roc, ap = bootstrap_aucs(y, s)
        for b in range(5):
            if 0 < y[b].sum() < n:
                assert roc[b] == pytest.approx(roc_auc_score(y[b], s[b]), abs=1e-12)
                assert ap[b] == pytest.approx(average_precision_score(y[b], s[b]), abs=1e-12)
                checked += 1
            else:
                assert np.isnan(roc[b]) and np.isnan(ap[b])
    assert checked > 300


def test_the_cli_and_the_report_show_one_metrics_table() -> None:
    """One builder (``evaluation.tables``): the report's HTML holds every cell of it, the
    CLI's table every cell but the support and confusion counts."""
    import html

    from rich.console import Console

    from modfactory.cli.render import metrics_table as cli_table
    from modfactory.evaluation.metrics import evaluate_scores
    from modfactory.evaluation.report import render_html
    from modfactory.evaluation.tables import COUNT_COLUMNS, metrics_table

    truth = [["insult"], [], ["toxicity", "insult"], []] * 10
    scores = [
        {"insult": 0.8, "toxicity": 0.3},
        {"insult": 0.1, "toxicity": 0.7},
        {"insult": 0.6, "toxicity": 0.9},
        {"insult": 0.4, "toxicity": 0.2},
    ] * 10
    metrics = evaluate_scores(
        truth, scores, ["insult", "toxicity"], {"insult": 0.5, "toxicity": 0.5}
    )
    built = metrics_table(metrics)
    assert [cells[0] for _, cells in built.rows] == [
        "insult",
        "toxicity",
        "micro",
        "macro",
        "flagged vs safe",
    ]
    assert built.rows[1][1][-4:] == ("10", "10", "0", "20")  # toxicity: TP FP FN TN
    page = render_html(
        {
            "run": "run-1",
            "state": "succeeded",
            "synthetic": False,
            "spec": {"source": "s", "backend": "local"},
            "training": {"model_id": "m", "metadata": {}},
            "metrics": metrics.model_dump(mode="json"),
            "charts": {"precision_recall": None, "loss": None, "distribution": None},
        },
        images={},
    )
    for _, cells in built.rows:  # an interval on its own line
        shown_cells = [html.escape(c).replace(" (", "<br><small>(") for c in cells]
        assert "".join(f"<td>{c}{'</small>' * ('(' in c)}</td>" for c in shown_cells) in page
    console = Console(width=300, record=True)
    for table in cli_table(metrics, synthetic=False, width=300):
        console.print(table)
    shown = console.export_text()
    assert built.caption in shown and not any(c in shown for c in COUNT_COLUMNS)
    support = built.columns.index("support")
    for _, cells in built.rows:  # the value, and its interval in the table below
        for i, cell in enumerate(cells[: -len(COUNT_COLUMNS)]):
            value, _, interval = cell.partition(" (")
            assert i == support or value in shown
            low, _, high = interval.rstrip(")").partition("-")
            assert not interval or (f"{float(low):.2f}" in shown and f"{float(high):.2f}" in shown)


def test_typed_metrics_keep_the_documents_keys_absent_or_null_as_measured() -> None:
    """A number never measured is absent from the JSON, an undefined one is null, and a
    run's metrics read back from the store are the same document."""
    from modfactory.values import SplitMetrics

    truth, scores = data()
    plain = evaluate_scores(truth, scores, LABELS).model_dump(mode="json")
    assert not any(k.startswith("tuned_") for k in plain["labels"]["toxicity"])
    assert "tuned_subset_accuracy" not in plain and plain["thresholds_from"] is None
    threat = plain["labels"]["threat"]  # no positive: AUCs undefined, written as null
    assert threat["roc_auc"] is None and threat["pr_auc_ci"] is None
    assert "roc_auc_ci" not in plain["micro"] and "support" not in plain["macro"]
    assert "baselines" not in plain and "promotion" not in plain

    tuned = evaluate_scores(truth, scores, LABELS, tune_thresholds(truth, scores, LABELS))
    document = tuned.model_dump(mode="json")
    assert set(document["labels"]["insult"]["confusion"]) == {"tp", "fp", "fn", "tn"}
    assert (
        SplitMetrics.model_validate_json(tuned.model_dump_json()).model_dump(mode="json")
        == document
    )
    before_flagged = {k: v for k, v in document.items() if k != "flagged"}  # an older run
    assert "flagged" not in SplitMetrics.model_validate(before_flagged).model_dump()
