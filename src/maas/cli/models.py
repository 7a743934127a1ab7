"""``maas models ...``: inspect, alias, archive, delete, gc (push: ``cli.model_push``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maas.cli.common import JsonOpt, backend_from, cli_errors, fail
from maas.cli.deploy import deploy
from maas.cli.model_push import import_gguf_command, push
from maas.cli.output import human_bytes, out, print_json, table
from maas.cli.rollout import app as rollout_app
from maas.cli.route import route
from maas.errors import NotFoundError
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo

app = typer.Typer(help="Manage models, versions and aliases.", no_args_is_help=True)
app.command("push")(push)
app.command("import-gguf")(import_gguf_command)
app.command("deploy")(cli_errors(deploy))
app.command("route")(cli_errors(route))
app.add_typer(rollout_app, name="rollout")


def _version_rows(versions: list[VersionInfo]) -> list[list[object]]:
    return [
        [
            v.version,
            v.status,
            v.format,
            human_bytes(v.size_bytes),
            v.digest.removeprefix("sha256:")[:12],
            ", ".join(v.aliases),
            v.parent or "",
            v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        ]
        for v in versions
    ]


@app.command("list")
@cli_errors
def list_models(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option(help="Only models of this task.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List models.

    \b
    Examples:
      maas models list
      maas models list --task embeddings --json
    """
    with backend_from(ctx) as backend:
        models = backend.list_models(task=task)
    if as_json:
        print_json(models)
        return
    table(
        None,
        ["name", "task", "versions", "latest", "aliases", "description"],
        [
            [
                m.name,
                m.task,
                m.version_count,
                m.latest_version,
                ", ".join(f"{a}→{v}" for a, v in m.aliases.items()),
                m.description,
            ]
            for m in models
        ],
    )


@app.command()
@cli_errors
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name, name:3 or name@alias")],
    as_json: JsonOpt = False,
) -> None:
    """Show a model (bare name) and the version a reference resolves to.

    \b
    Examples:
      maas models show reviews-clf
      maas models show reviews-clf:2
      maas models show reviews-clf@production --json
    """
    parsed = ModelRef.parse(ref)
    with backend_from(ctx) as backend:
        model = backend.get_model(parsed.name)
        try:
            version: VersionInfo | None = backend.get_version(ref, with_files=True)
        except NotFoundError:
            if parsed.version is not None or parsed.alias is not None:
                raise
            version = None  # a model with no ready version yet
    if as_json:
        print_json(
            {
                "model": model.model_dump(mode="json"),
                "version": version.model_dump(mode="json") if version else None,
            }
        )
        return
    out.print(f"[bold]{model.name}[/bold]  task={model.task}  versions={model.version_count}")
    if model.description:
        out.print(model.description)
    if model.aliases:
        out.print("aliases: " + ", ".join(f"{a} → {v}" for a, v in model.aliases.items()))
    if version is None:
        out.print("no ready version")
        return
    out.print(
        f"\n[bold]{version.ref}[/bold]  {version.status}  {version.format}  "
        f"{human_bytes(version.size_bytes)}"
    )
    out.print(f"digest: {version.digest}")
    if version.parent:
        out.print(f"parent: {version.parent}")
    params = version.metadata.get("parameter_count")
    if params:
        out.print(f"parameters: {params:,}")
    for key, value in version.metrics.items():
        out.print(f"metric {key}: {value}")
    table(
        None,
        ["file", "size", "sha256"],
        [[f.path, human_bytes(f.size), f.sha256[:16]] for f in version.files or []],
    )


@app.command()
@cli_errors
def versions(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """List the versions of a model.

    \b
    Examples:
      maas models versions reviews-clf
    """
    with backend_from(ctx) as backend:
        items = backend.list_versions(name)
    if as_json:
        print_json(items)
        return
    table(
        name,
        ["version", "status", "format", "size", "digest", "aliases", "parent", "created"],
        _version_rows(items),
    )


@app.command()
@cli_errors
def alias(
    ctx: typer.Context,
    name: str,
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
    version: int,
    reason: Annotated[str, typer.Option(help="Recorded in the alias history.")] = "",
) -> None:
    """Point ALIAS of NAME at VERSION (history is kept).

    \b
    Examples:
      maas models alias reviews-clf production 2 --reason "new release"
      maas models alias reviews-clf canary 2
    """
    with backend_from(ctx) as backend:
        info = backend.set_alias(name, alias_name, version, reason=reason)
    out.print(f"{name}@{alias_name} → {info.ref}")


@app.command()
@cli_errors
def unalias(
    ctx: typer.Context, name: str, alias_name: Annotated[str, typer.Argument(metavar="ALIAS")]
) -> None:
    """Remove ALIAS from NAME.

    \b
    Examples:
      maas models alias reviews-clf canary 2
      maas models unalias reviews-clf canary
    """
    with backend_from(ctx) as backend:
        backend.delete_alias(name, alias_name)
    out.print(f"removed {name}@{alias_name}")


@app.command()
@cli_errors
def rollback(
    ctx: typer.Context, name: str, alias_name: Annotated[str, typer.Argument(metavar="ALIAS")]
) -> None:
    """Move ALIAS back to the version it pointed at before its last move.

    \b
    Examples:
      maas models alias reviews-clf production 2
      maas models rollback reviews-clf production          # back to 1
    """
    with backend_from(ctx) as backend:
        info = backend.rollback(name, alias_name)
    out.print(f"{name}@{alias_name} → {info.ref}")


@app.command()
@cli_errors
def history(
    ctx: typer.Context,
    name: str,
    alias_name: Annotated[str | None, typer.Argument(metavar="[ALIAS]")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show every alias move of NAME (or of one alias).

    \b
    Examples:
      maas models history reviews-clf
      maas models history reviews-clf production --json
    """
    with backend_from(ctx) as backend:
        events = backend.alias_history(name, alias_name)
    if as_json:
        print_json(events)
        return
    table(
        f"{name} alias history",
        ["when", "alias", "from", "to", "by", "reason"],
        [
            [
                e.at.strftime("%Y-%m-%d %H:%M:%S"),
                e.alias,
                e.from_version,
                e.to_version,
                e.actor,
                e.reason,
            ]
            for e in events
        ],
    )


@app.command()
@cli_errors
def archive(ctx: typer.Context, ref: str) -> None:
    """Archive a version (kept, but no longer resolved as latest or aliasable).

    \b
    Examples:
      maas models archive reviews-clf:2
    """
    with backend_from(ctx) as backend:
        info = backend.archive(ref)
    out.print(f"archived {info.ref}")


@app.command()
@cli_errors
def restore(ctx: typer.Context, ref: str) -> None:
    """Bring an archived version back to ready.

    \b
    Examples:
      maas models archive reviews-clf:2
      maas models restore reviews-clf:2
    """
    with backend_from(ctx) as backend:
        info = backend.restore(ref)
    out.print(f"restored {info.ref}")


@app.command()
@cli_errors
def delete(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name:version, or a bare name for the model")],
    force: Annotated[bool, typer.Option(help="Delete a model that still has versions.")] = False,
) -> None:
    """Delete a version (name:3) or a whole model (name). Blobs go at the next gc.

    \b
    Examples:
      maas models delete reviews-clf:2
      maas models delete reviews-clf --force
    """
    parsed = ModelRef.parse(ref)
    with backend_from(ctx) as backend:
        if parsed.alias is not None:
            raise fail("delete takes name:version or a model name, not an alias")
        if parsed.version is not None:
            backend.delete_version(ref)
        else:
            backend.delete_model(parsed.name, force=force)
    out.print(f"deleted {ref}")


@app.command()
@cli_errors
def pull(ctx: typer.Context, ref: str, dest: Path) -> None:
    """Download a version's files into DEST (digests verified).

    \b
    Examples:
      maas models pull reviews-clf@production ./out
    """
    with backend_from(ctx) as backend:
        info = backend.download(ref, dest)
    out.print(f"{info.ref} → {dest}")


@app.command()
@cli_errors
def gc(
    ctx: typer.Context,
    grace_seconds: Annotated[
        int | None, typer.Option(help="Keep unreferenced blobs younger than this.")
    ] = None,
) -> None:
    """Delete blobs no version references.

    \b
    Examples:
      maas models gc
      maas models gc --grace-seconds 0
    """
    with backend_from(ctx) as backend:
        result = backend.gc(grace_seconds=grace_seconds)
    out.print(
        f"removed {result.removed_blobs} blob(s), freed {human_bytes(result.freed_bytes)}, "
        f"kept {result.kept_blobs}"
    )
