"""``maas models ...``: push, inspect, alias, archive, delete, gc."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from maas.cli.backend import LocalBackend
from maas.cli.common import backend_from, cli_errors, fail, settings_from
from maas.cli.output import err, human_bytes, out, print_json, table
from maas.errors import NotFoundError
from maas.registry.gguf import TASK as GGUF_TASK
from maas.registry.gguf import GgufConversion, converted_gguf, import_gguf, is_gguf_file
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo

app = typer.Typer(help="Manage models, versions and aliases.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DequantizeOpt = Annotated[
    bool,
    typer.Option(
        "--dequantize",
        help="GGUF only: convert to float32 safetensors (an hf version) instead of keeping "
        "the quantized file for llama.cpp.",
    ),
]


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


@app.command()
@cli_errors
def push(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Model directory or .onnx file.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    task: Annotated[str | None, typer.Option(help="Task; inferred when possible.")] = None,
    description: Annotated[str, typer.Option(help="Free text for this version.")] = "",
    parent: Annotated[str | None, typer.Option(help="Reference of the parent version.")] = None,
    dequantize: DequantizeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Store PATH as the next version of NAME and print its reference (name:version).

    A .gguf file is stored as it is (a gguf version, served by llama.cpp), exactly
    as by ``maas models import-gguf``; with --dequantize it is converted first.

    \b
    Examples:
      maas models push ./my-model --name encoder
      maas models push ./my-model --name encoder --description "second"
      maas models push model.onnx --name affine --task tensor
      maas models push model.gguf --name tiny-llama
    """
    if not path.exists():
        raise fail(f"{path} does not exist")
    is_gguf = path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf_file(path))
    if dequantize and not is_gguf:
        raise fail("--dequantize applies to a .gguf file only")
    if is_gguf:
        if task not in (None, GGUF_TASK):
            raise fail(f"a GGUF file holds a {GGUF_TASK} model, not {task}")
        _import_gguf(
            ctx,
            path,
            name,
            dequantize=dequantize,
            description=description,
            parent=parent,
            as_json=as_json,
        )
        return
    with backend_from(ctx) as backend:
        total = backend.upload_size(path)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as progress:
            bar = progress.add_task(f"pushing {name}", total=total)
            info = backend.push(
                path,
                name,
                task=task,
                description=description,
                parent=parent,
                on_bytes=lambda n: progress.advance(bar, n),
            )
    if as_json:
        print_json(info)
    else:
        out.print(info.ref)


@app.command("import-gguf")
@cli_errors
def import_gguf_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A .gguf file (llama.cpp format).")],
    name: Annotated[str, typer.Option("--name", "-n", help="Model name.")],
    description: Annotated[str, typer.Option(help="Free text for this version.")] = "",
    parent: Annotated[str | None, typer.Option(help="Reference of the parent version.")] = None,
    dequantize: DequantizeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Store a GGUF file as a text-generation version (quantized, served by llama.cpp).

    With --dequantize the file is converted to float32 safetensors first (an hf
    version, served by transformers, usable by training and export jobs).

    \b
    Examples:
      maas models import-gguf model.gguf --name tiny-llama
      maas models import-gguf model.gguf --name tiny-llama --description "Q8_0"
      maas models import-gguf model.gguf --name tiny-llama-f32 --dequantize
    """
    if not path.is_file():
        raise fail(f"{path} is not a file")
    _import_gguf(
        ctx,
        path,
        name,
        dequantize=dequantize,
        description=description,
        parent=parent,
        as_json=as_json,
    )


def _import_gguf(
    ctx: typer.Context,
    path: Path,
    name: str,
    *,
    dequantize: bool,
    description: str,
    parent: str | None,
    as_json: bool,
) -> None:
    def announce(conversion: GgufConversion) -> None:
        err.print(
            f"converted {conversion.file} ({conversion.info.architecture}, "
            f"{conversion.info.quantization}) in {conversion.seconds:.0f} s; storing"
        )

    if dequantize:
        err.print(f"converting {path.name} to float32 safetensors (CPU-heavy, may take a while)")
    with backend_from(ctx) as backend:
        if isinstance(backend, LocalBackend):
            info = import_gguf(
                backend.registry,
                path,
                name,
                dequantize=dequantize,
                description=description,
                parent=parent,
                created_by=backend.actor,
                on_converted=announce,
            )
        elif not dequantize:
            # The file itself: the server reads its header and stores it as a gguf version.
            info = backend.push(path, name, task=GGUF_TASK, description=description, parent=parent)
        else:
            # A server has no GGUF route: convert here, upload the directory.
            # The source record travels in the description only.
            with converted_gguf(path, settings_from(ctx).tmp_dir) as conversion:
                announce(conversion)
                info = backend.push(
                    conversion.out_dir,
                    name,
                    task=GGUF_TASK,
                    description=conversion.describe(description),
                    parent=parent,
                )
    if as_json:
        print_json(info)
    else:
        out.print(info.ref)


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
