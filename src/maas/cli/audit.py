"""``maas audit ...``: read and verify the audit log (local registry, or a server with --url)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from pydantic import TypeAdapter

from maas.cli.backend import open_client
from maas.cli.common import cli_errors, fail, settings_from
from maas.cli.output import out, print_json, table
from maas.config import Settings
from maas.registry.store import Registry
from maas.security.audit import AuditEntry, AuditLog, VerifyReport

app = typer.Typer(help="Read and verify the audit log of management actions.", no_args_is_help=True)

_ENTRIES = TypeAdapter(list[AuditEntry])


def fetch_entries(settings: Settings, **filters: Any) -> list[AuditEntry]:
    if settings.url:
        with open_client(settings) as client:
            return _ENTRIES.validate_python(client.list_audit(**filters))
    registry = Registry(settings)
    try:
        return AuditLog(registry.db).list(**filters)
    finally:
        registry.close()


def fetch_report(settings: Settings) -> VerifyReport:
    if settings.url:
        with open_client(settings) as client:
            return VerifyReport.model_validate(client.verify_audit())
    registry = Registry(settings)
    try:
        return AuditLog(registry.db).verify()
    finally:
        registry.close()


@app.command("list")
@cli_errors
def list_entries(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option(help="Only this actor, e.g. key:ci#3.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. alias.set.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (UTC).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    after_id: Annotated[int | None, typer.Option(help="Entries after this id (paging).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List entries, oldest first.

    \b
    Examples:
      maas audit list
      maas audit list --action alias.set --limit 20 --json
    """
    entries = fetch_entries(
        settings_from(ctx),
        actor=actor,
        action=action,
        since=since,
        limit=limit,
        after_id=after_id,
    )
    if as_json:
        print_json(entries)
        return
    table(
        None,
        ["id", "time (UTC)", "actor", "action", "target", "source", "result"],
        [
            [
                e.id,
                e.ts.strftime("%Y-%m-%d %H:%M:%S"),
                e.actor,
                e.action,
                e.target,
                e.source,
                e.result,
            ]
            for e in entries
        ],
    )


@app.command()
@cli_errors
def verify(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Recompute the hash chain: exit 0 when intact, 1 naming the first bad entry.

    \b
    Examples:
      maas audit verify
    """
    report = fetch_report(settings_from(ctx))
    if as_json:
        print_json(report)
        if not report.ok:
            raise typer.Exit(1)
        return
    if not report.ok:
        raise fail(f"audit chain broken: {report.reason}")
    head = f"; head #{report.head_id} {report.head_hash}" if report.head_id is not None else ""
    out.print(f"audit chain intact: {report.checked} entries{head}")
