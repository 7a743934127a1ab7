"""``maas schedules``: cron schedules that retrain a model and roll the result out."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from maas.cli.common import JsonOpt, backend_from, cli_errors, fail
from maas.cli.output import out, print_json, table

app = typer.Typer(
    help="Schedules: retrain on the newest data, evaluate, gate, roll out.", no_args_is_help=True
)


@app.command("create")
@cli_errors
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The schedule's name.")],
    model: Annotated[str, typer.Option(help="The model to retrain.")],
    dataset: Annotated[str, typer.Option(help="Dataset name (its newest version is used).")],
    cron: Annotated[str, typer.Option(help='Cron expression, e.g. "0 2 * * *".')],
    timezone: Annotated[str, typer.Option(help="IANA timezone of the cron times.")] = "UTC",
    gate: Annotated[
        list[str] | None, typer.Option(help="A gate that must hold, e.g. accuracy>=0.9.")
    ] = None,
    steps: Annotated[str, typer.Option(help="Rollout: percent of traffic per step.")] = "5,25,100",
    step_seconds: Annotated[float, typer.Option(help="Rollout: seconds per step.")] = 300.0,
    pipeline: Annotated[
        str | None,
        typer.Option(help="More pipeline settings as JSON (max_steps, slice_column, criteria)."),
    ] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Retrain MODEL on DATASET at the times CRON names, then roll the result out.

    Each run is a pipeline job: newest dataset version, train from production,
    evaluate, check every --gate, start a canary rollout. A server runs them.

    \b
    Examples:
      maas schedules create nightly --model reviews-clf --dataset reviews \\
          --cron "0 2 * * *" --timezone Europe/Paris --gate "accuracy>=0.5"
      maas schedules create weekly --model reviews-clf --dataset reviews \\
          --cron "0 3 * * 1" --pipeline '{"max_steps": 50}' --paused
    """
    try:
        extra = json.loads(pipeline) if pipeline else {}
        percents = [int(p) for p in steps.split(",")]
    except ValueError as exc:
        raise fail(f"--pipeline or --steps: {exc}") from None
    if not isinstance(extra, dict):
        raise fail("--pipeline must be a JSON object")
    rollout = {"steps": percents, "step_seconds": step_seconds, **extra.pop("rollout", {})}
    spec: dict[str, Any] = {"dataset": dataset, **extra, "rollout": rollout}
    if gate:
        spec["gates"] = list(gate)
    body = {
        "name": name,
        "model": model,
        "cron": cron,
        "timezone": timezone,
        "pipeline": spec,
        "enabled": not paused,
    }
    with backend_from(ctx) as backend:
        made = backend.create_schedule(body)
    if as_json:
        print_json(made)
        return
    _show(made)


@app.command("list")
@cli_errors
def list_schedules(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every schedule, when it runs next and what it did last.

    \b
    Examples:
      maas schedules create nightly --model reviews-clf --dataset reviews \\
          --cron "0 2 * * *"
      maas schedules list
    """
    with backend_from(ctx) as backend:
        found = backend.list_schedules()
    if as_json:
        print_json({"schedules": found})
        return
    rows = [
        [
            s["name"],
            s["model"],
            f"{s['cron']} ({s['timezone']})",
            "yes" if s["enabled"] else "paused",
            s["next_run_at"][:19].replace("T", " ") if s["enabled"] else "",
            s["last_job_id"] or "",
        ]
        for s in found
    ]
    table(None, ["name", "model", "cron", "enabled", "next run (UTC)", "last run"], rows)


@app.command("show")
@cli_errors
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The schedule.")],
    as_json: JsonOpt = False,
) -> None:
    """One schedule and its pipeline settings (and, from a server, its latest runs).

    \b
    Examples:
      maas schedules create nightly --model reviews-clf --dataset reviews \\
          --cron "0 2 * * *"
      maas schedules show nightly
    """
    with backend_from(ctx) as backend:
        found = backend.get_schedule(name)
    if as_json:
        print_json(found)
        return
    _show(found)


@app.command("pause")
@cli_errors
def pause(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The schedule.")]) -> None:
    """Start no more runs until resumed (a run in progress goes on).

    \b
    Examples:
      maas schedules create nightly --model reviews-clf --dataset reviews \\
          --cron "0 2 * * *"
      maas schedules pause nightly
    """
    with backend_from(ctx) as backend:
        backend.update_schedule(name, {"enabled": False})
    out.print(f"{name}: paused")


@app.command("resume")
@cli_errors
def resume(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The schedule.")]) -> None:
    """Run again at the next time the cron expression names (missed times are not replayed).

    \b
    Examples:
      maas schedules create nightly --model reviews-clf --dataset reviews \\
          --cron "0 2 * * *" --paused
      maas schedules resume nightly
    """
    with backend_from(ctx) as backend:
        found = backend.update_schedule(name, {"enabled": True})
    out.print(f"{name}: next run at {found['next_run_at']}")


@app.command("delete")
@cli_errors
def delete(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The schedule.")]) -> None:
    """Delete the schedule (a run in progress goes on).

    \b
    Examples:
      maas schedules create nightly --model reviews-clf --dataset reviews \\
          --cron "0 2 * * *"
      maas schedules delete nightly
    """
    with backend_from(ctx) as backend:
        backend.delete_schedule(name)
    out.print(f"{name}: deleted")


@app.command("run")
@cli_errors
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The schedule.")],
    as_json: JsonOpt = False,
) -> None:
    """Queue a run now, outside the cron times; follow it with `maas jobs follow`.

    \b
    Examples:
      maas schedules create nightly --model reviews-clf --dataset reviews \\
          --cron "0 2 * * *"
      maas schedules run nightly
    """
    with backend_from(ctx) as backend:
        job = backend.run_schedule(name)
    if as_json:
        print_json(job)
        return
    out.print(f"{name}: started pipeline job {job['id']} ({job['status']})")


def _show(schedule: dict[str, Any]) -> None:
    state = "enabled" if schedule["enabled"] else "paused"
    out.print(
        f"[bold]{schedule['name']}[/bold]: retrains {schedule['model']} at "
        f"{schedule['cron']!r} ({schedule['timezone']}), {state}"
    )
    if schedule["enabled"]:
        out.print(f"next run: {schedule['next_run_at']}")
    out.print(f"pipeline: {json.dumps(schedule['pipeline'], sort_keys=True)}")
    if schedule.get("last_note"):
        out.print(f"last note: {schedule['last_note']}")
    runs = schedule.get("runs") or []
    if runs:
        table(
            None,
            ["job", "status", "created", "result", "error"],
            [
                [
                    r["id"],
                    r["status"],
                    r["created_at"][:19],
                    r["result_ref"] or "",
                    r["error"] or "",
                ]
                for r in runs
            ],
        )
