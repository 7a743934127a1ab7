"""Usage reports as the console shows them: a cost column and a CSV export.

The sums come from ``GET /admin/v1/usage`` unchanged; the console only adds a
cost from two prices the operator types in (per 1k tokens, per compute
second), so the same report can be priced without changing what is stored.
"""

from __future__ import annotations

from typing import Any, Protocol

CSV_COLUMNS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "items",
    "compute_seconds",
    "queue_seconds",
    "energy_joules",
    "cost",
)


class RowWriter(Protocol):
    def writerow(self, row: Any, /) -> Any: ...


def cost_rows(
    rows: list[dict[str, Any]], price_1k_tokens: float, price_compute_second: float
) -> list[dict[str, Any]]:
    """Each row with ``cost`` added: tokens / 1000 x price + compute seconds x price."""
    return [
        {
            **row,
            "cost": round(
                row.get("total_tokens", 0) / 1000 * price_1k_tokens
                + row.get("compute_seconds", 0.0) * price_compute_second,
                6,
            ),
        }
        for row in rows
    ]


def _cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) is
    quoted with a leading apostrophe: key and model names are user input."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def usage_csv(writer: RowWriter, rows: list[dict[str, Any]], group_by: str) -> None:
    """The report as CSV: the group (and the key's name when grouped by key), then sums."""
    named = group_by == "key"
    writer.writerow([group_by, *(["key_name"] if named else []), *CSV_COLUMNS])
    for row in rows:
        group = row.get(group_by)
        writer.writerow(
            [
                "" if group is None else _cell(group),
                *([_cell(row.get("key_name") or "")] if named else []),
                *(row.get(column, 0) for column in CSV_COLUMNS),
            ]
        )
