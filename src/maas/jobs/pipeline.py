"""The ``pipeline`` job: retrain a model on its newest data and roll the result out safely.

One job, its stages in order, each logged and reported:

1. **data**: the dataset's newest ready version (or the exact one named);
2. **train** from the model's ``production`` version (or ``base``): a new version
   of the model whose lineage names its parent and this job;
3. **evaluate** the new version on the dataset (with slices), its metrics stored on it;
4. **gates**: every gate must hold on those metrics, else the job fails naming each
   failing gate and nothing is rolled out (the version stays, unaliased);
5. **rollout**: a canary rollout of the new version against production
   (``registry.rollouts``), which the servers' controllers then judge on live traffic.

Train and evaluate run the same bodies as the ``train`` and ``evaluate`` jobs, in this
job's process and working directory, so a pipeline's version is exactly what a train
job would have made. A schedule (``jobs/schedules.py``) starts this job; so can anyone
with the ``deploy`` scope (``POST /admin/v1/jobs`` with kind ``pipeline``).
"""

from __future__ import annotations

import json
from typing import Any

from maas.errors import InvalidRequestError, MaasError
from maas.jobs.base import SPEC_FILE, JobCancelled, JobContext, JobOutput
from maas.jobs.gates import Gate, check_gates
from maas.jobs.specs import SPEC_KEYS
from maas.registry.refs import DEFAULT_ALIAS, ModelRef
from maas.registry.rollout_plan import parse_plan
from maas.registry.rollouts import start_rollout
from maas.registry.store import Registry

_TRAIN_KEYS = {k for k in SPEC_KEYS["train"] if k not in ("base", "model", "dataset", "output")}
_EVALUATE_KEYS = ("split", "slice_column", "slice_gap_threshold", "min_slice_size")


def check_spec(spec: dict[str, Any]) -> None:
    """What the types in ``SPEC_KEYS`` cannot say: gates parse, the rollout plan holds."""
    for text in _gates(spec):
        try:
            Gate.parse(text)
        except InvalidRequestError as exc:
            raise InvalidRequestError(exc.message, param="gates") from exc
    rollout = spec.get("rollout") or {}
    if "candidate" in rollout:
        raise InvalidRequestError(
            "rollout.candidate is the version the pipeline trains; leave it out", param="rollout"
        )
    parse_plan(rollout)


def run(ctx: JobContext) -> JobOutput:
    # Imported here, not at the top: a server imports this module to check a schedule's
    # spec, and the stages bring the ML libraries.
    from maas.jobs import evaluate, train
    from maas.jobs.worker import publish

    spec = ctx.spec
    registry = _registry(ctx)
    check_spec(spec)
    model = str(spec.get("model") or "")
    if not model or not spec.get("dataset"):
        raise InvalidRequestError("a pipeline needs 'model' and 'dataset'", param="model")
    created_by = _created_by(ctx)

    dataset = _newest(registry, str(spec["dataset"]))
    base = registry.get_version(str(spec.get("base") or f"{model}@{DEFAULT_ALIAS}")).ref
    ctx.log(f"[1/5] data: {dataset}; training from {base}")

    stage = _stage(ctx, "train", {"base": base, "dataset": dataset, "output": model})
    stage.spec.update({k: v for k, v in spec.items() if k in _TRAIN_KEYS})
    ctx.log("[2/5] train")
    candidate = publish(stage, registry, train.run(stage), created_by)
    _check_cancel(ctx)

    stage = _stage(ctx, "evaluate", {"model": candidate, "dataset": dataset})
    stage.spec.update({k: spec[k] for k in _EVALUATE_KEYS if k in spec})
    ctx.log(f"[3/5] evaluate {candidate} on {dataset}")
    evaluation = evaluate.run(stage)
    publish(stage, registry, evaluation, created_by)
    _check_cancel(ctx)

    version = registry.get_version(candidate)
    results = check_gates(version, _gates(spec))
    failing = [r for r in results if not r.passed]
    ctx.log(f"[4/5] gates: {len(results) - len(failing)} of {len(results)} hold")
    if failing:
        reasons = "; ".join(f"{r.gate} (got {r.value:g})" for r in failing)
        raise MaasError(f"promotion gates failed for {candidate}: {reasons}; not rolled out")

    plan = {**(spec.get("rollout") or {}), "candidate": version.version}
    rollout = start_rollout(registry.db, model, plan, actor=created_by, origin=f"job:{ctx.job_id}")
    ctx.log(
        f"[5/5] rollout {rollout.id}: {candidate} against {model}:{rollout.baseline}, "
        f"steps {list(rollout.plan.steps)}"
    )
    report = {
        "dataset": dataset,
        "base": base,
        "candidate": candidate,
        "metrics": evaluation.metrics,
        "gates": [r.model_dump() for r in results],
        "rollout": rollout.to_json(),
        "schedule": spec.get("schedule"),
        "scheduled_for": spec.get("scheduled_for"),
    }
    return JobOutput(
        task=version.task,
        format=version.format,
        metrics=evaluation.metrics,
        params={"dataset": dataset, "base": base},
        report=report,
        report_html=evaluation.report_html,
        parent=candidate,
        description=f"pipeline: {base} retrained on {dataset}",
        new_version=False,
    )


def _gates(spec: dict[str, Any]) -> list[str]:
    gates = spec.get("gates") or []
    return [gates] if isinstance(gates, str) else list(gates)


def _registry(ctx: JobContext) -> Registry:
    if ctx.registry is None:
        raise MaasError("a pipeline needs the registry in its JobContext")
    return ctx.registry


def _newest(registry: Registry, dataset: str) -> str:
    """``name:N`` of the dataset's newest ready version, unless a version is named."""
    ref = ModelRef.parse(dataset)
    if ref.version is not None or ref.alias is not None:
        return registry.get_version(dataset).ref
    ready = [v for v in registry.list_versions(dataset) if v.status == "ready"]
    if not ready:
        raise InvalidRequestError(f"dataset {dataset!r} has no ready version", param="dataset")
    return max(ready, key=lambda v: v.version).ref


def _stage(ctx: JobContext, kind: str, spec: dict[str, Any]) -> JobContext:
    """A context for one stage: this job's id, folders and registry, the stage's spec."""
    stage = JobContext(
        job_id=ctx.job_id,
        kind=kind,
        workdir=ctx.workdir,
        output_dir=ctx.output_dir,
        spec=spec,
        seed=ctx.seed,
        registry=ctx.registry,
    )
    if ctx.cancelled():
        stage.request_cancel()
    return stage


def _check_cancel(ctx: JobContext) -> None:
    if ctx.cancelled():
        raise JobCancelled("cancelled")


def _created_by(ctx: JobContext) -> str | None:
    try:
        doc = json.loads((ctx.workdir / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = doc.get("created_by")
    return str(value) if value else None
