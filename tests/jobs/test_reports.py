"""The HTML report builder: self-contained, escaped, one block per kind."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from maas.jobs.reports import (
    BarChart,
    Heatmap,
    LineChart,
    Paragraph,
    Section,
    Table,
    format_value,
    render_report,
)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    return collector


def sample_report() -> str:
    return render_report(
        "Evaluation of spam:3",
        [
            Section("Metrics", [Table(["metric", "value"], [["accuracy", 0.93251], ["n", 120]])]),
            Section(
                "Training",
                [LineChart({"train loss": [(1, 0.7), (2, 0.5), (3, 0.4)], "val": [(3, 0.45)]})],
            ),
            Section("Confusion matrix", [Heatmap(["ham", "spam"], [[50, 2], [5, 43]])]),
            Section(
                "Slices by language",
                [
                    BarChart({"en": 0.95, "de": 0.71}, value_label="accuracy", highlight=["de"]),
                    Paragraph("gap 0.24 above 0.1", flagged=True),
                ],
            ),
        ],
    )


def test_report_contains_every_section_and_chart() -> None:
    page = sample_report()
    parsed = parse(page)
    headings = [
        t
        for t in parsed.text
        if t in {"Metrics", "Training", "Confusion matrix", "Slices by language"}
    ]
    assert headings == ["Metrics", "Training", "Confusion matrix", "Slices by language"]
    assert parsed.tags.count("svg") == 2  # line chart + bar chart; the heatmap is a table
    assert "polyline" in parsed.tags and "circle" in parsed.tags  # a 1-point series is a dot
    assert "0.9325" in parsed.text  # 4 significant digits
    assert page.startswith("<!DOCTYPE html>")


def test_charts_are_well_formed_svg() -> None:
    charts = re.findall(r"<svg.*?</svg>", sample_report(), re.S)
    assert len(charts) == 2
    for chart in charts:
        root = ET.fromstring(chart)  # raises on malformed markup
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_report_is_self_contained() -> None:
    page = sample_report()
    parsed = parse(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    urls = [v for k, v in parsed.attrs if k in {"src", "href"}]
    assert urls == []
    assert not re.search(r"url\(|@import|https?://(?!www\.w3\.org/2000/svg)", page)


def test_user_text_is_escaped_everywhere() -> None:
    evil = '<script>alert("x")</script>'
    page = render_report(
        evil,
        [
            Section(
                evil,
                [
                    Table([evil], [[evil]]),
                    LineChart({evil: [(0, 1), (1, 2)]}, x_label=evil, y_label=evil),
                    Heatmap([evil, "b"], [[1, 0], [0, 1]]),
                    BarChart({evil: 1.0}, value_label=evil),
                    Paragraph(evil),
                ],
            )
        ],
    )
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "script" not in parse(page).tags


def test_heatmap_shades_cells_by_their_share_of_the_row() -> None:
    page = render_report("t", [Section("c", [Heatmap(["a", "b"], [[10, 0], [5, 5]])])])
    assert "background:rgb(37,99,235)" in page  # a full row share is the darkest shade
    assert "background:rgb(255,255,255)" in page  # an empty cell is white


def test_charts_without_data_say_so() -> None:
    page = render_report("t", [Section("c", [LineChart({}), BarChart({})])])
    assert "(no data points)" in page and "(no values)" in page


def test_values_are_formatted_for_reading() -> None:
    assert format_value(True) == "yes"
    assert format_value(90868376) == "90868376"
    assert format_value(0.000012) == "1.200e-05"
    assert format_value(float("nan")) == "n/a"
    assert format_value("text") == "text"
