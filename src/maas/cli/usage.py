"""``maas usage``: usage totals from the local registry, or a server's with ``--url``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from maas.cli.backend import open_client
from maas.cli.common import cli_errors, settings_from
from maas.cli.output import out, table
from maas.registry.store import Registry
from maas.security.usage import aggregate


def _group_label(row: dict[str, Any], group_by: str) -> object:
    """A key group reads "3 (ci-bot)"; requests without a key read "no key"."""
    if group_by != "key":
        return row[group_by]
    if row["key"] is None:
        return "no key"
    return f"{row['key']} ({row['key_name']})" if row.get("key_name") else row["key"]


@cli_errors
def usage(
    ctx: typer.Context,
    key: Annotated[int | None, typer.Option(help="Only this key id.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    since: Annotated[datetime | None, typer.Option("--from", help="From (inclusive).")] = None,
    until: Annotated[datetime | None, typer.Option("--to", help="To (exclusive).")] = None,
    group_by: Annotated[str, typer.Option(help="day, month, model, key, route or status.")] = "day",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print usage: requests, tokens, compute seconds and energy per group.

    \b
    Examples:
      maas usage
      maas usage --group-by key --from 2026-01-01
      maas usage --model minilm --group-by route --json
    """
    settings = settings_from(ctx)
    if settings.url:  # the server counts the requests it has just served too
        with open_client(settings) as client:
            report = client.usage(key=key, model=model, since=since, until=until, group_by=group_by)
        rows = report["data"]
    else:
        registry = Registry(settings)
        try:
            rows = aggregate(
                registry.db, key_id=key, model=model, since=since, until=until, group_by=group_by
            )
        finally:
            registry.close()
    if as_json:
        out.print_json(data={"group_by": group_by, "data": rows})
        return
    table(
        None,
        [group_by, "requests", "prompt tok", "completion tok", "items", "compute s", "energy J"],
        [
            [
                _group_label(row, group_by),
                row["requests"],
                row["prompt_tokens"],
                row["completion_tokens"],
                row["items"],
                f"{row['compute_seconds']:.3f}",
                f"{row['energy_joules']:.1f}",
            ]
            for row in rows
        ],
    )
