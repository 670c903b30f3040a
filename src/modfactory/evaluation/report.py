"""A run's report: ``report.json`` for scripts and a self-contained ``report.html`` for people,
kept beside the run's other artifacts.

The HTML embeds its charts (distribution, loss curves, precision-recall) as data URIs, so
the one file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from modfactory import charts
from modfactory.artifacts import ArtifactNotFound, ArtifactStore, run_key
from modfactory.evaluation import tables
from modfactory.store.run import Run
from modfactory.values import (
    HEADLINE_METRICS,
    Headline,
    HeadlineMetric,
    PromotionDecision,
    SplitMetrics,
)


def report_data(run: Run) -> dict[str, Any]:
    """What the report says, as JSON."""
    return {
        "run": run.id,
        "state": run.state,
        "spec": run.spec.model_dump(mode="json"),
        "synthetic": bool(run.dataset and run.dataset.synthetic),
        "dataset": run.dataset.model_dump(mode="json") if run.dataset else None,
        "training": {
            "job_id": run.artifacts.training_job_id,
            "model_id": run.artifacts.model_id,
            "metadata": run.training.metadata,
            "checkpoints": [c.model_dump(mode="json") for c in run.training.checkpoints],
        },
        "metrics": run.metrics.model_dump(mode="json") if run.metrics else None,
        "charts": {
            "distribution": run.artifacts.distribution_chart,
            "loss": run.artifacts.loss_chart,
            "precision_recall": run.artifacts.pr_chart,
        },
    }


def write_report(run: Run, store: ArtifactStore) -> tuple[str, str]:
    """Write ``report.json`` and ``report.html`` among the run's artifacts; their keys."""
    data = report_data(run)
    images = {name: _chart(store, key) for name, key in data["charts"].items()}
    json_key = store.save_text(run_key(run.id, "report.json"), json.dumps(data, indent=2))
    html_key = store.save_text(run_key(run.id, "report.html"), render_html(data, images))
    return json_key, html_key


def _chart(store: ArtifactStore, key: str | None) -> tuple[bytes, str] | None:
    """A chart's bytes and media type (SVG; PNG in runs made before the charts were SVG)."""
    if not key:
        return None
    try:
        return store.load(key), "image/png" if key.endswith(".png") else charts.MEDIA_TYPE
    except ArtifactNotFound:
        return None


def _image(chart: tuple[bytes, str] | None, alt: str) -> str:
    if not chart:
        return ""
    encoded = base64.b64encode(chart[0]).decode()
    return f'<figure><img alt="{alt}" src="data:{chart[1]};base64,{encoded}"></figure>'


def _cell(text: str) -> str:
    """A table cell's text, escaped; an interval goes on its own line, small."""
    value, _, interval = html.escape(text).partition(" (")
    return f"{value}<br><small>({interval}</small>" if interval else value


def _metrics_table(metrics: SplitMetrics | None) -> str:
    if not metrics or not metrics.labels:
        return ""
    table = tables.metrics_table(metrics)
    header = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join(
        f"<tr{' class=avg' if kind != 'label' else ''}>"
        + "".join(f"<td>{_cell(cell)}</td>" for cell in cells)
        + "</tr>"
        for kind, cells in table.rows
    )
    return f"<table><tr>{header}</tr>\n{rows}</table>\n<p>{html.escape(table.caption)}.</p>"


def _comparison_table(metrics: SplitMetrics | None) -> str:
    """This run's headline numbers above each baseline's (the champion's among them)."""
    e = html.escape
    names: list[HeadlineMetric] = list(HEADLINE_METRICS)
    ours = metrics.headline() if metrics else Headline()
    rows = [("<b>this run</b>", ours)]
    for name, values in (metrics.baselines if metrics else {}).items():
        over = f" <small>(over {e(', '.join(values.labels))})</small>" if values.labels else ""
        rows.append((e(name) + over, values))
    body = "".join(
        f"<tr><td>{title}</td>"
        + "".join(f"<td>{tables.number(values.value(m))}</td>" for m in names)
        + "</tr>"
        for title, values in rows
    )
    header = "".join(f"<th>{e(m)}</th>" for m in names)
    return f"<table><tr><th>baseline</th>{header}</tr>\n{body}</table>"


def _live_section(metrics: SplitMetrics | None) -> str:
    """The live test set's numbers beside the source's, when the run had corrections."""
    live = metrics.live if metrics else None
    if live is None:
        return ""
    return (
        f"<h2>Live test set</h2><p>{live.rows:,} texts moderators corrected, held out from "
        "training (<code>MODFACTORY_FEEDBACK_HOLDOUT</code>, by a hash of the text): how the "
        "model does on the traffic it serves, measured alike (thresholds tuned on "
        "validation). With it, promotion asks for a win here and no loss beyond the margin "
        f"on the source's test split.</p>{_metrics_table(live)}{_comparison_table(live)}"
    )


def _verdict(promotion: PromotionDecision | None) -> str:
    if not promotion:
        return ""
    outcome = "Promoted" if promotion.promoted else "Kept as a candidate"
    return (
        f"<p class=verdict><b>{outcome}</b> under <code>{html.escape(promotion.model_name)}"
        f"</code>: {html.escape(promotion.reason)}</p>"
    )


def _selection_table(metadata: dict[str, Any]) -> str:
    """The local model chosen per label on validation (``backends.local.selection``), if any."""
    chosen = metadata.get("selection") or {}
    if not chosen:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{e(str(c['features']))}</td><td>{e(str(c['weighting']))}"
        f"</td><td>{c['C']:g}</td><td>{tables.number(c.get('validation_pr_auc'))}</td>"
        f"<td>{c['candidates']}</td><td>{e(str(c['calibration']))}</td>"
        f"<td>{e(c.get('note') or '')}</td></tr>"
        for label, c in chosen.items()
    )
    return (
        "<h2>Model selection</h2><p>Per label, the candidate with the best PR-AUC on the "
        "<b>validation</b> split (plain or naive-Bayes-weighted n-grams, a logistic "
        "regression at strength C); its scores calibrated on validation.</p>"
        "<table><tr><th>label</th><th>features</th><th>weighting</th><th>C</th>"
        "<th>validation PR-AUC</th><th>candidates</th><th>calibration</th><th>note</th></tr>"
        f"{rows}</table>"
    )


def render_html(data: dict[str, Any], images: dict[str, bytes | None]) -> str:
    """The page: headline, verdict, metrics table with confusion counts, baselines, charts
    (``images``: each chart's bytes and media type, by the names of ``data["charts"]``)."""
    e = html.escape
    metrics = SplitMetrics.model_validate(data["metrics"]) if data["metrics"] else None
    meta = data["training"]["metadata"] or {}
    quote = ""
    if meta.get("cost"):  # a local job is quoted nothing: no quote shown
        quote = f" (quoted {meta['cost']} {e(str(meta.get('cost_currency', '')))})"
    synthetic = (
        "<p class=warn>SYNTHETIC DATA — generated, not civil_comments.</p>"
        if data["synthetic"]
        else ""
    )
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>modfactory report {e(data["run"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222 }}
table {{ border-collapse: collapse; margin: 1rem 0 }}
td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right }}
td:first-child, th:first-child {{ text-align: left }}
tr.avg td {{ font-weight: bold }}
.warn {{ color: #b00; font-weight: bold }} .verdict {{ font-size: 1.1rem }}
img {{ max-width: 100% }}
</style></head><body>
<h1>Run {e(data["run"])} — {e(str(data["state"]))}</h1>
{synthetic}
<p>Source <code>{e(data["spec"]["source"])}</code>,
backend <code>{e(data["spec"]["backend"])}</code>,
model <code>{e(str(data["training"]["model_id"]))}</code>{quote}.</p>
{_verdict(metrics.promotion if metrics else None)}
<h2>Test metrics</h2>
<p>{metrics.rows if metrics else 0:,} test rows. "F1 @0.5" predicts a label when its score is
above 0.5; the threshold columns use each label's threshold tuned for F1 on the
<b>validation</b> split (never on test). Confusion counts are at the tuned thresholds.
Intervals: bootstrap 95 %.</p>
{_metrics_table(metrics)}
<h2>Compared with</h2>
{_comparison_table(metrics)}
{_live_section(metrics)}
<h2>Precision-recall</h2>{_image(images.get("precision_recall"), "precision-recall curves")}
{_selection_table(meta)}
<h2>Training</h2>{_image(images.get("loss"), "loss curves")}
<h2>Dataset</h2>{_image(images.get("distribution"), "label distribution")}
</body></html>
"""
