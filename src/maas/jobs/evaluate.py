"""The ``evaluate`` job: quality, calibration, slices, latency and size of one version.

Spec keys: ``model`` (the version to evaluate), ``dataset`` (a dataset ref),
``split`` (default ``test``), ``slice_column`` (a column name or a list; default:
the dataset's ``slice_columns``), ``slice_gap_threshold`` (default 0.1),
``min_slice_size`` (slices with fewer examples are reported but left out of
the gap; default 5), ``batch_size`` (default 32), ``latency_runs`` (default 10).

The job does not create a version (``new_version=False``): the worker stores
the flat metrics on the evaluated version, where promotion gates read them
(``accuracy``, ``macro_f1``, ``ece``, ``latency_ms_bs1``, ``latency_ms_bs32``,
``size_bytes``, ``slice_gap``, ``slice_gap_flagged``).

What the other jobs share for measuring a model is in its own modules: the dataset
reader (:mod:`maas.jobs.dataset_files`), the predictors (:mod:`maas.jobs.predictors`)
and the metric functions (:mod:`maas.jobs.metrics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maas.errors import InvalidRequestError
from maas.jobs.base import JobCancelled, JobContext, JobOutput
from maas.jobs.dataset_files import Dataset, inputs, read_dataset, read_split, targets
from maas.jobs.metrics import (
    ECE_BINS,
    classification_metrics,
    dir_size,
    measure_latency_ms,
    slice_metrics,
)
from maas.jobs.predictors import predict_dataset_proba
from maas.jobs.reports import BarChart, Heatmap, Paragraph, Section, Table, render_report
from maas.jobs.served import TASKS, ServedPredictor

LATENCY_BATCH_SIZES = (1, 32)


def run(ctx: JobContext) -> JobOutput:
    spec = ctx.spec
    ref = str(spec.get("model") or "")
    if not ref:
        raise InvalidRequestError("evaluate needs 'model' (the version to evaluate)", param="model")
    if not spec.get("dataset"):
        raise InvalidRequestError("evaluate needs 'dataset'", param="dataset")
    dataset = read_dataset(ctx.dataset_path(str(spec["dataset"])))
    split = str(spec.get("split", "test"))
    records = read_split(dataset, split)
    if not records:
        raise InvalidRequestError(f"the {split!r} split is empty", param="split")
    model_dir = ctx.model_path(ref)
    # Scored by the runtime the server loads for this version (jobs/served.py).
    version = ctx.model_info(ref) if ctx.registry is not None else None
    with ServedPredictor(model_dir, TASKS[dataset.kind], version=version) as predictor:
        return _evaluate(ctx, ref, predictor, dataset, split, records, model_dir)


def _evaluate(
    ctx: JobContext,
    ref: str,
    predictor: ServedPredictor,
    dataset: Dataset,
    split: str,
    records: list[dict[str, Any]],
    model_dir: Path,
) -> JobOutput:
    spec = ctx.spec
    threshold = float(spec.get("slice_gap_threshold", 0.1))
    min_slice = int(spec.get("min_slice_size", 5))
    batch_size = int(spec.get("batch_size", 32))
    runs = int(spec.get("latency_runs", 10))
    columns = _slice_columns(spec.get("slice_column"), dataset)
    fmt = predictor.format
    ctx.log(f"evaluating {ref} ({fmt}) on {len(records)} {split} examples")

    def on_batch(step: int, total: int) -> None:
        if ctx.cancelled():
            raise JobCancelled()
        ctx.progress(step, total)

    y_true = targets(records, dataset)
    items = inputs(records, dataset)
    probs = predict_dataset_proba(
        predictor, items, dataset.label_names, batch_size=batch_size, on_batch=on_batch
    )
    quality = classification_metrics(y_true, probs, dataset.label_names)
    y_pred = probs.argmax(axis=1)
    slices = {
        column: slice_metrics(
            y_true,
            y_pred,
            [r.get(column) for r in records],
            threshold=threshold,
            min_size=min_slice,
        )
        for column in columns
    }
    latency = {
        f"bs{bs}": measure_latency_ms(predictor, items, bs, runs) for bs in LATENCY_BATCH_SIZES
    }
    size = dir_size(model_dir)
    gap = max((s["gap"] for s in slices.values()), default=0.0)
    flagged = any(s["flagged"] for s in slices.values())
    metrics: dict[str, Any] = {
        "accuracy": quality["accuracy"],
        "macro_f1": quality["macro_f1"],
        "ece": quality["ece"],
        "latency_ms_bs1": latency["bs1"],
        "latency_ms_bs32": latency["bs32"],
        "size_bytes": size,
        "slice_gap": gap,
        "slice_gap_flagged": flagged,
    }
    report = {
        "model": ref,
        "format": fmt,
        "dataset": str(spec["dataset"]),
        "split": split,
        "metrics": metrics,
        "quality": quality,
        "slices": slices,
        "slice_gap_threshold": threshold,
        "latency_ms": latency,
        "size_bytes": size,
    }
    if flagged:
        ctx.log(f"slice gap {gap:.3f} is above the threshold {threshold}")
    return JobOutput(
        task=dataset.task,
        format=fmt,
        metrics=metrics,
        params={"dataset": str(spec["dataset"]), "split": split, "slice_columns": columns},
        report=report,
        report_html=render_report(f"Evaluation of {ref}", evaluation_sections(report, dataset)),
        parent=ref,
        description=f"evaluation on {spec['dataset']} ({split})",
        new_version=False,
    )


def _slice_columns(value: Any, dataset: Dataset) -> list[str]:
    if value is None:
        return list(dataset.slice_columns)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequestError("slice_column must be a column name or a list of names")


def evaluation_sections(report: dict[str, Any], dataset: Dataset) -> list[Section]:
    """Report sections for one evaluation (also used by train for its test split)."""
    quality = report["quality"]
    metrics = report["metrics"]
    sections = [
        Section(
            "Summary",
            [
                Paragraph(
                    f"{report['model']} ({report['format']}) on {report['dataset']}, "
                    f"split {report['split']}, {quality['n']} examples."
                ),
                Table(["metric", "value"], [[k, v] for k, v in metrics.items()]),
            ],
        ),
        Section(
            "Per class",
            [
                Table(
                    ["label", "precision", "recall", "f1", "support"],
                    [
                        [name, c["precision"], c["recall"], c["f1"], c["support"]]
                        for name, c in quality["per_class"].items()
                    ],
                )
            ],
        ),
        Section("Confusion matrix", [Heatmap(dataset.label_names, quality["confusion_matrix"])]),
        Section(
            "Calibration",
            [Paragraph(f"Expected calibration error over {ECE_BINS} bins: {quality['ece']:.4f}.")],
        ),
    ]
    for column, result in report.get("slices", {}).items():
        accuracies = {value: s["accuracy"] for value, s in result["slices"].items()}
        blocks: list[Any] = [
            BarChart(
                accuracies,
                value_label="accuracy",
                highlight=[result["worst"]] if result["flagged"] and result["worst"] else [],
            ),
            Table(
                ["value", "n", "accuracy"],
                [[v, s["n"], s["accuracy"]] for v, s in result["slices"].items()],
            ),
            Paragraph(
                f"Best-worst accuracy gap {result['gap']:.3f} "
                f"(threshold {report['slice_gap_threshold']}).",
                flagged=result["flagged"],
            ),
        ]
        sections.append(Section(f"Slices by {column}", blocks))
    if "latency_ms" in report:
        sections.append(
            Section(
                "Latency and size",
                [
                    Table(
                        ["measure", "value"],
                        [
                            *[
                                [f"p50 latency ms ({k})", v]
                                for k, v in report["latency_ms"].items()
                            ],
                            ["size bytes", report["size_bytes"]],
                        ],
                    )
                ],
            )
        )
    return sections
