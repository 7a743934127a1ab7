"""Optimisation jobs: ``quantize``, ``export``, ``prune``, ``distill``.

Each makes a new version from a text classifier (``model``; ``teacher`` for
distill) and compares it with its parent: size, end-to-end p50 latency at batch
1 and 32, and, when ``dataset`` is given, accuracy and macro-F1 on ``split``
(default ``test``) with the delta. The four share the ONNX writer and the
comparison, hence one module.

ONNX versions (quantize, export, prune with heads removed) hold ``model.onnx``,
the tokenizer files and ``config.json`` (``id2label``, ``max_position_embeddings``).
The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch,
sequence]``, dynamic) and returns ``logits`` (float32, ``[batch, num_labels]``);
class probabilities are its softmax.

Choices, measured or forced by the libraries (see docs/optimization.md):

* Export uses the default (dynamo, ``torch.export``) exporter, with symbolic
  batch and sequence sizes: nothing is baked from the sample inputs (the
  TorchScript tracer fixes data-dependent branches such as "is any token
  masked" to their sample value and is deprecated). The graph is optimised by
  onnxscript and saved as one file (external data only past protobuf's 2 GB).
* ``quantize`` ``method=onnx-int8`` (default): ONNX Runtime dynamic int8
  quantization of the exported graph (MatMul/Gather weights stored in int8,
  activations quantized on the fly), one scale per output channel by default
  (``per_channel``): on a MiniLM classifier it kept 99% of the predictions
  where one scale per tensor kept 90%, at the same size and speed. ``method=torch-int8``
  (``torch.ao.quantization.quantize_dynamic`` on Linear layers) is measured
  and reported only, and annotates the parent (``new_version=False``, metrics
  prefixed ``torch_int8_``): safetensors cannot hold its packed int8 weights,
  the hf runtime could not load them, and eager-mode quantization is
  deprecated upstream in favour of torchao.
* ``prune`` removes whole FFN neurons and attention heads, the same number in
  every layer, ranked by the L1 norm of their weights. A uniform FFN width is
  what ``BertConfig.intermediate_size`` can state, so FFN-only pruning saves a
  Hugging Face version that ``from_pretrained`` reloads with the new sizes.
  ``BertConfig`` derives the head size from ``hidden_size / num_attention_heads``
  and transformers 5 dropped ``prune_heads``, so no config describes a model
  with fewer heads of the original size: with ``heads_fraction > 0`` the pruned
  model is exported to ONNX instead (the default format then).
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maas.errors import InvalidRequestError, MaasError
from maas.jobs.base import JobCancelled, JobContext, JobOutput
from maas.jobs.dataset_files import Dataset, has_split, read_dataset, read_split, targets
from maas.jobs.metrics import classification_metrics, dir_size, measure_latency_ms
from maas.jobs.predictors import (
    HFTextPredictor,
    OnnxTextPredictor,
    Predictor,
    predict_dataset_proba,
)
from maas.jobs.reports import Paragraph, Section, Table, render_report
from maas.jobs.specs import QUANTIZE_METHODS
from maas.registry.formats import detect_format

if TYPE_CHECKING:
    import torch

DEFAULT_OPSET = 17
ONNX_GRAPH = "model.onnx"
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".data", ".bin")
# Parity inputs when no dataset is given: lengths differ so batches carry padding.
SAMPLE_TEXTS = (
    "ok",
    "The delivery arrived two days late and the box was damaged.",
    "Best hiking trails near the lake",
    "I was charged twice for the same order last week, please refund one of them.",
    "great",
    "The meeting has been moved to Thursday afternoon.",
)
_PROTOBUF_LIMIT = 2 * 1024**3

# ---------------------------------------------------------------------------- helpers


def _check(ctx: JobContext, step: int, total: int, what: str) -> None:
    if ctx.cancelled():
        raise JobCancelled()
    ctx.log(what)
    ctx.progress(step, total)


def _load_hf_classifier(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    detected = detect_format(path)
    if detected.format != "hf" or detected.task_hint != "text-classification":
        raise InvalidRequestError(
            f"expected a Hugging Face text classifier, got a {detected.format} "
            f"{detected.task_hint or 'model'}",
            param="model",
        )
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def weights_bytes(path: Path) -> int:
    """Bytes of the weight files (safetensors, ONNX graph and its data) of a version."""
    return sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    )


def logits_only(model: Any) -> torch.nn.Module:
    """``model`` as ``forward(input_ids, attention_mask) -> logits``, the graph's signature.

    transformers 5 models take many optional arguments; exporting them called
    positionally binds the mask to the wrong one ("multiple values for
    use_cache"), so the wrapper passes both by keyword.
    """
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return _Logits(model).eval()


def export_onnx(model: Any, tokenizer: Any, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Export a text classifier to one ONNX graph with dynamic batch and sequence axes."""
    import torch

    sample = tokenizer(list(SAMPLE_TEXTS[:2]), padding=True, return_tensors="pt")
    wrapper = logits_only(model)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        # The exporter and torch.export emit deprecation chatter about their own
        # internals; it is not actionable here and must not fail a job.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (sample["input_ids"], sample["attention_mask"]),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes},
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise MaasError("the ONNX exporter returned no program")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=params > _PROTOBUF_LIMIT)


def write_onnx_companions(
    target: Path, *, tokenizer: Any = None, config: Any = None, source: Path | None = None
) -> None:
    """Tokenizer files + config.json beside the graph (from objects, or copied from ``source``)."""
    target.mkdir(parents=True, exist_ok=True)
    if source is not None:
        for item in source.iterdir():
            if item.is_file() and item.suffix not in WEIGHT_SUFFIXES:
                shutil.copy(item, target / item.name)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(target))
    if config is not None:
        config.save_pretrained(str(target))


def logits_parity(model: Any, tokenizer: Any, graph_dir: Path, texts: Sequence[str]) -> float:
    """Max |logits_torch - logits_onnx| over ``texts``, in padded batches of 4."""
    import torch

    onnx = OnnxTextPredictor(graph_dir)
    worst = 0.0
    for start in range(0, len(texts), 4):
        batch = list(texts[start : start + 4])
        enc = tokenizer(
            batch, padding=True, truncation=True, max_length=onnx.max_length, return_tensors="np"
        )
        with torch.inference_mode():
            ref = (
                model(
                    input_ids=torch.from_numpy(enc["input_ids"]).long(),
                    attention_mask=torch.from_numpy(enc["attention_mask"]).long(),
                )
                .logits.float()
                .numpy()
            )  # (batch, labels)
        feed = {
            "input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64),
        }
        (got,) = onnx.session.run(["logits"], feed)  # (batch, labels)
        worst = max(worst, float(np.abs(np.asarray(got) - ref).max()))
    return worst


def require_parity(diff: float, ctx: JobContext) -> float:
    """``diff`` if within the spec's ``tolerance`` (default 1e-3), else fail the job."""
    tolerance = float(ctx.spec.get("tolerance", 1e-3))
    ctx.log(f"parity: max |logits difference| = {diff:.3e} (tolerance {tolerance})")
    if not diff <= tolerance:  # also fails on NaN
        raise MaasError(
            f"exported graph differs from the model: max |logits difference| {diff:.3e} "
            f"> tolerance {tolerance}"
        )
    return diff


def _eval_records(ctx: JobContext) -> tuple[Dataset | None, list[dict[str, Any]]]:
    ref = ctx.spec.get("dataset")
    if not ref:
        return None, []
    dataset = read_dataset(ctx.dataset_path(str(ref)))
    if dataset.kind != "text":
        raise InvalidRequestError("optimisation jobs take text datasets", param="dataset")
    split = str(ctx.spec.get("split", "test"))
    return dataset, read_split(dataset, split) if has_split(dataset, split) else []


def _sample_texts(records: Sequence[dict[str, Any]]) -> list[str]:
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


def _output(
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


def _model_ref(ctx: JobContext, *keys: str) -> str:
    for key in keys:
        if ctx.spec.get(key):
            return str(ctx.spec[key])
    raise InvalidRequestError(f"{ctx.kind} needs '{keys[0]}'", param=keys[0])


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRequestError(f"{name} must be true or false, got {value!r}", param=name)


def _runs(ctx: JobContext) -> int:
    return int(ctx.spec.get("latency_runs", 10))


# ---------------------------------------------------------------------------- export


def export(ctx: JobContext) -> JobOutput:
    """ONNX export of an HF text classifier, failing when logits drift past ``tolerance``."""
    ref = _model_ref(ctx, "model", "base")
    opset = int(ctx.spec.get("opset", DEFAULT_OPSET))
    tolerance = float(ctx.spec.get("tolerance", 1e-3))
    _check(ctx, 0, 3, f"loading {ref}")
    source = ctx.model_path(ref)
    model, tokenizer = _load_hf_classifier(source)
    dataset, records = _eval_records(ctx)
    _check(ctx, 1, 3, f"exporting to ONNX (opset {opset})")
    export_onnx(model, tokenizer, ctx.output_dir / ONNX_GRAPH, opset)
    write_onnx_companions(ctx.output_dir, tokenizer=tokenizer, config=model.config)
    diff = require_parity(
        logits_parity(model, tokenizer, ctx.output_dir, _sample_texts(records)), ctx
    )
    _check(ctx, 2, 3, "comparing with the parent")
    comparison = compare(
        HFTextPredictor(model, tokenizer),
        OnnxTextPredictor(ctx.output_dir),
        parent_bytes=(weights_bytes(source), dir_size(source)),
        child_bytes=(weights_bytes(ctx.output_dir), dir_size(ctx.output_dir)),
        dataset=dataset,
        records=records,
        runs=_runs(ctx),
    )
    ctx.progress(3, 3)
    metrics = {**comparison_metrics(comparison), "parity_max_abs_diff": diff}
    params = {"opset": opset, "tolerance": tolerance, "exporter": "torch.onnx dynamo"}
    return _output(
        ctx,
        title=f"ONNX export of {ref}",
        fmt="onnx",
        metrics=metrics,
        params=params,
        comparison=comparison,
        parent=ref,
        names=("torch fp32", "onnx fp32"),
        extra=[
            Section(
                "Parity",
                [Paragraph(f"Max |logits difference| {diff:.3e} (tolerance {tolerance}).")],
            )
        ],
    )


# -------------------------------------------------------------------------- quantize


def quantize(ctx: JobContext) -> JobOutput:
    method = str(ctx.spec.get("method", "onnx-int8"))
    if method == "onnx-int8":
        return _quantize_onnx(ctx)
    if method == "torch-int8":
        return _quantize_torch(ctx)
    raise InvalidRequestError(
        f"unknown quantization method {method!r}; expected one of: {', '.join(QUANTIZE_METHODS)}",
        param="method",
    )


def _quantize_onnx(ctx: JobContext) -> JobOutput:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    ref = _model_ref(ctx, "model", "base")
    per_channel = _flag(ctx.spec.get("per_channel", True), "per_channel")
    opset = int(ctx.spec.get("opset", DEFAULT_OPSET))
    _check(ctx, 0, 3, f"loading {ref}")
    source = ctx.model_path(ref)
    dataset, records = _eval_records(ctx)
    fmt = detect_format(source).format
    parent: Predictor
    if fmt == "onnx":
        parent = OnnxTextPredictor(source)  # checks there is exactly one graph
        (graph,) = sorted(source.glob("*.onnx"))
        write_onnx_companions(ctx.output_dir, source=source)
        parent_name = "onnx fp32"
    else:
        model, tokenizer = _load_hf_classifier(source)
        _check(ctx, 1, 3, f"exporting to ONNX (opset {opset})")
        graph = ctx.workdir / "fp32" / ONNX_GRAPH
        export_onnx(model, tokenizer, graph, opset)
        for folder in (graph.parent, ctx.output_dir):
            write_onnx_companions(folder, tokenizer=tokenizer, config=model.config)
        # Catch an export fault here rather than blame it on quantization later.
        require_parity(logits_parity(model, tokenizer, graph.parent, _sample_texts(records)), ctx)
        parent = HFTextPredictor(model, tokenizer)
        parent_name = "torch fp32"
    _check(ctx, 2, 3, "quantizing weights to int8 (ONNX Runtime, dynamic)")
    quantize_dynamic(
        str(graph),
        str(ctx.output_dir / ONNX_GRAPH),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
    )
    shutil.rmtree(ctx.workdir / "fp32", ignore_errors=True)
    comparison = compare(
        parent,
        OnnxTextPredictor(ctx.output_dir),
        parent_bytes=(weights_bytes(source), dir_size(source)),
        child_bytes=(weights_bytes(ctx.output_dir), dir_size(ctx.output_dir)),
        dataset=dataset,
        records=records,
        runs=_runs(ctx),
    )
    ctx.progress(3, 3)
    params = {
        "method": "onnx-int8",
        "weight_type": "int8",
        "per_channel": per_channel,
        "opset": opset,
    }
    return _output(
        ctx,
        title=f"int8 quantization of {ref}",
        fmt="onnx",
        metrics=comparison_metrics(comparison),
        params=params,
        comparison=comparison,
        parent=ref,
        names=(parent_name, "onnx int8"),
    )


def _quantize_torch(ctx: JobContext) -> JobOutput:
    import io

    import torch

    ref = _model_ref(ctx, "model", "base")
    source = ctx.model_path(ref)
    model, tokenizer = _load_hf_classifier(source)
    dataset, records = _eval_records(ctx)
    _check(ctx, 1, 2, "quantizing Linear layers to int8 (torch dynamic, report only)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao eager quantization is deprecated upstream
        quantized = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )
    buffer = io.BytesIO()  # serialized size only, measured in memory and never stored
    torch.save(quantized.state_dict(), buffer)
    size = buffer.getbuffer().nbytes
    comparison = compare(
        HFTextPredictor(model, tokenizer),
        HFTextPredictor(quantized, tokenizer),
        parent_bytes=(weights_bytes(source), dir_size(source)),
        child_bytes=(size, size),
        dataset=dataset,
        records=records,
        runs=_runs(ctx),
    )
    ctx.progress(2, 2)
    params = {"method": "torch-int8", "note": "report only: no version is created"}
    return _output(
        ctx,
        title=f"torch dynamic int8 of {ref} (report only)",
        fmt=detect_format(source).format,
        metrics=comparison_metrics(comparison, prefix="torch_int8_"),
        params=params,
        comparison=comparison,
        parent=ref,
        names=("torch fp32", "torch int8"),
        new_version=False,
    )
