"""Self-contained HTML reports for jobs: tables and inline SVG charts.

A report is one HTML page with its CSS inline and its charts drawn as inline
SVG, so it can be stored as a single blob, attached to an e-mail or opened from
disk without network access or JavaScript. Every piece of text that reaches the
page goes through :func:`html.escape` (labels come from datasets and model
configs, which are user data).

Build a report from :class:`Section` objects holding blocks::

    html = render_report("Evaluation of spam:3", [
        Section("Metrics", [Table(["metric", "value"], [["accuracy", 0.93]])]),
        Section("Training", [LineChart({"train loss": [(1, 0.7), (2, 0.5)]})]),
    ])
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:60rem;padding:0 1rem;color:#111827;background:#fff}
h1{font-size:1.5rem;border-bottom:2px solid #e5e7eb;padding-bottom:.4rem}
h2{font-size:1.15rem;margin-top:2rem}
p.note{color:#4b5563}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #e5e7eb;padding:.3rem .6rem;text-align:right}
th{background:#f9fafb}
td.l,th.l{text-align:left}
table.heat td{min-width:2.6rem;text-align:center}
svg{display:block;margin:.6rem 0;font-size:11px}
.flag{color:#b91c1c;font-weight:600}
"""


@dataclass(frozen=True, slots=True)
class Paragraph:
    text: str
    flagged: bool = False  # rendered in red: a finding that needs attention


@dataclass(frozen=True, slots=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]


@dataclass(frozen=True, slots=True)
class LineChart:
    """One polyline per series; points are (x, y). Used for loss and metric curves."""

    series: Mapping[str, Sequence[tuple[float, float]]]
    x_label: str = "step"
    y_label: str = ""


@dataclass(frozen=True, slots=True)
class Heatmap:
    """A square matrix (confusion matrix: rows = true label, columns = predicted)."""

    labels: Sequence[str]
    matrix: Sequence[Sequence[float]]
    row_title: str = "true"
    column_title: str = "predicted"


@dataclass(frozen=True, slots=True)
class BarChart:
    """Horizontal bars, one per label; values are drawn on a 0..max scale."""

    values: Mapping[str, float]
    value_label: str = ""
    highlight: Sequence[str] = ()  # labels whose bars are drawn in the alert colour


Block = Paragraph | Table | LineChart | Heatmap | BarChart


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    blocks: Sequence[Block] = field(default_factory=tuple)


def render_report(title: str, sections: Sequence[Section]) -> str:
    """The whole page as a string (UTF-8, no external assets, no scripts)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{_e(section.title)}</h2>")
        parts.extend(_render_block(block) for block in section.blocks)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _render_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        cls = "flag" if block.flagged else "note"
        return f'<p class="{cls}">{_e(block.text)}</p>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, LineChart):
        return _line_chart(block)
    if isinstance(block, Heatmap):
        return _heatmap(block)
    return _bar_chart(block)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def format_value(value: object) -> str:
    """Numbers to at most 4 significant digits (integers in full); anything else as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _table(table: Table) -> str:
    head = "".join(f'<th class="l">{_e(h)}</th>' for h in table.headers)
    rows = []
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="l"' if i == 0 or not isinstance(cell, int | float) else ""
            cells.append(f"<td{cls}>{_e(format_value(cell))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _line_chart(chart: LineChart) -> str:
    width, height = 640, 260
    left, right, top, bottom = 56, 150, 14, 36  # margins: axis labels left, legend right
    points = [p for series in chart.series.values() for p in series if _finite(p)]
    if not points:
        return '<p class="note">(no data points)</p>'
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    if x_max == x_min:
        x_min, x_max = x_min - 1, x_max + 1
    if y_max == y_min:
        y_min, y_max = y_min - 0.5, y_max + 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_min) / (x_max - x_min) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_min) / (y_max - y_min)) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(chart.y_label)} chart">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#d1d5db"/>',
    ]
    for y in _ticks(y_min, y_max):
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#f3f4f6"/>'
            f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">'
            f"{_e(format_value(y))}</text>"
        )
    for x in _ticks(x_min, x_max):
        out.append(
            f'<text x="{sx(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
            f"{_e(format_value(round(x, 2)))}</text>"
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">'
        f"{_e(chart.x_label)}</text>"
    )
    if chart.y_label:
        out.append(
            f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{_e(chart.y_label)}</text>'
        )
    for i, (name, series) in enumerate(chart.series.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in series if _finite((x, y)))
        if not coords:
            continue
        if len(series) == 1:
            x, y = series[0]
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        else:
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{coords}"/>'
            )
        ly = top + 12 + 16 * i
        out.append(
            f'<line x1="{width - right + 10}" x2="{width - right + 28}" y1="{ly - 4}" '
            f'y2="{ly - 4}" stroke="{colour}" stroke-width="3"/>'
            f'<text x="{width - right + 32}" y="{ly}">{_e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _finite(point: tuple[float, float]) -> bool:
    return math.isfinite(point[0]) and math.isfinite(point[1])


def _heatmap(heat: Heatmap) -> str:
    """An HTML table whose cells are shaded by their share of the row (recall per class)."""
    head = "".join(f"<th>{_e(label)}</th>" for label in heat.labels)
    rows = []
    for label, row in zip(heat.labels, heat.matrix, strict=True):
        total = sum(row) or 1
        cells = []
        for value in row:
            share = value / total
            # White (share 0) to the palette blue (share 1); text turns white on dark cells.
            r, g, b = (int(255 - (255 - c) * share) for c in (37, 99, 235))
            ink = "#fff" if share > 0.55 else "#111827"
            cells.append(
                f'<td style="background:rgb({r},{g},{b});color:{ink}" '
                f'title="{_e(format_value(share))} of row">{_e(format_value(value))}</td>'
            )
        rows.append(f'<tr><th class="l">{_e(label)}</th>{"".join(cells)}</tr>')
    caption = f"rows: {heat.row_title}, columns: {heat.column_title}"
    return (
        f'<table class="heat"><caption>{_e(caption)}</caption>'
        f'<thead><tr><th class="l"></th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _bar_chart(chart: BarChart) -> str:
    if not chart.values:
        return '<p class="note">(no values)</p>'
    label_w, bar_w, row_h = 160, 360, 22
    height = row_h * len(chart.values) + 24
    top = max([*chart.values.values(), 0.0]) or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 80}" '
        f'height="{height}" role="img" aria-label="{_e(chart.value_label)} bars">'
    ]
    for i, (label, value) in enumerate(chart.values.items()):
        y = 6 + i * row_h
        length = max(value, 0.0) / top * bar_w if math.isfinite(value) else 0.0
        colour = PALETTE[1] if label in chart.highlight else PALETTE[0]
        out.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{row_h - 6}" '
            f'fill="{colour}"/>'
            f'<text x="{label_w + length + 4:.1f}" y="{y + 14}">{_e(format_value(value))}</text>'
        )
    if chart.value_label:
        out.append(
            f'<text x="{label_w + bar_w / 2}" y="{height - 4}" text-anchor="middle">'
            f"{_e(chart.value_label)}</text>"
        )
    out.append("</svg>")
    return "".join(out)
