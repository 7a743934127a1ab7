"""Optimisation jobs: ``quantize``, ``export``, ``prune``, ``distill``.

Each makes a new version from a text classifier (``model``; ``teacher`` for
distill) and compares it with its parent: size, end-to-end p50 latency at batch
1 and 32, and, when ``dataset`` is given, accuracy and macro-F1 on ``split``
(default ``test``) with the delta. The four share the ONNX writer
(:mod:`maas.jobs.onnx_export`) and the comparison with the parent
(:mod:`maas.jobs.comparison`); prune and distill live in their own modules.

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
from pathlib import Path
from typing import Any

from maas.errors import InvalidRequestError
from maas.jobs.base import JobCancelled, JobContext, JobOutput
from maas.jobs.comparison import (
    compare,
    comparison_metrics,
    comparison_output,
    eval_records,
    sample_texts,
    weights_bytes,
)
from maas.jobs.dataset_files import Dataset, has_split, inputs, read_split, targets
from maas.jobs.metrics import dir_size
from maas.jobs.onnx_export import (
    DEFAULT_OPSET,
    ONNX_GRAPH,
    export_onnx,
    logits_parity,
    require_parity,
    write_onnx_companions,
)
from maas.jobs.predictors import HFTextPredictor, predict_dataset_proba
from maas.jobs.reports import Paragraph, Section
from maas.jobs.served import ServedPredictor
from maas.jobs.specs import QUANTIZE_METHODS
from maas.registry.formats import detect_format
from maas.runtimes.base import sequence_limit

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


def compare_served(
    ctx: JobContext, source: Path, dataset: Dataset | None, records: list[dict[str, Any]]
) -> dict[str, Any]:
    """The parent version's folder against the job's output, both run as the server runs
    them (``jobs/served.py``): sizes, latencies, accuracy and agreement."""
    with served(source) as parent, served(ctx.output_dir) as child:
        return compare(
            parent,
            child,
            parent_bytes=(weights_bytes(source), dir_size(source)),
            child_bytes=(weights_bytes(ctx.output_dir), dir_size(ctx.output_dir)),
            dataset=dataset,
            records=records,
            runs=_runs(ctx),
        )


def served(model_dir: Path) -> ServedPredictor:
    """A text classifier directory as the server runs it, on this process's torch thread
    count for both formats, so parent and child latencies compare like for like."""
    import torch

    return ServedPredictor(model_dir, "text-classification", threads=torch.get_num_threads())


# ---------------------------------------------------------------------------- export


def export(ctx: JobContext) -> JobOutput:
    """ONNX export of an HF text classifier, failing when logits drift past ``tolerance``."""
    ref = _model_ref(ctx, "model", "base")
    opset = int(ctx.spec.get("opset", DEFAULT_OPSET))
    tolerance = float(ctx.spec.get("tolerance", 1e-3))
    _check(ctx, 0, 3, f"loading {ref}")
    source = ctx.model_path(ref)
    model, tokenizer = _load_hf_classifier(source)
    dataset, records = eval_records(ctx)
    _check(ctx, 1, 3, f"exporting to ONNX (opset {opset})")
    export_onnx(model, tokenizer, ctx.output_dir / ONNX_GRAPH, opset)
    write_onnx_companions(ctx.output_dir, tokenizer=tokenizer, config=model.config)
    diff = require_parity(
        logits_parity(model, tokenizer, ctx.output_dir, sample_texts(records)), ctx
    )
    _check(ctx, 2, 3, "comparing with the parent")
    del model  # the parent is measured as the server runs it, from its directory
    comparison = compare_served(ctx, source, dataset, records)
    ctx.progress(3, 3)
    metrics = {**comparison_metrics(comparison), "parity_max_abs_diff": diff}
    params = {"opset": opset, "tolerance": tolerance, "exporter": "torch.onnx dynamo"}
    return comparison_output(
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
    if method in ("onnx-int8", "onnx-int8-static"):
        return _quantize_onnx(ctx, static=method == "onnx-int8-static")
    if method == "torch-int8":
        return _quantize_torch(ctx)
    raise InvalidRequestError(
        f"unknown quantization method {method!r}; expected one of: {', '.join(QUANTIZE_METHODS)}",
        param="method",
    )


def _quantize_onnx(ctx: JobContext, *, static: bool) -> JobOutput:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    ref = _model_ref(ctx, "model", "base")
    per_channel = _flag(ctx.spec.get("per_channel", True), "per_channel")
    opset = int(ctx.spec.get("opset", DEFAULT_OPSET))
    _check(ctx, 0, 3, f"loading {ref}")
    source = ctx.model_path(ref)
    dataset, records = eval_records(ctx)
    if static and dataset is None:
        raise InvalidRequestError(
            "static int8 needs 'dataset': its calibration split sets the activation scales",
            param="dataset",
        )
    fmt = detect_format(source).format
    if fmt == "onnx":
        graphs = sorted(source.glob("*.onnx"))
        if len(graphs) != 1:
            raise InvalidRequestError(f"expected one .onnx graph in {ref}, found {len(graphs)}")
        (graph,) = graphs
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
        require_parity(logits_parity(model, tokenizer, graph.parent, sample_texts(records)), ctx)
        del model
        parent_name = "torch fp32"
    params: dict[str, Any] = {
        "method": "onnx-int8-static" if static else "onnx-int8",
        "weight_type": "int8",
        "per_channel": per_channel,
        "opset": opset,
    }
    if static:
        assert dataset is not None
        _check(ctx, 2, 3, "quantizing weights and activations to int8 (static, calibrated)")
        params.update(_static(ctx, graph, dataset))
    else:
        _check(ctx, 2, 3, "quantizing weights to int8 (ONNX Runtime, dynamic)")
        quantize_dynamic(
            str(graph),
            str(ctx.output_dir / ONNX_GRAPH),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )
    shutil.rmtree(ctx.workdir / "fp32", ignore_errors=True)
    comparison = compare_served(ctx, source, dataset, records)
    ctx.progress(3, 3)
    return comparison_output(
        ctx,
        title=f"{'static' if static else 'dynamic'} int8 quantization of {ref}",
        fmt="onnx",
        metrics=comparison_metrics(comparison),
        params=params,
        comparison=comparison,
        parent=ref,
        names=(parent_name, "onnx int8 static" if static else "onnx int8"),
    )


def _static(ctx: JobContext, graph: Path, dataset: Dataset) -> dict[str, Any]:
    """Static int8 of ``graph`` into the output (jobs/quantize_static.py); its params."""
    from transformers import AutoTokenizer

    from maas.jobs.quantize_static import quantize_static_onnx

    spec = ctx.spec
    split = str(spec.get("calibration_split", "train"))
    size = int(spec.get("calibration_size", 128))
    max_drop = float(spec.get("max_accuracy_drop", 0.01))
    percentile = float(spec.get("percentile", 99.99))
    if not 1 <= size <= 10_000 or not 0 <= max_drop < 1 or not 90 <= percentile <= 100:
        raise InvalidRequestError(
            "calibration_size must be 1-10000, max_accuracy_drop 0-1, percentile 90-100",
            param="spec",
        )
    calibration = [str(r["text"]) for r in read_split(dataset, split)[:size]]
    if not calibration:
        raise InvalidRequestError(f"the calibration split {split!r} is empty", param="spec")
    held = "validation" if has_split(dataset, "validation") and split != "validation" else split
    held_records = read_split(dataset, held)
    truth = targets(held_records, dataset)

    def score(candidate: Path) -> float:
        with served(candidate.parent) as predictor:
            probs = predict_dataset_proba(
                predictor, inputs(held_records, dataset), dataset.label_names
            )
        return float((probs.argmax(axis=1) == truth).mean())

    tokenizer = AutoTokenizer.from_pretrained(str(graph.parent))
    fp32 = score(graph)
    result = quantize_static_onnx(
        graph,
        ctx.output_dir / ONNX_GRAPH,
        work=ctx.workdir / "static",
        tokenizer=tokenizer,
        calibration=calibration,
        score=score,
        fp32_accuracy=fp32,
        max_accuracy_drop=max_drop,
        percentile=percentile,
        max_length=sequence_limit(None, tokenizer, 512),
        log=ctx.log,
    )
    return {
        "activation_type": "uint8",
        "calibration": f"{split} ({len(calibration)} texts), percentile {percentile}",
        "held_out_split": held,
        "max_accuracy_drop": max_drop,
        "fp32_matmuls_kept": result.excluded,
        "fallback_rounds": result.rounds,
    }


def _quantize_torch(ctx: JobContext) -> JobOutput:
    import io

    import torch

    ref = _model_ref(ctx, "model", "base")
    source = ctx.model_path(ref)
    model, tokenizer = _load_hf_classifier(source)
    dataset, records = eval_records(ctx)
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
    return comparison_output(
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
