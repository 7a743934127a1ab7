"""``maas feedback export|show``: labelled feedback to a dataset, and a model's live figures.

Local mode works on ``MAAS_HOME`` directly; with ``MAAS_URL`` (``--url``) the
commands call the server's management API through the SDK, as every command group does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from maas.cli.backend import open_client
from maas.cli.common import JsonOpt, cli_errors, settings_from
from maas.cli.output import out, print_json, table

app = typer.Typer(help="Feedback on predictions: export it as a dataset, show live accuracy.")


@app.command("export")
@cli_errors
def export(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model whose feedback to export.")],
    out_dataset: Annotated[
        str, typer.Option("--out-dataset", "-o", help="Dataset to write the next version of.")
    ],
    version: Annotated[
        list[int] | None, typer.Option("--version", "-v", help="Only this version (repeatable).")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only feedback given since then (ISO 8601).")
    ] = None,
    description: str = "",
    as_json: JsonOpt = False,
) -> None:
    """Write MODEL's labelled feedback (with captured inputs) as a text,label dataset version.

    \b
    Examples:
      maas feedback export reviews-clf --out-dataset reviews-feedback
      maas feedback export reviews-clf -o reviews-feedback --version 1 \\
          --since 2026-01-01
    """
    settings = settings_from(ctx)
    if settings.url:
        with open_client(settings) as client:
            result = client.export_feedback(
                model, out_dataset, versions=version, since=since, description=description
            )
        rows = result["rows"]
        dataset: dict[str, Any] = dict(result["dataset"])
    else:
        import getpass

        from maas.jobs.feedback_export import export_feedback
        from maas.registry.store import Registry

        registry = Registry(settings)
        try:
            info, rows = export_feedback(
                registry,
                model,
                out_dataset,
                versions=version,
                since=since,
                description=description,
                created_by=f"local:{getpass.getuser()}",
            )
        finally:
            registry.close()
        dataset = info.model_dump(mode="json")
    if as_json:
        print_json({"rows": rows, "dataset": dataset})
        return
    splits = ", ".join(f"{k} {v}" for k, v in dataset["splits"].items())
    out.print(f"exported {rows} labelled predictions of {model} as {dataset['ref']} ({splits})")


@app.command("show")
@cli_errors
def show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model to show.")],
    as_json: JsonOpt = False,
) -> None:
    """Live accuracy and feedback of MODEL's versions (drift too, from a server).

    \b
    Examples:
      maas feedback show reviews-clf
    """
    settings = settings_from(ctx)
    if settings.url:
        with open_client(settings) as client:
            versions = client.monitoring(model)["versions"]
    else:
        from maas.registry.feedback import feedback_stats, versions_with_feedback
        from maas.registry.store import Registry

        registry = Registry(settings)
        try:
            registry.get_model(model)
            versions = [
                {
                    "version": v,
                    "drift": None,
                    "feedback": feedback_stats(
                        registry.db, model, v, settings.feedback_window
                    ).as_dict(),
                }
                for v in versions_with_feedback(registry.db, model)
            ]
        finally:
            registry.close()
    if as_json:
        print_json({"model": model, "versions": versions})
        return
    rows = []
    for entry in versions:
        fb = entry.get("feedback") or {}
        drift = entry.get("drift") or {}
        accuracy = fb.get("accuracy")
        rows.append(
            [
                str(entry["version"]),
                f"{accuracy:.3f}" if accuracy is not None else "-",
                str(fb.get("labelled", 0)),
                str(fb.get("total_feedback", 0)),
                "-" if drift.get("drifting") is None else ("yes" if drift["drifting"] else "no"),
                ", ".join(f["feature"] for f in drift.get("features", []) if f["crossed"]) or "-",
            ]
        )
    table(
        f"{model}: feedback and drift",
        ["version", "live accuracy", "labelled", "feedback", "drifting", "crossed"],
        rows,
    )
