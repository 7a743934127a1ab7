"""``maas datasets add|list|show``: import and inspect versioned datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from maas.cli.common import JsonOpt, cli_errors, fail
from maas.cli.job_backends import jobs_from
from maas.cli.output import err, human_bytes, out, print_json, table
from maas.jobs.dataset_prep import BUILTIN_SOURCES, DatasetOptions

datasets_app = typer.Typer(help="Import and inspect datasets.", no_args_is_help=True)


@datasets_app.command("add")
@cli_errors
def add_dataset(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="A .csv, .jsonl or .parquet file, an image folder (DIR/<label>/*.png), "
            "a tar/zip of one, or sklearn:digits."
        ),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    text_column: Annotated[str, typer.Option(help="Column with the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column with the label.")] = "label",
    label_map: Annotated[
        str | None, typer.Option(help='Rename labels: JSON such as {"0": "neg", "1": "pos"}.')
    ] = None,
    dedup: Annotated[bool, typer.Option(help="Drop exact duplicates.")] = True,
    min_chars: Annotated[int | None, typer.Option(help="Drop shorter texts.")] = None,
    max_chars: Annotated[int | None, typer.Option(help="Drop longer texts.")] = None,
    splits: Annotated[str, typer.Option(help="train,validation,test fractions.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    stratify: Annotated[bool, typer.Option(help="Keep label proportions per split.")] = True,
    slice_column: Annotated[
        list[str] | None, typer.Option(help="Extra column to keep (repeatable).")
    ] = None,
    max_records: Annotated[
        int | None, typer.Option(help="Keep a seeded sample of at most this many.")
    ] = None,
    description: str = "",
    as_json: JsonOpt = False,
) -> None:
    """Import SOURCE as the next version of dataset NAME.

    \b
    Examples:
      maas datasets add reviews.csv --name reviews --text-column review \\
          --label-column stars --label-map '{"0": "neg", "1": "pos"}'
      maas datasets add sklearn:digits --name digits --max-records 300
    """
    try:
        mapping = json.loads(label_map) if label_map else {}
        fractions = [float(part) for part in splits.split(",")]
    except ValueError as exc:
        raise fail(f"invalid option: {exc}") from None
    try:
        options = DatasetOptions(
            text_column=text_column,
            label_column=label_column,
            label_map=mapping,
            dedup=dedup,
            min_chars=min_chars,
            max_chars=max_chars,
            splits=tuple(fractions),
            seed=seed,
            stratify=stratify,
            slice_columns=slice_column or [],
            max_records=max_records,
        )
    except ValueError as exc:
        raise fail(f"invalid dataset options: {exc}") from None
    if source not in BUILTIN_SOURCES and not Path(source).exists():
        raise fail(f"{source} does not exist (built-in sources: {', '.join(BUILTIN_SOURCES)})")
    with jobs_from(ctx) as backend:
        info = backend.add_dataset(source, name, options, description)
    if as_json:
        print_json(info)
        return
    removed = info.preprocessing.get("removed", {})
    dropped = ", ".join(f"{k} {v}" for k, v in removed.items() if v) or "none"
    out.print(info.ref)
    err.print(
        f"{info.kind} dataset, labels {', '.join(info.label_names)}; splits "
        + ", ".join(f"{k} {v}" for k, v in info.splits.items())
        + f"; removed: {dropped}"
    )


@datasets_app.command("list")
@cli_errors
def datasets_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List datasets (newest version of each).

    \b
    Examples:
      maas datasets list
    """
    with jobs_from(ctx) as backend:
        items = backend.list_datasets()
    if as_json:
        print_json(items)
        return
    table(
        None,
        ["dataset", "kind", "labels", "train", "validation", "test", "size", "created"],
        [
            [
                d.ref,
                d.kind,
                len(d.label_names),
                d.splits.get("train"),
                d.splits.get("validation"),
                d.splits.get("test"),
                human_bytes(d.size_bytes),
                d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            ]
            for d in items
        ],
    )


@datasets_app.command("show")
@cli_errors
def datasets_show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name or name:3")],
    as_json: JsonOpt = False,
) -> None:
    """Show a dataset version: labels, splits, and the preprocessing applied.

    \b
    Examples:
      maas datasets show reviews
      maas datasets show reviews:1 --json
    """
    with jobs_from(ctx) as backend:
        info = backend.get_dataset(ref)
    if as_json:
        print_json(info)
        return
    out.print(f"[bold]{info.ref}[/bold]  {info.kind}  {human_bytes(info.size_bytes)}")
    out.print(f"digest: {info.digest}")
    out.print(f"labels: {', '.join(info.label_names)}")
    out.print("splits: " + ", ".join(f"{k} {v}" for k, v in info.splits.items()))
    out.print(f"source: {json.dumps(info.source)}")
    out.print(f"preprocessing: {json.dumps(info.preprocessing)}")
