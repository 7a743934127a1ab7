"""``maas export-edge`` and ``maas keys edge-signing ...``: signed bundles for devices.

``export-edge`` submits an ``edge`` job (see :mod:`maas.jobs.edge`) and waits for it, as
the other job commands do; locally it then copies the bundle to ``--out``. The signing
key lives in ``MAAS_HOME/keys/`` (:mod:`maas.registry.edge_keys`), so its commands run
on the registry's machine (local mode).
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Annotated

import typer

from maas.cli.common import JsonOpt, cli_errors, fail, settings_from
from maas.cli.job_backends import jobs_from
from maas.cli.jobs import follow_job
from maas.cli.output import err, out, print_json
from maas.jobs.edge_graph import TARGETS
from maas.registry.edge_keys import EdgeSigningKeys

signing_app = typer.Typer(
    help="The registry's Ed25519 key that signs edge bundles (local registry).",
    no_args_is_help=True,
)


@cli_errors
def export_edge(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The version to bundle: name, name:3, name@alias.")],
    target: Annotated[
        str,
        typer.Option(
            help="onnx-int8: an int8 graph (an int8 version as it is, else quantized); onnx: fp32."
        ),
    ] = "onnx-int8",
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the bundle (default ./<name>-<v>-<target>.zip)."
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Show progress while waiting.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a signed bundle that runs REF on a device with onnxruntime, tokenizers, numpy.

    The zip holds model.onnx, tokenizer.json, manifest.json (signed: manifest.sig),
    the registry's public key and run.py; unzip it and run
    `python run.py --verify "some text"`. See docs/edge.md.

    \b
    Examples:
      maas export-edge reviews-clf:1 --target onnx-int8 --out reviews-clf-edge.zip
    """
    if target not in TARGETS:
        raise fail(f"unknown target {target!r}; expected one of: {', '.join(TARGETS)}")
    settings = settings_from(ctx)
    with jobs_from(ctx) as backend:
        info = backend.submit("edge", {"model": ref, "target": target}, 0)
        err.print(f"job {info.id} (edge) {info.status}")
        try:
            info = follow_job(backend, info, show_progress=follow)
        except KeyboardInterrupt:
            err.print(f"interrupted: cancelling job {info.id}")
            backend.cancel(info.id)
            raise typer.Exit(128 + signal.SIGINT) from None
        if info.status != "succeeded":
            raise fail(f"job {info.id} {info.status}: {info.error or ''}".rstrip(": "))
        report = backend.report(info.id) or {}
    bundle = Path(str(report.get("bundle", "")))
    if settings.url or not bundle.is_file():
        err.print(
            f"the bundle is on the server: {bundle} (job {info.id})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        if as_json:
            print_json(report)
        return
    name = str(report.get("source", ref)).replace(":", "-").replace("@", "-")
    target_path = out_path or Path(f"{name}-{target}.zip")
    target_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle, target_path)
    if as_json:
        print_json({**report, "bundle": str(target_path)})
        return
    out.print(str(target_path), markup=False, highlight=False, soft_wrap=True)
    err.print(
        f"{report.get('bundle_bytes', 0):,} bytes, signed by key {report.get('key_id')}; "
        f"sha256 {report.get('bundle_sha256')}",
        markup=False,
        highlight=False,
    )


def _keys(ctx: typer.Context) -> EdgeSigningKeys:
    settings = settings_from(ctx)
    if settings.url:
        raise fail("the edge-signing key lives with the registry: run this on its machine")
    return EdgeSigningKeys(settings)


def _print_key(pem: str, key_id: str, as_json: bool, retired: list[str] | None = None) -> None:
    if as_json:
        doc: dict[str, object] = {"key_id": key_id, "public_key_pem": pem}
        if retired is not None:
            doc["retired"] = retired
        out.print(json.dumps(doc, indent=2), markup=False, highlight=False)
    else:
        out.print(pem.rstrip("\n"), markup=False, highlight=False)


@signing_app.command("create")
@cli_errors
def create_key(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Make the registry's edge-signing key; print its public key (PEM).

    The private key is written to MAAS_HOME/keys/edge-signing.key (mode 0600; sealed
    with the master key when encryption at rest is on). `maas export-edge` makes the
    key on first use if this was not run.

    \b
    Examples:
      maas keys edge-signing create
    """
    info = _keys(ctx).create()
    err.print(f"created edge-signing key {info.key_id}")
    _print_key(info.pem, info.key_id, as_json)


@signing_app.command("show")
@cli_errors
def show_key(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the public key that devices pin (run.py --public-key FILE).

    \b
    Examples:
      maas keys edge-signing create   # once
      maas keys edge-signing show --json
    """
    keys = _keys(ctx)
    info = keys.public()
    err.print(f"edge-signing key {info.key_id}")
    _print_key(info.pem, info.key_id, as_json, [r.key_id for r in keys.retired()])


@signing_app.command("rotate")
@cli_errors
def rotate_key(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Replace the key; the old public key is kept to check bundles signed before.

    New bundles are signed by the new key: devices that pin the old one must get the
    new public key (printed here) before they accept them.

    \b
    Examples:
      maas keys edge-signing create   # once
      maas keys edge-signing rotate
    """
    keys = _keys(ctx)
    old, new = keys.rotate()
    err.print(
        f"rotated: {old.key_id} -> {new.key_id}; the old public key is kept in "
        f"{keys.folder / 'edge-signing-retired' / (old.key_id + '.pem')}"
    )
    _print_key(new.pem, new.key_id, as_json)
