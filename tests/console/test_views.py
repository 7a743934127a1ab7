"""The usage report as the console prices and exports it."""

from __future__ import annotations

import csv
import io

from maas.console.views import cost_rows, usage_csv


def _row(**values: object) -> dict[str, object]:
    base: dict[str, object] = {
        "requests": 2,
        "prompt_tokens": 1500,
        "completion_tokens": 500,
        "total_tokens": 2000,
        "items": 0,
        "compute_seconds": 4.0,
        "queue_seconds": 0.0,
        "energy_joules": 1.0,
    }
    return {**base, **values}


def test_cost_is_tokens_per_thousand_plus_compute_seconds_at_their_prices() -> None:
    [row] = cost_rows([_row(day="2026-12-05")], price_1k_tokens=0.5, price_compute_second=0.25)
    assert row["cost"] == 2000 / 1000 * 0.5 + 4.0 * 0.25


def test_the_csv_names_each_key_and_quotes_cells_a_spreadsheet_would_run() -> None:
    out = io.StringIO()
    rows = cost_rows([_row(key=3, key_name="=HYPERLINK(1)")], 1.0, 0.0)
    usage_csv(csv.writer(out), rows, "key")
    header, line = list(csv.reader(io.StringIO(out.getvalue())))
    assert header[:3] == ["key", "key_name", "requests"] and header[-1] == "cost"
    assert line[0] == "3" and line[1] == "'=HYPERLINK(1)" and line[-1] == "2.0"
