"""``maas jobs ...``: list, show, follow, cancel jobs and read their logs.

Local mode (no ``--url``) works on ``MAAS_HOME`` directly: ``maas jobs follow`` runs a
queued job from this process. With ``--url`` the commands talk to a server; following
then reads the job's event stream. The commands that submit jobs (``maas train`` ...)
are in :mod:`maas.cli.job_commands`; they share the progress display and the result
printing defined here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from maas.cli.common import JsonOpt, cli_errors, fail
from maas.cli.job_backends import JobsBackend, jobs_from
from maas.cli.output import err, out, print_json, table
from maas.jobs.records import JobInfo

jobs_app = typer.Typer(help="Follow and manage jobs (train, evaluate, ...).", no_args_is_help=True)


# ------------------------------------------------------------- rendering


def _job_rows(jobs: list[JobInfo]) -> list[list[object]]:
    rows: list[list[object]] = []
    for j in jobs:
        progress = ""
        if j.progress and j.progress.get("total"):
            progress = f"{j.progress.get('step')}/{j.progress.get('total')}"
        rows.append(
            [
                j.id,
                j.kind,
                j.status,
                progress,
                j.result_ref or "",
                j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                (j.error or "").splitlines()[0][:60] if j.error else "",
            ]
        )
    return rows


def _show_job(info: JobInfo) -> None:
    out.print(f"[bold]{info.id}[/bold]  {info.kind}  {info.status}")
    out.print(f"spec: {json.dumps(info.spec)}  seed: {info.seed}")
    for label, stamp in (
        ("created", info.created_at),
        ("started", info.started_at),
        ("finished", info.finished_at),
    ):
        if stamp is not None:
            out.print(f"{label}: {stamp.strftime('%Y-%m-%d %H:%M:%S')}")
    if info.progress:
        out.print(f"progress: {json.dumps(info.progress)}")
    if info.result_ref:
        out.print(f"result: {info.result_ref}")
    if info.error:
        out.print(f"error: {info.error}")


def _describe(event: dict[str, Any]) -> str:
    values = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in event.items()
        if k not in ("type", "step", "total", "ts")
    ]
    return " ".join(values)


def _progress_line(info: JobInfo, event: dict[str, Any]) -> str:
    step, total = event.get("step"), event.get("total")
    where = f"step {step}/{total}" if total else f"step {step}"
    return " ".join(
        part for part in (f"{info.kind} {info.id[:8]}", where, _describe(event)) if part
    )


def follow_job(backend: JobsBackend, info: JobInfo, *, show_progress: bool) -> JobInfo:
    """Wait for the job; with ``show_progress``, a bar on a terminal, else a line per event."""
    if not show_progress:
        return backend.follow(info.id, lambda _event: None)
    if not err.is_terminal:  # a log or a pipe: a bar would show nothing; lines are readable

        def print_event(event: dict[str, Any]) -> None:
            if event.get("type") == "progress":
                err.print(_progress_line(info, event), markup=False, highlight=False)

        return backend.follow(info.id, print_event)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[values]}"),
        console=err,
        transient=True,
    ) as progress:
        bar = progress.add_task(f"{info.kind} {info.id[:8]}", total=None, values="")

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == "progress":
                progress.update(
                    bar,
                    completed=event.get("step", 0),
                    total=event.get("total") or None,
                    values=_describe(event),
                )

        return backend.follow(info.id, on_event)


def _metrics_line(metrics: dict[str, Any]) -> str:
    """The job's scalar metrics as ``name value`` pairs (nested ones are in the report)."""
    shown = []
    for name, value in metrics.items():
        if isinstance(value, bool):
            shown.append(f"{name} {str(value).lower()}")
        elif isinstance(value, float):
            shown.append(f"{name} {value:.4g}")
        elif isinstance(value, int):
            shown.append(f"{name} {value}")
    return "  ".join(shown)


def finish(backend: JobsBackend, info: JobInfo, as_json: bool) -> None:
    """Print the result (its reference on stdout, the job's metrics on stderr) or fail."""
    if as_json:
        print_json(info)
    elif info.status == "succeeded":
        out.print(info.result_ref or info.id)
        report = backend.report(info.id) or {}
        metrics = report.get("metrics")
        line = _metrics_line(metrics) if isinstance(metrics, dict) else ""
        if line:
            err.print(f"{info.kind} metrics: {line}", markup=False, highlight=False)
    if info.status != "succeeded":
        raise fail(f"job {info.id} {info.status}: {info.error or ''}".rstrip(": "))


# ------------------------------------------------------------------- jobs


@jobs_app.command("list")
@cli_errors
def list_jobs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first.

    \b
    Examples:
      maas jobs list
      maas jobs list --status succeeded --kind evaluate --json
    """
    with jobs_from(ctx) as backend:
        jobs = backend.list_jobs(status, kind, limit)
    if as_json:
        print_json(jobs)
        return
    table(
        None,
        ["id", "kind", "status", "progress", "result", "created", "error"],
        _job_rows(jobs),
    )


@jobs_app.command()
@cli_errors
def show(ctx: typer.Context, job_id: str, as_json: JsonOpt = False) -> None:
    """Show one job.

    \b
    Examples:
      maas jobs show JOB_ID
    """
    with jobs_from(ctx) as backend:
        info = backend.get(job_id)
    if as_json:
        print_json(info)
    else:
        _show_job(info)


@jobs_app.command()
@cli_errors
def logs(ctx: typer.Context, job_id: str) -> None:
    """Print a job's log (and the worker's stderr, if it wrote any).

    \b
    Examples:
      maas jobs logs JOB_ID
    """
    with jobs_from(ctx) as backend:
        text = backend.log_text(job_id)
    out.print(text, end="", markup=False, highlight=False)


@jobs_app.command()
@cli_errors
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job (a running one is stopped: SIGTERM, then SIGKILL after a grace).

    \b
    Examples:
      maas jobs cancel JOB_ID
    """
    with jobs_from(ctx) as backend:
        info = backend.cancel(job_id)
    state = info.status if info.finished else "cancellation requested"
    out.print(f"{info.id}: {state}")


@jobs_app.command()
@cli_errors
def follow(ctx: typer.Context, job_id: str, as_json: JsonOpt = False) -> None:
    """Show a job's progress until it ends (locally, this process runs it if it is queued).

    \b
    Examples:
      maas jobs follow JOB_ID
    """
    with jobs_from(ctx) as backend:
        info = follow_job(backend, backend.get(job_id), show_progress=True)
        finish(backend, info, as_json)
