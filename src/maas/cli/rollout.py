"""``maas models rollout``: start, follow and cancel a canary rollout of a candidate version."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from maas.cli.backend import Backend
from maas.cli.common import JsonOpt, backend_from, cli_errors, fail
from maas.cli.output import out, print_json, table

app = typer.Typer(
    help="Canary rollouts: a candidate tried on growing traffic.", no_args_is_help=True
)

ENDED = ("promoted", "rolled_back", "cancelled")


@app.command("start")
@cli_errors
def start(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model.")],
    candidate: Annotated[str, typer.Option(help="Version number or @alias to roll out.")],
    steps: Annotated[str, typer.Option(help="Percent of traffic per step.")] = "5,25,100",
    step_seconds: Annotated[float, typer.Option(help="How long each step lasts.")] = 300.0,
    max_error_rate_increase: Annotated[
        float, typer.Option(help="Error rate the candidate may add over the baseline's.")
    ] = 0.01,
    max_p95_ratio: Annotated[
        float, typer.Option(help="Candidate p95 latency / baseline p95 allowed.")
    ] = 1.5,
    min_requests: Annotated[
        int, typer.Option(help="Candidate requests a step needs before it is judged.")
    ] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Roll CANDIDATE out against the version production holds, step by step.

    A server's controller judges each step on live traffic and advances, promotes
    (moves production) or rolls back by itself; follow it with `rollout status`.

    \b
    Examples:
      maas models rollout start reviews-clf --candidate 2
      maas models rollout cancel reviews-clf
      maas models rollout start reviews-clf --candidate 2 --steps 10,50,100 \\
          --step-seconds 600 --max-p95-ratio 1.2
    """
    try:
        percents = [int(p) for p in steps.split(",")]
    except ValueError:
        raise fail(f"--steps: {steps!r} is not a list of percentages such as 5,25,100") from None
    plan = {
        "candidate": candidate if candidate.startswith("@") else _int(candidate, "--candidate"),
        "steps": percents,
        "step_seconds": step_seconds,
        "criteria": {
            "max_error_rate_increase": max_error_rate_increase,
            "max_p95_ratio": max_p95_ratio,
            "min_requests": min_requests,
        },
    }
    with backend_from(ctx) as backend:
        rollout = backend.start_rollout(name, plan)
    if as_json:
        print_json(rollout)
        return
    _show(rollout)


@app.command("status")
@cli_errors
def status(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model.")],
    rollout_id: Annotated[
        int | None, typer.Argument(help="Which rollout (default: the newest).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh until the rollout ends.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
    as_json: JsonOpt = False,
) -> None:
    """Show a rollout: its step, each decision and the figures it was made on.

    \b
    Examples:
      maas models rollout start reviews-clf --candidate 2
      maas models rollout status reviews-clf
      maas models rollout status reviews-clf 1 --json
    """
    with backend_from(ctx) as backend:
        rollout = _pick(backend, name, rollout_id)
        while True:
            if as_json:
                print_json(rollout)
            else:
                _show(rollout)
            if not watch or rollout["state"] in ENDED:
                return
            time.sleep(interval)
            rollout = backend.get_rollout(name, rollout["id"])
            if not as_json:
                out.print()


@app.command("cancel")
@cli_errors
def cancel(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model.")],
    rollout_id: Annotated[
        int | None, typer.Argument(help="Which rollout (default: the running one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop a running rollout: traffic goes back to the baseline.

    \b
    Examples:
      maas models rollout start reviews-clf --candidate 2
      maas models rollout cancel reviews-clf
    """
    with backend_from(ctx) as backend:
        rollout = _pick(backend, name, rollout_id)
        rollout = backend.cancel_rollout(name, rollout["id"])
    if as_json:
        print_json(rollout)
        return
    _show(rollout)


def _pick(backend: Backend, name: str, rollout_id: int | None) -> dict[str, Any]:
    if rollout_id is not None:
        return backend.get_rollout(name, rollout_id)
    every = backend.list_rollouts(name)
    if not every:
        raise fail(f"model {name!r} has no rollout; start one with `maas models rollout start`")
    return backend.get_rollout(name, every[0]["id"])


def _int(text: str, option: str) -> int:
    if not text.isdigit():
        raise fail(f"{option}: {text!r} is neither a version number nor an @alias")
    return int(text)


def _show(rollout: dict[str, Any]) -> None:
    steps = " → ".join(
        f"[bold]{p}%[/bold]" if i == rollout["step"] and rollout["state"] == "running" else f"{p}%"
        for i, p in enumerate(rollout["steps"])
    )
    out.print(
        f"[bold]{rollout['model']}[/bold] rollout {rollout['id']}: "
        f"v{rollout['candidate']} against v{rollout['baseline']} — {rollout['state']}"
    )
    out.print(f"steps: {steps}  ({rollout['step_seconds']:g} s each)")
    if rollout.get("reason"):
        out.print(f"reason: {rollout['reason']}")
    rows = []
    for event in rollout.get("events", []):
        figures = event.get("figures") or {}
        cand = figures.get("candidate") or {}
        base = figures.get("baseline") or {}
        rows.append(
            [
                event["at"][:19].replace("T", " "),
                event["action"],
                f"{event['percent']}%",
                _rate(cand),
                _rate(base),
                event["reason"],
            ]
        )
    if rows:
        table(None, ["at", "decision", "share", "candidate", "baseline", "reason"], rows)


def _rate(figures: dict[str, Any]) -> str:
    if not figures:
        return ""
    p95 = figures.get("p95_seconds")
    latency = "" if p95 is None else f", p95 {p95 * 1000:.1f} ms"
    return f"{figures['errors']}/{figures['requests']} errors{latency}"
