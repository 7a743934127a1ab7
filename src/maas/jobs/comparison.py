"""How an optimisation job's candidate compares with its parent, and the report it makes.

Size (weight files and whole version), end-to-end p50 latency at batch 1 and 32, and,
when the job has a ``dataset``, accuracy and macro-F1 on its ``split`` with the delta;
top-label agreement and the largest probability difference measure how far the outputs
moved even where accuracy hides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError
from maas.jobs.base import JobContext, JobOutput
from maas.jobs.dataset_files import Dataset, has_split, read_dataset, read_split, targets
from maas.jobs.metrics import classification_metrics, measure_latency_ms
from maas.jobs.onnx_export import SAMPLE_TEXTS, WEIGHT_SUFFIXES
from maas.jobs.predictors import Predictor, predict_dataset_proba
from maas.jobs.reports import Paragraph, Section, Table, render_report


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files (safetensors, ONNX graph and its data) of a version."""
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    )


def eval_records(ctx: JobContext) -> tuple[Dataset | None, list[dict[str, Any]]]:
    ref = ctx.spec.get("dataset")
    if not ref:
        return None, []
    dataset = read_dataset(ctx.dataset_path(str(ref)))
    if dataset.kind != "text":
        raise InvalidRequestError("optimisation jobs take text datasets", param="dataset")
    split = str(ctx.spec.get("split", "test"))
    return dataset, read_split(dataset, split) if has_split(dataset, split) else []


def sample_texts(records: Sequence[dict[str, Any]]) -> list[str]:
    texts = [str(r["text"]) for r in records[:16]]
    return texts or list(SAMPLE_TEXTS)


# ------------------------------------------------------------------------- comparison


def compare(
    parent: Predictor,
    child: Predictor,
    *,
    parent_bytes: tuple[int, int],
    child_bytes: tuple[int, int],
    dataset: Dataset | None,
    records: Sequence[dict[str, Any]],
    runs: int,
) -> dict[str, Any]:
    """Side-by-side numbers; ``*_bytes`` are (weight files, whole version).

    Besides accuracy (with a dataset), ``agreement`` (share of identical top
    labels) and ``max_prob_diff`` measure how far the candidate's outputs moved
    from the parent's on the same texts: on an easy dataset accuracy can hide it.
    """
    texts = [str(r["text"]) for r in records] or list(SAMPLE_TEXTS)
    labels = dataset.label_names if dataset is not None and records else parent.labels
    sides: dict[str, dict[str, Any]] = {}
    probs: dict[str, np.ndarray] = {}
    for name, predictor, (weights, total) in (
        ("parent", parent, parent_bytes),
        ("candidate", child, child_bytes),
    ):
        side: dict[str, Any] = {
            "weights_bytes": weights,
            "size_bytes": total,
            "latency_ms_bs1": measure_latency_ms(predictor, texts, 1, runs),
            "latency_ms_bs32": measure_latency_ms(predictor, texts, 32, runs),
        }
        probs[name] = predict_dataset_proba(predictor, texts, labels)  # (n, labels)
        if dataset is not None and records:
            quality = classification_metrics(targets(records, dataset), probs[name], labels)
            side.update(accuracy=quality["accuracy"], macro_f1=quality["macro_f1"])
        sides[name] = side
    p, c = sides["parent"], sides["candidate"]
    out: dict[str, Any] = {
        **sides,
        "size_ratio": p["weights_bytes"] / max(1, c["weights_bytes"]),
        "speedup_bs1": p["latency_ms_bs1"] / max(1e-9, c["latency_ms_bs1"]),
        "speedup_bs32": p["latency_ms_bs32"] / max(1e-9, c["latency_ms_bs32"]),
        "agreement": float(
            (probs["parent"].argmax(axis=1) == probs["candidate"].argmax(axis=1)).mean()
        ),
        "max_prob_diff": float(np.abs(probs["parent"] - probs["candidate"]).max()),
    }
    if "accuracy" in c:
        out["accuracy_delta"] = c["accuracy"] - p["accuracy"]
        out["macro_f1_delta"] = c["macro_f1"] - p["macro_f1"]
    return out


def comparison_metrics(comparison: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The candidate's own numbers plus the ratios/deltas, flat (for the version and gates)."""
    keys = (
        "size_ratio",
        "speedup_bs1",
        "speedup_bs32",
        "agreement",
        "max_prob_diff",
        "accuracy_delta",
        "macro_f1_delta",
    )
    flat = dict(comparison["candidate"])
    flat.update({k: comparison[k] for k in keys if k in comparison})
    return {f"{prefix}{k}": v for k, v in flat.items()}


def comparison_section(comparison: dict[str, Any], parent_name: str, child_name: str) -> Section:
    p, c = comparison["parent"], comparison["candidate"]
    rows = [[key, p[key], c[key], _ratio(p[key], c[key])] for key in p if key in c]
    notes = [
        f"Size ratio (weights) {comparison['size_ratio']:.2f}x; speed-up "
        f"{comparison['speedup_bs1']:.2f}x at batch 1, {comparison['speedup_bs32']:.2f}x at 32 "
        "(end-to-end p50: tokenisation + forward)."
    ]
    notes.append(
        f"Top-label agreement with the parent {comparison['agreement']:.4f}, "
        f"max probability difference {comparison['max_prob_diff']:.2e}."
    )
    if "accuracy_delta" in comparison:
        notes.append(f"Accuracy delta {comparison['accuracy_delta']:+.4f}.")
    return Section(
        "Comparison with the parent",
        [
            Table(["measure", parent_name, child_name, "candidate / parent"], rows),
            Paragraph(" ".join(notes)),
        ],
    )


def _ratio(a: Any, b: Any) -> str:
    if isinstance(a, int | float) and isinstance(b, int | float) and a:
        return f"{b / a:.3f}"
    return ""


def comparison_output(
    ctx: JobContext,
    *,
    title: str,
    fmt: str,
    metrics: dict[str, Any],
    params: dict[str, Any],
    comparison: dict[str, Any],
    parent: str,
    names: tuple[str, str],
    extra: Sequence[Section] = (),
    new_version: bool = True,
) -> JobOutput:
    report = {
        "kind": ctx.kind,
        "parent": parent,
        "params": params,
        "metrics": metrics,
        "comparison": comparison,
    }
    sections = [
        Section(
            "Parameters", [Table(["parameter", "value"], [[k, str(v)] for k, v in params.items()])]
        ),
        comparison_section(comparison, *names),
        *extra,
    ]
    return JobOutput(
        task="text-classification",
        format=fmt,
        metrics=metrics,
        params=params,
        report=report,
        report_html=render_report(title, sections),
        parent=parent,
        description=title,
        new_version=new_version,
    )
