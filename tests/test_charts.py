"""The SVG charts: well-formed, escaped, and drawing what they are given."""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree

from modfactory import charts

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script>&'


@dataclass
class Counts:
    rows: int
    safe: int
    labels: dict[str, int] = field(default_factory=dict)


def texts(svg: bytes) -> list[str]:
    return [t.text or "" for t in ElementTree.fromstring(svg).iter(f"{SVG}text")]


def test_distribution_draws_each_split_and_escapes_label_names() -> None:
    splits = {
        "train": Counts(100, 60, {"toxicity": 30, HOSTILE: 10, "threat": 0}),
        "test": Counts(20, 20, {"toxicity": 0, HOSTILE: 0, "threat": 0}),
    }
    svg = charts.distribution_chart(splits, ["toxicity", HOSTILE, "threat"], synthetic=True)
    assert b"<script" not in svg  # the name is text, escaped
    shown = texts(svg)
    assert HOSTILE in shown and "SYNTHETIC DATA (generated, not civil_comments)" in shown
    assert {"Train: categories", "Test: flagged vs none", "Train: per label"} <= set(shown)
    assert "No Flags 60.0%" in shown and "toxicity 30.0%" in shown and "Flagged 40.0%" in shown
    assert "threat 0.0%" not in shown  # a label nobody has gets no slice
    assert "None-Flagged 100.0%" in shown  # a split with nothing flagged: one whole circle


def test_loss_and_pr_charts_draw_one_line_per_series() -> None:
    steps = [{"step": s, "train_loss": 1 / s, "valid_loss": 1.2 / s} for s in (3, 1, 2)]
    loss = ElementTree.fromstring(charts.loss_chart(steps, "run-1: ft:model"))
    lines = [p.get("points", "").split() for p in loss.iter(f"{SVG}polyline")]
    assert [len(points) for points in lines] == [3, 3]
    xs = [float(point.split(",")[0]) for point in lines[0]]
    assert xs == sorted(xs)  # steps in order, whatever order the checkpoints came in

    truth = [["toxicity"], [], ["toxicity", HOSTILE], [HOSTILE], []]
    scores = [{"toxicity": s, HOSTILE: 1 - s} for s in (0.9, 0.1, 0.8, 0.3, 0.2)]
    labels = ["toxicity", HOSTILE, "threat"]  # threat: no positive, no curve
    pr = charts.pr_curves(truth, scores, labels, {"toxicity": 0.8, HOSTILE: 0.5})
    assert len(list(ElementTree.fromstring(pr).iter(f"{SVG}polyline"))) == 2
    assert len(list(ElementTree.fromstring(pr).iter(f"{SVG}circle"))) == 2  # the thresholds
    assert HOSTILE in texts(pr) and b"<script" not in pr


def test_ticks_are_round_and_cover_the_range() -> None:
    assert charts.ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert charts.ticks(0, 9325) == [0, 2000, 4000, 6000, 8000]
    assert charts.ticks(0.05, 0.27) == [0.05, 0.1, 0.15, 0.2, 0.25]
    assert charts.ticks(3, 3) == [3]
