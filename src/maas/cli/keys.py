"""``maas keys ...``: manage API keys in the local registry."""

from __future__ import annotations

from typing import Annotated

import typer

from maas.cli.common import cli_errors, settings_from
from maas.cli.output import out, print_json, table
from maas.registry.store import Registry
from maas.security.keys import KeyStore

app = typer.Typer(help="Manage API keys (local registry).", no_args_is_help=True)


@app.command()
@cli_errors
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n")],
    scope: Annotated[list[str] | None, typer.Option("--scope", "-s", help="Repeatable.")] = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    registry = Registry(settings_from(ctx))
    try:
        info, plaintext = KeyStore(registry.db).create(name, scope or ["infer"])
    finally:
        registry.close()
    out.print(plaintext)
    typer.echo(
        f"created key {info.id} ({info.name}, scopes: {', '.join(info.scopes)}); "
        "it will not be shown again",
        err=True,
    )


@app.command("list")
@cli_errors
def list_keys(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys (never their secrets)."""
    registry = Registry(settings_from(ctx))
    try:
        keys = KeyStore(registry.db).list()
    finally:
        registry.close()
    if as_json:
        print_json(keys)
        return
    table(
        None,
        ["id", "name", "prefix", "scopes", "created", "revoked"],
        [
            [
                k.id,
                k.name,
                k.prefix + "…",
                ",".join(k.scopes),
                k.created_at.strftime("%Y-%m-%d %H:%M"),
                k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
            ]
            for k in keys
        ],
    )


@app.command()
@cli_errors
def revoke(ctx: typer.Context, key_id: int) -> None:
    """Revoke a key; it fails from the next request on."""
    registry = Registry(settings_from(ctx))
    try:
        info = KeyStore(registry.db).revoke(key_id)
    finally:
        registry.close()
    out.print(f"revoked key {info.id} ({info.name})")
