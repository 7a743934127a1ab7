"""The job subprocess: ``python -m maas.jobs.worker <workdir>``.

Reads ``spec.json``, runs the kind's body (:data:`maas.jobs.base.KIND_TARGETS`),
publishes its output to the registry (a new version with lineage, or metrics on
the evaluated version), writes ``report.json``/``report.html`` and finally
``result.json``, which is how the runner learns the outcome. Exit codes: 0
succeeded, 1 failed, 3 cancelled; anything else is a crash the runner
describes from the exit status and the last lines of output.

SIGTERM (a cancel) sets ``ctx.cancelled()`` and, while the body runs, raises
:class:`~maas.jobs.base.JobCancelled` in it; during publishing it only sets the
flag, so a version is either fully pushed or not at all.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from maas.config import Settings
from maas.errors import InvalidRequestError, MaasError
from maas.jobs.base import (
    OUTPUT_DIR,
    REPORT_HTML,
    REPORT_JSON,
    RESULT_FILE,
    SPEC_FILE,
    JobCancelled,
    JobContext,
    JobOutput,
    target_of,
)
from maas.registry.refs import MODEL_NAME_RE, validate_model_name
from maas.registry.store import Registry

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3


def load_target(kind: str) -> Callable[[JobContext], JobOutput]:
    """Import the body of ``kind`` (lazily: a kind whose module is missing fails clearly)."""
    target = target_of(kind)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise MaasError(
                f"job kind {kind!r} is not available: module {module_name} is not installed"
            ) from exc
        raise
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise MaasError(f"job kind {kind!r} is not available: {target} is not a function")
    body: Callable[[JobContext], JobOutput] = fn
    return body


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)  # bodies that use the legacy global RNG get it seeded too
    torch = sys.modules.get("torch")  # only when the body imported it: torch is slow to load
    if torch is not None:
        torch.manual_seed(seed)


def output_name(ctx: JobContext, output: JobOutput) -> str:
    """The model that receives the new version (see the spec keys in maas.jobs.base)."""
    chosen = ctx.spec.get("output")
    if chosen:
        return validate_model_name(str(chosen))
    if output.parent:
        parent = ctx.model_info(output.parent)
        if parent.task == output.task:
            return parent.model
        derived = f"{parent.model}-{ctx.kind}"[:64]
        if MODEL_NAME_RE.fullmatch(derived):
            return derived
    return f"{ctx.kind}-{ctx.job_id[:8]}"


def publish(ctx: JobContext, registry: Registry, output: JobOutput, created_by: str | None) -> str:
    """Store the reports, then the version (or the metrics of an evaluation); its reference."""
    if not isinstance(output, JobOutput):
        raise MaasError(f"the {ctx.kind} job returned {type(output).__name__}, not a JobOutput")
    (ctx.workdir / REPORT_JSON).write_text(json.dumps(output.report, indent=2, default=str))
    if output.report_html is not None:
        (ctx.workdir / REPORT_HTML).write_text(output.report_html, encoding="utf-8")
    if not output.new_version:
        if not output.parent:
            raise MaasError("an output with new_version=False must name the version in parent")
        info = registry.update_version(output.parent, metrics=output.metrics)
        ctx.log(f"recorded {len(output.metrics)} metric(s) on {info.ref}")
        return info.ref
    if not ctx.output_dir.is_dir() or not any(ctx.output_dir.iterdir()):
        raise MaasError(f"the {ctx.kind} job wrote no files to its output directory")
    name = output_name(ctx, output)
    ctx.log(f"pushing the output as a new version of {name}")
    info = registry.push(
        ctx.output_dir,
        name,
        task=output.task,
        description=output.description or str(ctx.spec.get("description", "")),
        params=output.params,
        metrics=output.metrics,
        parent=output.parent,
        job_id=ctx.job_id,
        created_by=created_by,
    )
    if info.format != output.format:
        ctx.log(f"note: the job declared format {output.format!r}; detected {info.format!r}")
    # The files now live in the blob store; the copy here would only double the disk use.
    shutil.rmtree(ctx.output_dir, ignore_errors=True)
    ctx.log(f"created {info.ref} ({info.digest})")
    return info.ref


def write_result(workdir: Path, result: dict[str, Any]) -> None:
    """Atomically: the runner must never read half a result."""
    tmp = workdir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, workdir / RESULT_FILE)


def describe(exc: BaseException) -> str:
    if isinstance(exc, MaasError):
        return exc.message
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run(workdir: Path) -> int:
    doc = json.loads((workdir / SPEC_FILE).read_text(encoding="utf-8"))
    settings = Settings()
    registry = Registry(settings, run_migrations=False)
    ctx = JobContext(
        job_id=str(doc["job_id"]),
        kind=str(doc["kind"]),
        workdir=workdir,
        output_dir=workdir / OUTPUT_DIR,
        spec=dict(doc.get("spec") or {}),
        seed=int(doc.get("seed", 0)),
        registry=registry,
    )
    in_body = False

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        ctx.request_cancel()
        if in_body:
            raise JobCancelled("cancelled")

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        ctx.log(f"job {ctx.job_id} ({ctx.kind}) started in pid {os.getpid()}, seed {ctx.seed}")
        body = load_target(ctx.kind)
        seed_everything(ctx.seed)
        in_body = True
        try:
            output = body(ctx)
        finally:
            in_body = False
        if ctx.cancelled():
            raise JobCancelled("cancelled")
        ref = publish(ctx, registry, output, doc.get("created_by"))
        write_result(workdir, {"status": "succeeded", "result_ref": ref})
        ctx.log("succeeded")
        return EXIT_OK
    except JobCancelled:
        ctx.log("cancelled")
        write_result(workdir, {"status": "cancelled"})
        return EXIT_CANCELLED
    except Exception as exc:
        ctx.log("failed:\n" + "".join(traceback.format_exception(exc)))
        write_result(workdir, {"status": "failed", "error": describe(exc)})
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        registry.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m maas.jobs.worker <job-workdir>", file=sys.stderr)
        return 2
    workdir = Path(args[0]).resolve()
    if not (workdir / SPEC_FILE).is_file():
        raise InvalidRequestError(f"{workdir} holds no {SPEC_FILE}")
    return run(workdir)


if __name__ == "__main__":
    sys.exit(main())
