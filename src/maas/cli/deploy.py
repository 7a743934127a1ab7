"""``maas models deploy``: how a version is served, for every instance (show or change)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from maas.cli.common import JsonOpt, backend_from, fail
from maas.cli.output import out, print_json
from maas.registry.deployments import DeploymentSpec


def deploy(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name:version (or name@alias: the version it names)")],
    replicas: Annotated[
        int | None, typer.Option(help="Fixed replica count (Ray mode); clears autoscaling.")
    ] = None,
    min_replicas: Annotated[
        int | None, typer.Option(help="Autoscaling floor (Ray mode); with --max-replicas.")
    ] = None,
    max_replicas: Annotated[
        int | None, typer.Option(help="Autoscaling ceiling (Ray mode); with --min-replicas.")
    ] = None,
    target_ongoing_requests: Annotated[
        float | None, typer.Option(help="Autoscaling target of requests per replica (Ray mode).")
    ] = None,
    cpus: Annotated[float | None, typer.Option(help="CPUs per replica (Ray mode).")] = None,
    pin: Annotated[
        bool | None, typer.Option("--pin/--no-pin", help="Never evict it to make room.")
    ] = None,
    load: Annotated[
        bool | None,
        typer.Option("--load/--unload", help="Load it on every instance, or unload it everywhere."),
    ] = None,
    on_demand: Annotated[
        bool, typer.Option("--on-demand", help="Neither: load it on its first request.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show or change how a version is served by every instance sharing the registry.

    Without options it shows the settings. Running servers apply a change within
    a second; instances started later apply it at start.

    \b
    Examples:
      maas models deploy reviews-clf:2
      maas models deploy reviews-clf:2 --load --pin
      maas models deploy minilm:1 --replicas 2 --cpus 1
      maas models deploy minilm:1 --min-replicas 1 --max-replicas 4 \\
          --target-ongoing-requests 8 --json
    """
    changes = _changes(
        replicas, min_replicas, max_replicas, target_ongoing_requests, cpus, pin, load, on_demand
    )
    with backend_from(ctx) as backend:
        spec = backend.set_deployment(ref, **changes) if changes else backend.get_deployment(ref)
    if as_json:
        print_json(spec.to_json())
        return
    _show(spec)


def _changes(
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    target: float | None,
    cpus: float | None,
    pin: bool | None,
    load: bool | None,
    on_demand: bool,
) -> dict[str, Any]:
    """The settings the options change (the server validates the values)."""
    changes: dict[str, Any] = {}
    if replicas is not None:
        if min_replicas is not None or max_replicas is not None:
            raise fail("give either --replicas or --min-replicas/--max-replicas, not both")
        # A fixed count replaces autoscaling.
        changes |= {"replicas": replicas, "min_replicas": None, "max_replicas": None}
        changes["target_ongoing_requests"] = None
    if min_replicas is not None:
        changes |= {"min_replicas": min_replicas, "replicas": None}
    if max_replicas is not None:
        changes |= {"max_replicas": max_replicas, "replicas": None}
    if target is not None:
        changes["target_ongoing_requests"] = target
    if cpus is not None:
        changes["num_cpus"] = cpus
    if on_demand:
        if load is not None:
            raise fail("give one of --load, --unload and --on-demand")
        changes["loaded"] = None
    elif load is not None:
        changes["loaded"] = load
        if not load:
            changes["pinned"] = False  # unloaded everywhere: nothing left to pin
    if pin is not None:
        changes["pinned"] = pin
    return changes


def _show(spec: DeploymentSpec) -> None:
    loaded = {True: "on every instance", False: "unloaded everywhere", None: "on demand"}
    out.print(f"[bold]{spec.ref}[/bold]")
    out.print(f"loaded: {loaded[spec.loaded]}{', pinned' if spec.pinned else ''}")
    if spec.autoscaling:
        target = spec.target_ongoing_requests
        out.print(
            f"replicas: autoscaling {spec.min_replicas}-{spec.max_replicas}"
            + (f", target {target:g} ongoing requests each" if target is not None else "")
        )
    else:
        out.print(f"replicas: {spec.replicas or 1}")
    if spec.num_cpus is not None:
        out.print(f"cpus per replica: {spec.num_cpus:g}")
    if spec.updated_at is not None:
        stamp = spec.updated_at.strftime("%Y-%m-%d %H:%M:%S")
        out.print(f"updated: {stamp} by {spec.updated_by or 'unknown'}")
