"""A run's report: ``report.json`` for scripts and a self-contained ``report.html`` for people.

The HTML embeds its charts (distribution, loss curves, precision-recall) as data URIs, so
the one file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from modfactory.evaluation.promotion import METRICS, metric_value
from modfactory.fileio import atomic_output
from modfactory.store.run import Run


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
        "metrics": run.metrics,
        "charts": {
            "distribution": run.artifacts.distribution_chart,
            "loss": run.artifacts.loss_chart,
            "precision_recall": run.artifacts.pr_chart,
        },
    }


def write_report(run: Run, directory: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` under ``directory``."""
    data = report_data(run)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / "report.json", directory / "report.html"
    with atomic_output(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    with atomic_output(html_path) as tmp:
        tmp.write_text(render_html(data))
    return json_path, html_path


def _image(path: str | None, alt: str) -> str:
    if not path or not Path(path).exists():
        return ""
    encoded = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{encoded}"></figure>'


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ci(m: dict[str, Any], key: str) -> str:
    ci = m.get(f"{key}_ci")
    return _num(m.get(key)) + (f" <small>({ci[0]:.2f}&ndash;{ci[1]:.2f})</small>" if ci else "")


def render_html(data: dict[str, Any]) -> str:
    """The page: headline, verdict, metrics table, confusion counts, charts."""
    e = html.escape
    metrics = data["metrics"] or {}
    rows = []
    for label, m in metrics.get("labels", {}).items():
        c = m.get("confusion", {})
        rows.append(
            f"<tr><td>{e(label)}</td><td>{m['prevalence']:.1%}</td><td>{m['support']:,}</td>"
            f"<td>{_num(m['f1'])}</td><td>{_num(m.get('tuned_threshold'))}</td>"
            f"<td>{_num(m.get('tuned_precision'))}</td><td>{_num(m.get('tuned_recall'))}</td>"
            f"<td>{_num(m.get('tuned_f1'))}</td>"
            f"<td>{_ci(m, 'roc_auc')}</td><td>{_ci(m, 'pr_auc')}</td>"
            f"<td>{c.get('tp', '')}</td><td>{c.get('fp', '')}</td><td>{c.get('fn', '')}</td>"
            f"<td>{c.get('tn', '')}</td></tr>"
        )
    for name in ("micro", "macro"):
        m = metrics.get(name)
        if m:
            rows.append(
                f"<tr class=avg><td>{name}</td><td></td><td></td><td>{_num(m['f1'])}</td><td></td>"
                f"<td>{_num(m.get('tuned_precision'))}</td><td>{_num(m.get('tuned_recall'))}</td>"
                f"<td>{_num(m.get('tuned_f1'))}</td><td>{_num(m.get('roc_auc'))}</td>"
                f"<td>{_num(m.get('pr_auc'))}</td><td colspan=4></td></tr>"
            )
    promotion = metrics.get("promotion") or {}
    metric_names = list(METRICS)
    comparison = "".join(
        f"<tr><td>{e(name)}"
        + (
            f" <small>(over {e(', '.join(values['labels']))})</small>"
            if values.get("labels")
            else ""
        )
        + "</td>"
        + "".join(f"<td>{_num(values.get(m))}</td>" for m in metric_names)
        + "</tr>"
        for name, values in (metrics.get("baselines") or {}).items()
    )
    verdict = (
        f"<p class=verdict><b>{'Promoted' if promotion.get('promoted') else 'Kept as a candidate'}"
        f"</b> under <code>{e(str(promotion.get('model_name')))}</code>: "
        f"{e(str(promotion.get('reason')))}</p>"
        if promotion
        else ""
    )
    meta = data["training"]["metadata"] or {}
    quote = ""
    if meta.get("cost") is not None:
        quote = f" (quoted {meta['cost']} {e(str(meta.get('cost_currency', '')))})"
    mine = "".join(f"<td>{_num(metric_value(metrics, m))}</td>" for m in metric_names)
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
{verdict}
<h2>Test metrics</h2>
<p>{metrics.get("rows", 0):,} test rows. "F1 @0.5" predicts a label when its score is above 0.5;
the threshold columns use each label's threshold tuned for F1 on the <b>validation</b> split
(never on test). Confusion counts are at the tuned thresholds. Intervals: bootstrap 95 %.</p>
<table><tr><th>label</th><th>prevalence</th><th>support</th><th>F1 @0.5</th><th>threshold</th>
<th>precision</th><th>recall</th><th>F1</th><th>ROC-AUC</th><th>PR-AUC</th>
<th>TP</th><th>FP</th><th>FN</th><th>TN</th></tr>
{"".join(rows)}</table>
<p>Subset accuracy {_num(metrics.get("subset_accuracy"))} at 0.5,
{_num(metrics.get("tuned_subset_accuracy"))} at the tuned thresholds.</p>
<h2>Compared with</h2>
<table><tr><th>baseline</th>{"".join(f"<th>{e(m)}</th>" for m in metric_names)}</tr>
<tr><td><b>this run</b></td>{mine}</tr>
{comparison}</table>
<h2>Precision-recall</h2>{_image(data["charts"]["precision_recall"], "precision-recall curves")}
<h2>Training</h2>{_image(data["charts"]["loss"], "loss curves")}
<h2>Dataset</h2>{_image(data["charts"]["distribution"], "label distribution")}
</body></html>
"""
