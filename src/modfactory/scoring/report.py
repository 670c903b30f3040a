"""A finished scoring job's self-contained ``report.html`` (``scores/<id>/report.html``):
what was scored by which model, per label the rows flagged, a histogram of the scores and
the highest-scoring texts (ids only without ``--keep-text``). Charts are embedded as data
URIs and every text is escaped, so the one file can be mailed or attached to a ticket."""

from __future__ import annotations

import base64
import html

from modfactory import charts
from modfactory.artifacts import ArtifactStore, score_key
from modfactory.store.score_job import ScoreJob

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border-bottom:1px solid #ddd;"
    "padding:.3em .7em;text-align:left;vertical-align:top}td.n{text-align:right}"
    ".charts{display:flex;flex-wrap:wrap;gap:1em}.text{max-width:60em;overflow-wrap:anywhere}"
)


def report_key(score_id: str) -> str:
    return score_key(score_id, "report.html")


def histogram_svgs(job: ScoreJob) -> dict[str, bytes]:
    """Each label's score histogram, as ``/ui`` and the report show it."""
    if job.summary is None:
        return {}
    return {
        label: charts.score_histogram(label, about.histogram, about.threshold)
        for label, about in job.summary.labels.items()
    }


def render_html(job: ScoreJob) -> str:
    e = html.escape
    spec, summary = job.spec, job.summary
    rows = [
        f"<h1>Scoring job {e(job.id)}</h1>",
        f"<p>{e(spec.source)} scored by <b>{e(spec.model_name)}</b> — run {e(spec.run_id)}, "
        f"model {e(spec.model_id)}; {job.total_rows:,} rows in {len(job.shards)} shard(s); "
        f"{e(str(job.state))}.</p>",
    ]
    if job.error:
        rows.append(f"<p><b>error:</b> {e(job.error)}</p>")
    if summary is not None:
        rows.append("<table><tr><th>label</th><th>threshold</th><th>flagged</th><th>share</th>")
        for label, about in summary.labels.items():
            rows.append(
                f"<tr><td>{e(label)}</td><td class=n>{about.threshold:.3f}</td>"
                f"<td class=n>{about.flagged:,}</td><td class=n>{about.share:.2%}</td></tr>"
            )
        rows.append("</table><div class=charts>")
        for label, svg in histogram_svgs(job).items():
            data = base64.b64encode(svg).decode()
            rows.append(f'<img alt="{e(label)} scores" src="data:image/svg+xml;base64,{data}">')
        rows.append("</div>")
        for label, about in summary.labels.items():
            rows.append(f"<h2>Highest {e(label)} scores</h2><table><tr><th>score</th><th>id</th>")
            rows.append("<th>text</th></tr>" if spec.keep_text else "</tr>")
            for top in about.top:
                text = f"<td class=text>{e(top.text or '')}</td>" if spec.keep_text else ""
                rows.append(f"<tr><td class=n>{top.score:.3f}</td><td>{e(top.id)}</td>{text}</tr>")
            rows.append("</table>")
    head = f"<!doctype html><meta charset=utf-8><title>{e(job.id)}</title><style>{STYLE}</style>"
    return head + "\n".join(rows)


def write_report(job: ScoreJob, store: ArtifactStore) -> str:
    """Write the job's report.html; its key."""
    return store.save_text(report_key(job.id), render_html(job))
