"""``maas models route``: show, set or clear a model's routing policy (split, sticky, shadow)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from maas.cli.common import JsonOpt, backend_from, fail
from maas.cli.output import out, print_json


def route(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model.")],
    split: Annotated[
        str | None,
        typer.Option(help="Weights over versions or @aliases: 1=90,2=10 or @production=95,3=5."),
    ] = None,
    sticky_key: Annotated[
        bool, typer.Option("--sticky-key", help="Keep each API key on one target.")
    ] = False,
    shadow: Annotated[
        str | None,
        typer.Option(help="VERSION[:FRACTION]: also mirror requests there, answers not returned."),
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Remove the policy: plain requests get production.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show or change how requests for NAME alone are spread over its versions.

    Requests for name:3 or name@alias, or with an x-maas-version header, bypass the
    policy. Running servers apply a change within a second.

    \b
    Examples:
      maas models route reviews-clf
      maas models route reviews-clf --split 1=90,2=10
      maas models route reviews-clf --split @production=95,2=5 --sticky-key
      maas models route reviews-clf --split 1=100 --shadow 2:0.2
      maas models route reviews-clf --clear
    """
    if clear and (split or shadow or sticky_key):
        raise fail("--clear takes no other option")
    if split is None and (shadow or sticky_key):
        raise fail("--shadow and --sticky-key need --split (the whole policy is set at once)")
    with backend_from(ctx) as backend:
        if clear:
            backend.clear_routing(name)
            out.print(f"{name}: routing policy cleared; requests get its production alias")
            return
        if split is not None:
            policy: dict[str, Any] | None = backend.set_routing(
                name,
                {
                    "split": _split(split),
                    "sticky": "key" if sticky_key else None,
                    "shadow": _shadow(shadow),
                },
            )
        else:
            policy = backend.get_routing(name)
    if as_json:
        print_json(policy if policy is not None else {"model": name, "split": None})
        return
    if policy is None:
        out.print(f"{name}: no routing policy; requests get its production alias")
        return
    total = sum(policy["split"].values())
    shares = ", ".join(
        f"{'' if t.startswith('@') else 'v'}{t} {100 * w / total:.4g}%"
        for t, w in policy["split"].items()
    )
    out.print(f"[bold]{name}[/bold]: {shares}" + (" (sticky per key)" if policy["sticky"] else ""))
    if policy["shadow"]:
        mirror = policy["shadow"]
        out.print(f"shadow: v{mirror['version']} gets {100 * mirror['fraction']:.4g}% as mirrors")
    if policy.get("updated_at"):
        out.print(f"updated: {policy['updated_at']} by {policy.get('updated_by') or 'unknown'}")


def _split(text: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for part in text.split(","):
        target, sep, weight = part.strip().partition("=")
        if not sep or not target or not weight.strip().isdigit():
            raise fail(f"--split: {part.strip()!r} is not TARGET=WEIGHT (e.g. 1=90 or @canary=10)")
        weights[target.strip()] = int(weight)
    return weights


def _shadow(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    version, _, fraction = text.partition(":")
    try:
        return {"version": int(version), "fraction": float(fraction) if fraction else 1.0}
    except ValueError:
        raise fail(f"--shadow: {text!r} is not VERSION[:FRACTION] (e.g. 3:0.2)") from None
