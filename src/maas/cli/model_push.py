"""``maas models push`` and ``maas models import-gguf``: a model into the registry.

Registered on the ``maas models`` app by ``cli.models``. A GGUF file stays a
quantized ``gguf`` version (served by llama.cpp) unless ``--dequantize`` asks
for float32 safetensors; pushing to a server uploads the file or directory.
"""

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
from maas.cli.common import JsonOpt, backend_from, cli_errors, fail, settings_from
from maas.cli.output import err, out, print_json
from maas.registry.gguf import TASK as GGUF_TASK
from maas.registry.gguf import GgufConversion, converted_gguf, import_gguf, is_gguf_file

DequantizeOpt = Annotated[
    bool,
    typer.Option(
        "--dequantize",
        help="GGUF only: convert to float32 safetensors (an hf version) instead of keeping "
        "the quantized file for llama.cpp.",
    ),
]


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
