"""``maas jobs|datasets ...``, ``maas train|evaluate|quantize|prune|distill|export`` and
``maas models promote``.

Local mode (no ``--url``) works on ``MAAS_HOME`` directly: a submitted job is
run by a job runner inside this command, which waits for it (``--detach``
leaves it queued for a server on the same home to run). With ``--url`` the
commands talk to a server; ``--follow`` then reads the job's event stream.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from maas.cli.common import cli_errors, fail, settings_from
from maas.cli.output import err, human_bytes, out, print_json, table
from maas.client.sync import raise_for_error
from maas.config import Settings
from maas.errors import InvalidRequestError, NotFoundError
from maas.jobs.datasets import (
    BUILTIN_SOURCES,
    DatasetInfo,
    DatasetOptions,
    get_dataset,
    import_dataset,
    list_datasets,
)
from maas.jobs.gates import GatesFailedError, PromotionResult, check_gates, promote
from maas.jobs.runner import JobInfo, JobRunner
from maas.jobs.specs import describe_keys
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry

jobs_app = typer.Typer(help="Follow and manage jobs (train, evaluate, ...).", no_args_is_help=True)
datasets_app = typer.Typer(help="Import and inspect datasets.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
EventHandler = Callable[[dict[str, Any]], None]


class JobsBackend(Protocol):
    def submit(self, kind: str, spec: dict[str, Any], seed: int) -> JobInfo: ...
    def get(self, job_id: str) -> JobInfo: ...
    def list_jobs(self, status: str | None, kind: str | None, limit: int) -> list[JobInfo]: ...
    def cancel(self, job_id: str) -> JobInfo: ...
    def log_text(self, job_id: str) -> str: ...
    def report(self, job_id: str) -> dict[str, Any] | None: ...
    def follow(self, job_id: str, on_event: EventHandler) -> JobInfo: ...
    def add_dataset(
        self, source: str, name: str, options: DatasetOptions, description: str
    ) -> DatasetInfo: ...
    def list_datasets(self) -> list[DatasetInfo]: ...
    def get_dataset(self, ref: str) -> DatasetInfo: ...
    def promote(self, ref: str, alias: str, require: list[str], reason: str) -> PromotionResult: ...
    def close(self) -> None: ...


class LocalJobs:
    """Runs jobs from this process on ``MAAS_HOME``."""

    def __init__(self, settings: Settings) -> None:
        import getpass

        self.registry = Registry(settings)
        self.runner = JobRunner(self.registry, settings)
        self.actor = f"local:{getpass.getuser()}"

    def close(self) -> None:
        self.runner.shutdown()
        self.registry.close()

    def submit(self, kind: str, spec: dict[str, Any], seed: int) -> JobInfo:
        return self.runner.submit(kind, spec, seed=seed, created_by=self.actor)

    def get(self, job_id: str) -> JobInfo:
        return self.runner.get(job_id)

    def list_jobs(self, status: str | None, kind: str | None, limit: int) -> list[JobInfo]:
        return self.runner.list_jobs(status=status, kind=kind, limit=limit)

    def cancel(self, job_id: str) -> JobInfo:
        return self.runner.cancel(job_id, actor=self.actor)

    def log_text(self, job_id: str) -> str:
        return self.runner.log_text(job_id)

    def report(self, job_id: str) -> dict[str, Any] | None:
        try:
            path = self.runner.report_path(job_id, html=False)
        except NotFoundError:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc if isinstance(doc, dict) else None

    def follow(self, job_id: str, on_event: EventHandler) -> JobInfo:
        self.runner.recover_orphans(at_start=True)
        return self.runner.wait(job_id, on_event=on_event, drive=True)

    def add_dataset(
        self, source: str, name: str, options: DatasetOptions, description: str
    ) -> DatasetInfo:
        return import_dataset(
            self.registry,
            source if source in BUILTIN_SOURCES else Path(source),
            name,
            options=options,
            description=description,
            created_by=self.actor,
        )

    def list_datasets(self) -> list[DatasetInfo]:
        return list_datasets(self.registry)

    def get_dataset(self, ref: str) -> DatasetInfo:
        return get_dataset(self.registry, ref)

    def promote(self, ref: str, alias: str, require: list[str], reason: str) -> PromotionResult:
        return promote(self.registry, ref, alias, require, actor=self.actor, reason=reason)


def _selector(ref: str) -> tuple[str, str]:
    parsed = ModelRef.parse(ref)
    selector = str(parsed.version) if parsed.version is not None else (parsed.alias or "production")
    return parsed.name, selector


class RemoteJobs:
    """The same operations over the management API of a server."""

    def __init__(self, url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60.0)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, "/admin/v1" + path, **kwargs)
        raise_for_error(response)
        return response.json()

    def submit(self, kind: str, spec: dict[str, Any], seed: int) -> JobInfo:
        body = {"kind": kind, "spec": spec, "seed": seed}
        return JobInfo.model_validate(self._call("POST", "/jobs", json=body))

    def get(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._call("GET", f"/jobs/{job_id}"))

    def list_jobs(self, status: str | None, kind: str | None, limit: int) -> list[JobInfo]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if kind:
            params["kind"] = kind
        return [JobInfo.model_validate(j) for j in self._call("GET", "/jobs", params=params)]

    def cancel(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate(self._call("DELETE", f"/jobs/{job_id}"))

    def log_text(self, job_id: str) -> str:
        response = self.http.get(f"/admin/v1/jobs/{job_id}/log")
        raise_for_error(response)
        return response.text

    def report(self, job_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"/admin/v1/jobs/{job_id}/report.json")
        if response.status_code == 404:
            return None
        raise_for_error(response)
        doc = response.json()
        return doc if isinstance(doc, dict) else None

    def follow(self, job_id: str, on_event: EventHandler) -> JobInfo:
        """Read the Server-Sent Events stream to its ``end`` event."""
        path = f"/admin/v1/jobs/{job_id}/events"
        with self.http.stream("GET", path, timeout=httpx.Timeout(60.0, read=None)) as response:
            if not response.is_success:
                response.read()
                raise_for_error(response)
            event_type = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event_type = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.partition(":")[2])
                    if event_type == "end":
                        return JobInfo.model_validate(data)
                    on_event(data)
                elif not line:
                    event_type = "message"
        return self.get(job_id)  # the stream broke off: report where the job stands

    def add_dataset(
        self, source: str, name: str, options: DatasetOptions, description: str
    ) -> DatasetInfo:
        params: dict[str, Any] = {
            "name": name,
            "description": description,
            "text_column": options.text_column,
            "label_column": options.label_column,
            "label_map": json.dumps(options.label_map),
            "dedup": options.dedup,
            "splits": ",".join(str(f) for f in options.splits),
            "seed": options.seed,
            "stratify": options.stratify,
        }
        for key in ("min_chars", "max_chars", "max_records"):
            value = getattr(options, key)
            if value is not None:
                params[key] = value
        if options.slice_columns:
            params["slice_columns"] = ",".join(options.slice_columns)
        if source in BUILTIN_SOURCES:
            params["source"] = source
            return DatasetInfo.model_validate(self._call("POST", "/datasets", params=params))
        path = Path(source)
        if path.is_dir():
            raise InvalidRequestError(
                "to upload an image folder, pack it first: tar -cf images.tar -C DIR .",
                param="source",
            )
        params["filename"] = path.name
        with path.open("rb") as body:
            data = self._call(
                "POST",
                "/datasets",
                params=params,
                content=body,
                headers={"Content-Type": "application/octet-stream"},
                timeout=None,
            )
        return DatasetInfo.model_validate(data)

    def list_datasets(self) -> list[DatasetInfo]:
        return [DatasetInfo.model_validate(d) for d in self._call("GET", "/datasets")]

    def get_dataset(self, ref: str) -> DatasetInfo:
        parsed = ModelRef.parse(ref)
        params = {}
        if parsed.version is not None or parsed.alias is not None:
            params["version"] = str(parsed.version or parsed.alias)
        return DatasetInfo.model_validate(
            self._call("GET", f"/datasets/{parsed.name}", params=params)
        )

    def promote(self, ref: str, alias: str, require: list[str], reason: str) -> PromotionResult:
        name, selector = _selector(ref)
        body = {"alias": alias, "require": require, "reason": reason}
        response = self.http.post(f"/admin/v1/models/{name}/versions/{selector}/promote", json=body)
        if response.status_code == 409:
            message = response.json().get("error", {}).get("message", "promotion refused")
            # The refusal names the failing gates only; evaluate them all against the
            # version's metrics, so the listing matches local mode's pass/FAIL lines.
            version = self._call("GET", f"/models/{name}/versions/{selector}")
            results = check_gates(VersionInfo.model_validate(version), require)
            raise GatesFailedError(message, results)
        raise_for_error(response)
        return PromotionResult.model_validate(response.json())


def open_jobs(settings: Settings) -> JobsBackend:
    if settings.url:
        return RemoteJobs(settings.url, settings.api_key)
    return LocalJobs(settings)


@contextmanager
def jobs_from(ctx: typer.Context) -> Iterator[JobsBackend]:
    backend = open_jobs(settings_from(ctx))
    try:
        yield backend
    finally:
        backend.close()


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


def _follow(backend: JobsBackend, info: JobInfo, *, show_progress: bool) -> JobInfo:
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


def _finish(backend: JobsBackend, info: JobInfo, as_json: bool) -> None:
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
            info = _follow(backend, info, show_progress=follow)
        except KeyboardInterrupt:
            err.print(f"interrupted: cancelling job {info.id}")
            backend.cancel(info.id)
            raise typer.Exit(128 + signal.SIGINT) from None
        _finish(backend, info, as_json)


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
        info = _follow(backend, backend.get(job_id), show_progress=True)
        _finish(backend, info, as_json)


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


# ---------------------------------------------------------------- datasets


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
