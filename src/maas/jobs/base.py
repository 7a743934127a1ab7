"""The contract between the job runner and the job bodies (train, evaluate, ...).

A job body is a plain function ``fn(ctx: JobContext) -> JobOutput`` in a module
named by :data:`KIND_TARGETS`. It runs inside a worker subprocess
(``python -m maas.jobs.worker <workdir>``), never in the server process. It
reads its inputs through the context (registry versions, datasets), writes the
new version's files under ``ctx.output_dir`` and returns a :class:`JobOutput`;
the worker then publishes that output to the registry. A body reports progress
with ``ctx.progress`` and may poll ``ctx.cancelled()`` between steps to stop
early (a cancelled worker is killed after a grace period anyway).

Spec keys the worker itself reads (every kind): ``output`` (name of the model
that receives the new version; default: the parent's model when the task is
unchanged, else ``<parent-name>-<kind>``) and ``description``. Every key a
kind accepts is declared in :data:`maas.jobs.specs.SPEC_KEYS`, and the runner
refuses any other at submit time: a body that reads a new key declares it there.

To call a body directly (tests, notebooks) build the context yourself and pass
``registry=``::

    ctx = JobContext(job_id="t1", kind="train", workdir=tmp, output_dir=tmp / "output",
                     spec={...}, seed=0, registry=registry)
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maas.errors import InvalidRequestError, MaasError
from maas.registry.formats import DATASET_TASK

if TYPE_CHECKING:
    from maas.registry.schemas import VersionInfo
    from maas.registry.store import Registry

JOB_KINDS = ("train", "evaluate", "quantize", "prune", "distill", "export", "pipeline", "edge")

# "module:function" each kind runs; imported lazily by the worker.
KIND_TARGETS = {
    "train": "maas.jobs.train:run",
    "evaluate": "maas.jobs.evaluate:run",
    "quantize": "maas.jobs.optimize:quantize",
    "prune": "maas.jobs.prune:prune",
    "distill": "maas.jobs.distill:distill",
    "export": "maas.jobs.optimize:export",
    "pipeline": "maas.jobs.pipeline:run",
    "edge": "maas.jobs.edge:run",
}
# A job without ML that exercises the runner end to end (copies a version).
SELFTEST_KIND = "selftest"
SELFTEST_TARGET = "maas.jobs.selftest:run"

# Files of a job's working directory (MAAS_HOME/jobs/<id>/).
SPEC_FILE = "spec.json"
LOG_FILE = "log.txt"
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
STDERR_FILE = "stderr.txt"
CANCEL_FILE = "cancel"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
OUTPUT_DIR = "output"


class JobCancelled(BaseException):
    """Raised in a worker whose job was cancelled.

    A ``BaseException`` so that a job body's ``except Exception`` does not swallow it.
    """


def target_of(kind: str) -> str:
    """The ``module:function`` that runs ``kind`` (the fixed table plus ``selftest``)."""
    if kind == SELFTEST_KIND:
        return SELFTEST_TARGET
    try:
        return KIND_TARGETS[kind]
    except KeyError:
        raise InvalidRequestError(
            f"unknown job kind {kind!r}; expected one of: {', '.join(JOB_KINDS)}",
            param="kind",
        ) from None


@dataclass
class JobContext:
    """What a job body gets: its identity, parameters, folders and the registry."""

    job_id: str
    kind: str
    workdir: Path  # MAAS_HOME/jobs/<id>/ (log.txt, events.jsonl, spec.json, result.json)
    output_dir: Path  # workdir / "output": the new version's files go here
    spec: dict[str, Any]  # the job's parameters as submitted (kind-specific)
    seed: int
    registry: Registry | None = field(default=None, repr=False, compare=False)
    _cancel: threading.Event = field(
        default_factory=threading.Event, init=False, repr=False, compare=False
    )
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    # ----------------------------------------------------------- reporting

    def progress(self, step: int, total: int, **values: float) -> None:
        """Append a progress event to events.jsonl (flushed, so followers see it now)."""
        event: dict[str, Any] = {"type": "progress", "step": step, "total": total}
        event.update(values)
        event["ts"] = time.time()
        self._append(self.workdir / EVENTS_FILE, json.dumps(event, default=float) + "\n")

    def log(self, message: str) -> None:
        """Append a line to log.txt (flushed)."""
        stamp = time.strftime("%H:%M:%S")
        lines = str(message).rstrip("\n").splitlines() or [""]
        self._append(self.workdir / LOG_FILE, "".join(f"{stamp} {line}\n" for line in lines))

    def _append(self, path: Path, text: str) -> None:
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(text)
                f.flush()

    # -------------------------------------------------------------- inputs

    def _require_registry(self) -> Registry:
        if self.registry is None:
            raise MaasError("this JobContext has no registry; pass registry= when building it")
        return self.registry

    def model_path(self, ref: str) -> Path:
        """Materialized directory of a registry version ("name", "name:3", "name@alias")."""
        return self._require_registry().materialize(ref)

    def model_info(self, ref: str) -> VersionInfo:
        return self._require_registry().get_version(ref)

    def dataset_path(self, ref: str) -> Path:
        """Materialized dataset directory (dataset.json + train/validation/test.jsonl)."""
        registry = self._require_registry()
        info = registry.get_version(ref)
        if info.task != DATASET_TASK:
            raise InvalidRequestError(
                f"{ref} is a model (task {info.task}), not a dataset", param="dataset"
            )
        return registry.materialize(info.ref)

    # -------------------------------------------------------- cancellation

    def cancelled(self) -> bool:
        """True once cancellation was requested (poll between steps to stop cleanly)."""
        return self._cancel.is_set() or (self.workdir / CANCEL_FILE).exists()

    def request_cancel(self) -> None:
        """Mark the job cancelled (the worker calls this from its SIGTERM handler)."""
        self._cancel.set()


@dataclass
class JobOutput:
    """What a job body returns; the worker publishes it."""

    task: str  # task of the new version
    format: str  # "hf" | "onnx"
    metrics: dict[str, Any]  # stored on the new version (and on the evaluated one)
    params: dict[str, Any]  # hyperparameters etc.
    report: dict[str, Any]  # JSON-serialisable; stored as report.json
    report_html: str | None  # a self-contained HTML page; stored as report.html
    parent: str | None  # ref of the version this derives from (lineage)
    description: str = ""
    new_version: bool = True  # False for evaluate: annotate `parent` with `metrics`
