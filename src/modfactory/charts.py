"""Charts people would rather look at than read, drawn as SVG by hand: no plotting library
to install or import, a chart in milliseconds, sharp at any zoom, and small enough to embed
in a report. Each returns the SVG's bytes; where they are kept is the caller's to say.
Every text is escaped (label names come from users' data), and an SVG shown through
``<img>`` runs nothing."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any, Protocol

MEDIA_TYPE = "image/svg+xml"
SUFFIX = ".svg"
BLUE, RED = "#1f77b4", "#d62728"
PALETTE = (
    BLUE,
    "#ff7f0e",
    "#2ca02c",
    RED,
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


class _SplitCounts(Protocol):
    rows: int
    safe: int
    labels: dict[str, int]


def _n(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


class Canvas:
    """An SVG drawing: shapes and texts appended in order, ``svg()`` at the end."""

    def __init__(self, width: float, height: float) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = []

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float = 12,
        anchor: str = "start",
        color: str = "#222",
        weight: str = "normal",
        rotate: float = 0,
    ) -> None:
        turn = f' transform="rotate({_n(rotate)} {_n(x)} {_n(y)})"' if rotate else ""
        self.parts.append(
            f'<text x="{_n(x)}" y="{_n(y)}" font-size="{_n(size)}" text-anchor="{anchor}" '
            f'fill="{color}" font-weight="{weight}"{turn}>{escape(text)}</text>'
        )

    def line(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        color: str = "#222",
        width: float = 1,
        opacity: float = 1,
    ) -> None:
        self.parts.append(
            f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{color}" '
            f'stroke-width="{_n(width)}" stroke-opacity="{opacity}"/>'
        )

    def rect(self, x: float, y: float, w: float, h: float, color: str) -> None:
        self.parts.append(
            f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(max(w, 0))}" height="{_n(max(h, 0))}" '
            f'fill="{color}"/>'
        )

    def polyline(self, points: Iterable[tuple[float, float]], color: str, width: float = 2) -> None:
        coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
        self.parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" '
            f'stroke-width="{_n(width)}" stroke-linejoin="round"/>'
        )

    def circle(self, x: float, y: float, r: float, color: str) -> None:
        self.parts.append(
            f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" fill="{color}" stroke="#fff"/>'
        )

    def path(self, d: str, color: str) -> None:
        self.parts.append(f'<path d="{d}" fill="{color}" stroke="#fff" stroke-width="1"/>')

    def svg(self) -> bytes:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(self.width)}" '
            f'height="{_n(self.height)}" viewBox="0 0 {_n(self.width)} {_n(self.height)}" '
            'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">'
            f'<rect width="100%" height="100%" fill="#fff"/>'
        )
        return (head + "".join(self.parts) + "</svg>").encode()


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values from ``low`` to ``high`` at a 1, 2 or 5 step, about ``count`` of them."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 or value == int(value) else f"{value:g}"


class Axes:
    """A plotting area inside a canvas: data coordinates mapped to pixels, gridded axes."""

    def __init__(
        self,
        canvas: Canvas,
        box: tuple[float, float, float, float],
        x_range: tuple[float, float],
        y_range: tuple[float, float],
    ) -> None:
        self.canvas, (self.left, self.top, self.w, self.h) = canvas, box
        self.x0, self.x1 = x_range if x_range[1] > x_range[0] else (x_range[0], x_range[0] + 1)
        self.y0, self.y1 = y_range if y_range[1] > y_range[0] else (y_range[0], y_range[0] + 1)

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * self.w

    def y(self, value: float) -> float:
        return self.top + self.h - (value - self.y0) / (self.y1 - self.y0) * self.h

    def frame(self, title: str, x_title: str, y_title: str, x_ticks: bool = True) -> None:
        c = self.canvas
        for value in ticks(self.y0, self.y1):
            c.line(self.left, self.y(value), self.left + self.w, self.y(value), "#000", 1, 0.12)
            c.text(self.left - 6, self.y(value) + 4, _label(value), 11, "end", "#444")
        if x_ticks:
            for value in ticks(self.x0, self.x1):
                c.line(self.x(value), self.top, self.x(value), self.top + self.h, "#000", 1, 0.12)
                c.text(self.x(value), self.top + self.h + 16, _label(value), 11, "middle", "#444")
        c.line(self.left, self.top + self.h, self.left + self.w, self.top + self.h, "#444")
        c.line(self.left, self.top, self.left, self.top + self.h, "#444")
        c.text(self.left + self.w / 2, self.top - 10, title, 14, "middle", weight="bold")
        if x_title:
            c.text(self.left + self.w / 2, self.top + self.h + 36, x_title, 12, "middle")
        c.text(self.left - 48, self.top + self.h / 2, y_title, 12, "middle", rotate=-90)

    def legend(self, entries: Sequence[tuple[str, str]], where: str = "upper right") -> None:
        """Coloured keys, one per line, on a white box: in a corner of the plot ("upper
        right", "lower left") or "outside", right of it."""
        width = 22 + 7 * max((len(name) for name, _ in entries), default=0)
        x, y = {
            "upper right": (self.left + self.w - width - 8, self.top + 8),
            "lower left": (self.left + 14, self.top + self.h - 18 * len(entries) - 10),
            "outside": (self.left + self.w + 16, self.top + 8),
        }[where]
        self.canvas.parts.append(
            f'<rect x="{_n(x - 6)}" y="{_n(y - 4)}" width="{_n(width + 12)}" '
            f'height="{_n(18 * len(entries) + 6)}" fill="#fff" fill-opacity="0.85" '
            'stroke="#ccc"/>'
        )
        for i, (name, color) in enumerate(entries):
            self.canvas.rect(x, y + 18 * i + 3, 12, 10, color)
            self.canvas.text(x + 18, y + 18 * i + 12, name, 11)


def _pie(
    canvas: Canvas,
    centre: tuple[float, float],
    radius: float,
    title: str,
    slices: Sequence[tuple[str, float, str]],
) -> None:
    """A pie of (name, count, colour), largest first from twelve o'clock; each share in its
    slice when there is room, and a legend beside it."""
    cx, cy = centre
    total = sum(count for _, count, _ in slices)
    canvas.text(cx + radius * 0.45, cy - radius - 18, title, 14, "middle", weight="bold")
    angle = -math.pi / 2
    for _, count, color in slices:
        share = count / total if total else 0
        if share >= 0.9999:
            canvas.parts.append(
                f'<circle cx="{_n(cx)}" cy="{_n(cy)}" r="{_n(radius)}" fill="{color}"/>'
            )
        elif share > 0:
            end = angle + share * 2 * math.pi
            large = 1 if share > 0.5 else 0
            x1, y1 = cx + radius * math.cos(angle), cy + radius * math.sin(angle)
            x2, y2 = cx + radius * math.cos(end), cy + radius * math.sin(end)
            canvas.path(
                f"M{_n(cx)},{_n(cy)} L{_n(x1)},{_n(y1)} "
                f"A{_n(radius)},{_n(radius)} 0 {large} 1 {_n(x2)},{_n(y2)} Z",
                color,
            )
        if share >= 0.04:
            middle = angle + share * math.pi
            canvas.text(
                cx + 0.62 * radius * math.cos(middle),
                cy + 0.62 * radius * math.sin(middle) + 4,
                f"{share:.1%}",
                11,
                "middle",
                "#fff",
                "bold",
            )
        angle += share * 2 * math.pi
    for i, (name, count, color) in enumerate(slices):
        y = cy - radius + 18 * i
        canvas.rect(cx + radius + 16, y, 12, 10, color)
        share = count / total if total else 0
        canvas.text(cx + radius + 34, y + 9, f"{name} {share:.1%}", 11)


def distribution_chart(
    splits: Mapping[str, _SplitCounts], labels: Sequence[str], synthetic: bool
) -> bytes:
    """The cookbook's figure, one row per split: the categories' pie, flagged vs safe, and
    flagged and safe rows stacked per label."""
    row_height, top = 330, 64 if synthetic else 24
    canvas = Canvas(1400, top + row_height * len(splits) + 30)
    if synthetic:
        canvas.text(
            700, 34, "SYNTHETIC DATA (generated, not civil_comments)", 20, "middle", RED, "bold"
        )
    colors = {label: PALETTE[(i + 1) % len(PALETTE)] for i, label in enumerate(labels)}
    for row, (split, counts) in enumerate(splits.items()):
        y = top + row * row_height
        name = split.capitalize()
        categories = sorted(
            [
                ("No Flags", counts.safe, BLUE),
                *((label, counts.labels[label], colors[label]) for label in labels),
            ],
            key=lambda item: item[1],
            reverse=True,
        )
        _pie(
            canvas,
            (130, y + 170),
            110,
            f"{name}: categories",
            [item for item in categories if item[1] > 0],
        )
        flagged = counts.rows - counts.safe
        _pie(
            canvas,
            (560, y + 170),
            110,
            f"{name}: flagged vs none",
            [("None-Flagged", counts.safe, BLUE), ("Flagged", flagged, RED)],
        )
        by_flagged = sorted(labels, key=lambda label: counts.labels[label], reverse=True)
        axes = Axes(
            canvas,
            (900, y + 40, 360, 190),
            (0, max(len(by_flagged), 1)),
            (0, max(counts.rows, 1) * 1.04),
        )
        axes.frame(f"{name}: per label", "", "Count", x_ticks=False)
        for i, label in enumerate(by_flagged):
            hit = counts.labels[label]
            left, width = axes.x(i + 0.15), axes.x(0.7) - axes.x(0)
            canvas.rect(
                left, axes.y(counts.rows - hit), width, axes.y(0) - axes.y(counts.rows - hit), BLUE
            )
            canvas.rect(
                left,
                axes.y(counts.rows),
                width,
                axes.y(counts.rows - hit) - axes.y(counts.rows),
                RED,
            )
            canvas.text(left + width / 2, axes.y(0) + 12, label, 11, "end", rotate=-40)
        axes.legend([("None-Flagged", BLUE), ("Flagged", RED)], "outside")
    return canvas.svg()


def _line_chart(
    title: str,
    x_title: str,
    y_title: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float]], Sequence[tuple[float, float]]]],
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    legend: str = "upper right",
) -> bytes:
    """Lines (name, points, marked points), one colour each, on gridded axes."""
    points = [p for _, line, marks in series for p in (*line, *marks)]
    xs, ys = [x for x, _ in points] or [0.0], [y for _, y in points] or [0.0]
    canvas = Canvas(760, 470)
    axes = Axes(
        canvas,
        (80, 40, 650, 370),
        x_range or (min(xs), max(xs)),
        y_range or (min(0, min(ys)), max(ys) * 1.05 or 1),
    )
    axes.frame(title, x_title, y_title)
    entries = []
    for i, (name, line, marks) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        canvas.polyline([(axes.x(x), axes.y(y)) for x, y in line], color)
        for x, y in marks:
            canvas.circle(axes.x(x), axes.y(y), 4.5, color)
        entries.append((name, color))
    if entries:
        axes.legend(entries, legend)
    return canvas.svg()


def loss_chart(checkpoints: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Train and valid loss over steps, from the training job's checkpoints."""
    points = sorted(checkpoints, key=lambda c: c["step"])
    series = []
    for key, name in (("train_loss", "train loss"), ("valid_loss", "valid loss")):
        line = [(float(c["step"]), float(c[key])) for c in points if c.get(key) is not None]
        if line:
            series.append((name, line, line if len(line) <= 60 else []))
    return _line_chart(title, "step", "loss", series)


def pr_curves(
    truth: Sequence[Sequence[str]],
    scores: Sequence[Mapping[str, float]],
    labels: Sequence[str],
    thresholds: Mapping[str, float],
) -> bytes:
    """Precision-recall curve per label on test, with each tuned threshold marked."""
    from sklearn.metrics import precision_recall_curve

    series = []
    for label in labels:
        y = [label in row for row in truth]
        if not any(y):
            continue
        s = [row.get(label, 0.0) for row in scores]
        precision, recall, cuts = precision_recall_curve(y, s)
        at = min(range(len(cuts)), key=lambda i: abs(cuts[i] - thresholds.get(label, 0.5)))
        line = [(float(r), float(p)) for r, p in zip(recall, precision, strict=True)]
        series.append((label, line, [(float(recall[at]), float(precision[at]))]))
    return _line_chart(
        "Precision-recall on test (dots: thresholds tuned on validation)",
        "recall",
        "precision",
        series,
        (0, 1),
        (0, 1),
        "lower left",
    )


def score_histogram(label: str, counts: Sequence[int], threshold: float) -> bytes:
    """Rows per score bin over [0, 1] on a log scale (scores crowd near 0), the bins at
    or above ``threshold`` in red, and the threshold marked."""
    canvas = Canvas(420, 250)
    left, top, w, h = 70.0, 34.0, 330.0, 170.0
    peak = max(counts, default=0)
    decades = max(1, math.ceil(math.log10(peak + 1)))

    def y(count: float) -> float:
        return top + h - (math.log10(count + 1) / decades) * h

    for power in range(decades + 1):
        level = 10**power - 1 if power else 0
        canvas.line(left, y(level), left + w, y(level), "#000", 1, 0.12)
        canvas.text(left - 6, y(level) + 4, _label(10**power if power else 0), 11, "end", "#444")
    bins = len(counts) or 1
    for i, count in enumerate(counts):
        x0 = left + i / bins * w
        color = RED if (i + 1) / bins > threshold else BLUE
        canvas.rect(x0 + 1, y(count), w / bins - 2, top + h - y(count), color)
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        canvas.text(left + value * w, top + h + 16, f"{value:g}", 11, "middle", "#444")
    cut = left + threshold * w
    canvas.line(cut, top - 4, cut, top + h, "#222", 1.5)
    side = (cut - 4, "end") if threshold > 0.6 else (cut + 4, "start")
    canvas.text(side[0], top + 8, f"threshold {threshold:.2f}", 11, side[1])
    canvas.polyline([(left, top), (left, top + h), (left + w, top + h)], "#444", 1)
    canvas.text(left + w / 2, top - 14, label, 14, "middle", weight="bold")
    canvas.text(left + w / 2, top + h + 36, "score", 12, "middle")
    canvas.text(left - 44, top + h / 2, "rows (log)", 12, "middle", rotate=-90)
    return canvas.svg()
