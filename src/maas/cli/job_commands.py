"""``maas train|evaluate|quantize|prune|distill|export`` and ``maas models promote``.

Each job command builds a spec (``--spec-file``, the named options, ``--set KEY=VALUE``)
and submits it. Locally this process runs the job and waits for it (``--detach`` leaves it
queued for a server on the same home to run); with ``--url`` a server runs it and
``--follow`` reads its event stream. ``promote`` moves an alias only when every gate holds.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from maas.cli.common import JsonOpt, cli_errors, fail
from maas.cli.job_backends import jobs_from
from maas.cli.jobs import finish, follow_job
from maas.cli.output import err, out, print_json
from maas.errors import InvalidRequestError
from maas.jobs.gates import GatesFailedError
from maas.jobs.specs import describe_keys


def _run_job(
    ctx: typer.Context,
    kind: str,
    spec: dict[str, Any],
    *,
    seed: int,
    follow: bool,
    detach: bool,
    as_json: bool,
) -> None:
    with jobs_from(ctx) as backend:
        info = backend.submit(kind, spec, seed)
        err.print(f"job {info.id} ({kind}) {info.status}")
        if detach:
            if as_json:
                print_json(info)
            else:
                out.print(info.id)
            return
        try:
            info = follow_job(backend, info, show_progress=follow)
        except KeyboardInterrupt:
            err.print(f"interrupted: cancelling job {info.id}")
            backend.cancel(info.id)
            raise typer.Exit(128 + signal.SIGINT) from None
        finish(backend, info, as_json)


# --------------------------------------------------------------- submitting

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Extra spec entry KEY=VALUE (VALUE parsed as JSON if it can be)."),
]
SpecFileOpt = Annotated[
    Path | None, typer.Option("--spec-file", help="JSON file with spec entries (merged first).")
]
SeedOpt = Annotated[int, typer.Option(help="Seed for every random choice of the job.")]
FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow",
        help="Show progress while waiting: a bar on a terminal, else one line per event.",
    ),
]
DetachOpt = Annotated[
    bool, typer.Option("--detach", help="Queue the job and return its id without waiting.")
]
OutputOpt = Annotated[
    str | None, typer.Option("--output", help="Model that receives the new version.")
]
DatasetOpt = Annotated[str | None, typer.Option(help="Dataset reference (name, name:3).")]
ModelOpt = Annotated[
    str, typer.Option("--model", help="Version to work on (name, name:3, name@alias).")
]


def build_spec(
    named: dict[str, Any], sets: list[str] | None, spec_file: Path | None
) -> dict[str, Any]:
    """--spec-file, then the named options, then --set KEY=VALUE (last wins)."""
    spec: dict[str, Any] = {}
    if spec_file is not None:
        loaded = json.loads(spec_file.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise InvalidRequestError(f"{spec_file} must hold a JSON object", param="spec")
        spec.update(loaded)
    spec.update({k: v for k, v in named.items() if v is not None})
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"--set expects KEY=VALUE, got {item!r}", param="set")
        try:
            spec[key] = json.loads(raw)
        except json.JSONDecodeError:
            spec[key] = raw
    return spec


def train(
    ctx: typer.Context,
    base: Annotated[str | None, typer.Option(help="Model to fine-tune (name, name:3).")] = None,
    dataset: DatasetOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    output: OutputOpt = None,
    sets: SetOpt = None,
    spec_file: SpecFileOpt = None,
    seed: SeedOpt = 0,
    follow: FollowOpt = False,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune BASE on DATASET; the result is a new version with its lineage.

    The version goes to --output, else to BASE's model when the task is unchanged,
    else to a model named BASE-train. A new model's first version is its production.
    """
    named = {
        "base": base,
        "dataset": dataset,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "output": output,
    }
    spec = build_spec(named, sets, spec_file)
    _run_job(ctx, "train", spec, seed=seed, follow=follow, detach=detach, as_json=as_json)


def evaluate(
    ctx: typer.Context,
    model: ModelOpt,
    dataset: DatasetOpt = None,
    split: Annotated[str | None, typer.Option(help="Split to score (default: test).")] = None,
    sets: SetOpt = None,
    spec_file: SpecFileOpt = None,
    seed: SeedOpt = 0,
    follow: FollowOpt = False,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Score MODEL on DATASET; the metrics are recorded on MODEL's version."""
    spec = build_spec({"model": model, "dataset": dataset, "split": split}, sets, spec_file)
    _run_job(ctx, "evaluate", spec, seed=seed, follow=follow, detach=detach, as_json=as_json)


def _model_job(kind: str, summary: str) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        model: ModelOpt,
        dataset: DatasetOpt = None,
        output: OutputOpt = None,
        sets: SetOpt = None,
        spec_file: SpecFileOpt = None,
        seed: SeedOpt = 0,
        follow: FollowOpt = False,
        detach: DetachOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        spec = build_spec({"model": model, "dataset": dataset, "output": output}, sets, spec_file)
        _run_job(ctx, kind, spec, seed=seed, follow=follow, detach=detach, as_json=as_json)

    command.__doc__ = summary
    command.__name__ = kind
    return command


def distill(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option(help="The model to learn from.")],
    student: Annotated[str | None, typer.Option(help="The smaller model to train.")] = None,
    dataset: DatasetOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    output: OutputOpt = None,
    sets: SetOpt = None,
    spec_file: SpecFileOpt = None,
    seed: SeedOpt = 0,
    follow: FollowOpt = False,
    detach: DetachOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train STUDENT to mimic TEACHER on DATASET."""
    named = {
        "teacher": teacher,
        "student": student,
        "dataset": dataset,
        "epochs": epochs,
        "output": output,
    }
    spec = build_spec(named, sets, spec_file)
    _run_job(ctx, "distill", spec, seed=seed, follow=follow, detach=detach, as_json=as_json)


# --------------------------------------------------------------- promotion


@cli_errors
def promote_command(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The version to promote: name:3")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    require: Annotated[
        list[str] | None,
        typer.Option(help="Gate such as 'accuracy>=0.9' (repeatable); all must hold."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Recorded in the alias history.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Move ALIAS to REF only if every --require gate holds against its metrics.

    \b
    Examples:
      maas models promote reviews-clf:2 --alias production \\
          --require "accuracy>=0.9" --require "latency_ms_bs1<=20"
    """
    with jobs_from(ctx) as backend:
        try:
            result = backend.promote(ref, alias, require or [], reason)
        except GatesFailedError as exc:
            for gate in exc.results:
                mark = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
                err.print(f"{mark} {gate.gate} (is {gate.value:g})")
            raise fail(exc.message) from None
    if as_json:
        print_json(result)
        return
    for gate in result.gates:
        err.print(f"[green]pass[/green] {gate.gate} (is {gate.value:g})")
    out.print(f"{result.model}@{result.alias} → {result.version.ref}")


# Shown under "Examples:" in each job command's --help (tests/cli/test_help_examples.py runs
# them): the walkthrough of docs/jobs.md, one command at a time.
_KIND_EXAMPLES = {
    "train": [
        "maas train --base minilm --dataset reviews --epochs 2 --output reviews-clf",
        "maas train --base minilm --dataset reviews --set learning_rate=5e-4 --follow",
    ],
    "evaluate": [
        "maas evaluate --model reviews-clf:1 --dataset reviews",
        "maas evaluate --model reviews-clf@production --dataset reviews \\",
        "    --split validation",
    ],
    "quantize": [
        "maas quantize --model reviews-clf:1 --dataset reviews \\",
        "    --set method=onnx-int8",
    ],
    "prune": ["maas prune --model reviews-clf:1 --dataset reviews --set ffn_fraction=0.5"],
    "export": ["maas export --model reviews-clf:1 --set opset=17"],
    "distill": ["maas distill --teacher reviews-clf:1 --student minilm --dataset reviews"],
}


def _help(summary: str, kind: str) -> str:
    """The command's summary, every spec key it takes (--set KEY=VALUE), then examples."""
    keys = describe_keys(kind)
    examples = "".join(f"\n  {line}" for line in _KIND_EXAMPLES[kind])
    return (
        f"{summary}\n\n\b\nSpec keys (named options or --set KEY=VALUE):\n{keys}"
        f"\n\n\b\nExamples:{examples}"
    )


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Add the job commands to the root app and ``promote`` to ``maas models``."""
    for kind, command in (("train", train), ("evaluate", evaluate)):
        app.command(kind, help=_help(command.__doc__ or "", kind))(cli_errors(command))
    for kind, summary in (
        ("quantize", "Quantize MODEL to int8 (e.g. --set method=onnx-int8); a new version."),
        ("prune", "Prune MODEL (e.g. --set ffn_fraction=0.5); a new version."),
        ("export", "Export MODEL to ONNX (e.g. --set opset=17); a new version."),
    ):
        app.command(kind, help=_help(summary, kind))(cli_errors(_model_job(kind, summary)))
    app.command("distill", help=_help(distill.__doc__ or "", "distill"))(cli_errors(distill))
    models_app.command("promote")(promote_command)
