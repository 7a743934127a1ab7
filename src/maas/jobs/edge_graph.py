"""The ONNX graph of an edge bundle: taken from the version, or exported, then quantized.

* An ONNX version's graph is used as it is when it already has the target's precision
  (an int8 version made by ``quantize`` for ``onnx-int8``, an fp32 one for ``onnx``);
  an fp32 graph is quantized for ``onnx-int8``; an int8 graph is refused for ``onnx``
  (its fp32 parent is the one to export).
* A Hugging Face version is exported first: a classifier with the export job's writer
  (:func:`maas.jobs.onnx_export.export_onnx`, graph output ``logits``), an encoder with
  :func:`export_encoder` (graph output ``last_hidden_state``, pooled by the runner as
  the embeddings runtime pools it). Each export is checked against torch on sample
  texts within the spec's ``tolerance`` (default 1e-3), as the export job checks.
* Quantization is the ``quantize`` job's default recipe: ONNX Runtime dynamic int8,
  weights int8 with one scale per output channel, activations quantized on the fly.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError, MaasError
from maas.jobs.onnx_export import (
    DEFAULT_OPSET,
    SAMPLE_TEXTS,
    export_onnx,
    logits_only,
    write_onnx_companions,
)
from maas.registry.formats import detect_format
from maas.registry.schemas import VersionInfo

TARGETS = ("onnx-int8", "onnx")
EDGE_TASKS = ("text-classification", "embeddings")
# Operators only a quantized graph holds (dynamic, QDQ and QOperator formats).
_INT8_OPS = frozenset(
    {
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
        "QLinearConv",
        "ConvInteger",
        "QAttention",
    }
)


@dataclass(frozen=True, slots=True)
class PreparedGraph:
    path: Path
    quantization: dict[str, Any] | None  # None: fp32
    exported: bool  # made from a Hugging Face version by this job
    parity_max_abs_diff: float | None  # export check against torch (None: not exported)
    fp32: Path | None = None  # the fp32 graph this job quantized (None: not quantized here)


def is_int8(graph: Path) -> bool:
    """Whether the graph holds quantized operators or int8 weights."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    if any(node.op_type in _INT8_OPS for node in model.graph.node):
        return True
    low = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return any(init.data_type in low for init in model.graph.initializer)


def prepare_graph(
    source: Path,
    info: VersionInfo,
    target: str,
    work: Path,
    *,
    tolerance: float,
    log: Callable[[str], None],
) -> PreparedGraph:
    """The bundle's graph for ``info`` (stored at ``source``) at ``target`` precision."""
    if target not in TARGETS:
        raise InvalidRequestError(
            f"unknown edge target {target!r}; expected one of: {', '.join(TARGETS)}",
            param="target",
        )
    if info.task not in EDGE_TASKS:
        raise InvalidRequestError(
            f"{info.ref} is a model of task {info.task}; edge bundles hold text classifiers "
            "and embedding models",
            param="model",
        )
    work.mkdir(parents=True, exist_ok=True)
    fmt = detect_format(source).format
    diff: float | None = None
    if fmt == "onnx":
        graphs = sorted(source.rglob("*.onnx"))  # the runtime serves the first one
        if not graphs:
            raise InvalidRequestError(f"{info.ref} holds no .onnx graph", param="model")
        if any(p.suffix == ".data" for p in source.rglob("*")):
            raise InvalidRequestError(
                f"{info.ref} keeps its weights in external data files; an edge bundle "
                "holds one graph file",
                param="model",
            )
        fp32 = graphs[0]
        if is_int8(fp32):
            if target == "onnx":
                parent = f" (its parent {info.parent})" if info.parent else ""
                raise InvalidRequestError(
                    f"{info.ref} is already int8: bundle it with --target onnx-int8, or "
                    f"bundle an fp32 version{parent} with --target onnx",
                    param="target",
                )
            log(f"{info.ref} is an int8 graph: bundled as it is")
            return PreparedGraph(fp32, _version_quantization(info), False, None)
    elif fmt == "hf":
        fp32 = work / "fp32" / "model.onnx"
        diff = _export(source, info.task, fp32, tolerance, log)
    else:
        raise InvalidRequestError(
            f"{info.ref} is a {fmt} version; edge bundles are made from hf or onnx versions",
            param="model",
        )
    if target == "onnx":
        return PreparedGraph(fp32, None, fmt == "hf", diff)
    quantized = work / "int8" / "model.onnx"
    log("quantizing weights to int8 (ONNX Runtime dynamic, per channel)")
    quantize_dynamic_int8(fp32, quantized)
    recipe = {
        "method": "onnx-int8",
        "weight_type": "int8",
        "per_channel": True,
        "activations": "dynamic (quantized on the fly)",
        "applied": "at export",
    }
    return PreparedGraph(quantized, recipe, fmt == "hf", diff, fp32=fp32)


def quantize_dynamic_int8(graph: Path, out: Path) -> None:
    """The quantize job's default recipe (see :mod:`maas.jobs.optimize`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]

    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(graph), str(out), weight_type=QuantType.QInt8, per_channel=True)


def _version_quantization(info: VersionInfo) -> dict[str, Any]:
    params = info.params or {}
    recipe: dict[str, Any] = {
        "method": str(params.get("method", "int8")),
        "weight_type": str(params.get("weight_type", "int8")),
        "applied": f"in {info.ref}" + (f" (job {info.job_id})" if info.job_id else ""),
    }
    for key in ("per_channel", "activation_type", "calibration", "fp32_matmuls_kept"):
        if key in params:
            recipe[key] = params[key]
    return recipe


def _export(
    source: Path, task: str, graph: Path, tolerance: float, log: Callable[[str], None]
) -> float:
    """Export a Hugging Face version to ``graph`` (fp32); the parity with torch."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    log(f"exporting the {task} model to ONNX (opset {DEFAULT_OPSET})")
    if task == "text-classification":
        model = AutoModelForSequenceClassification.from_pretrained(str(source)).eval()
        export_onnx(model, tokenizer, graph, DEFAULT_OPSET)
    else:
        model = AutoModel.from_pretrained(str(source)).eval()
        export_encoder(model, tokenizer, graph, DEFAULT_OPSET)
    write_onnx_companions(graph.parent, source=source)
    diff = output_parity(model, tokenizer, graph, task)
    log(f"parity: max |output difference| = {diff:.3e} (tolerance {tolerance})")
    if not diff <= tolerance:  # also fails on NaN
        raise MaasError(
            f"exported graph differs from the model: max |output difference| {diff:.3e} "
            f"> tolerance {tolerance}"
        )
    return diff


def export_encoder(model: Any, tokenizer: Any, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Export an encoder to one graph: ``(input_ids, attention_mask) -> last_hidden_state``
    (float32, ``[batch, sequence, hidden]``), dynamic batch and sequence, as
    :func:`maas.jobs.onnx_export.export_onnx` exports classifiers."""
    import torch

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            # By keyword, as logits_only does (positional calls clash in transformers 5).
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    sample = tokenizer(list(SAMPLE_TEXTS[:2]), padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about its own internals
        program = torch.onnx.export(
            _Hidden(model).eval(),
            (sample["input_ids"], sample["attention_mask"]),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes},
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise MaasError("the ONNX exporter returned no program")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))


def output_parity(model: Any, tokenizer: Any, graph: Path, task: str) -> float:
    """Max |torch - onnx| of the graph's output over the sample texts, in padded batches."""
    import onnxruntime as ort  # type: ignore[import-untyped]
    import torch

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    module = logits_only(model) if task == "text-classification" else model
    worst = 0.0
    texts = list(SAMPLE_TEXTS)
    for start in range(0, len(texts), 3):
        enc = tokenizer(texts[start : start + 3], padding=True, return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)  # (batch, seq)
        mask = enc["attention_mask"].astype(np.int64)  # (batch, seq)
        with torch.inference_mode():
            out = module(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        ref = (out if task == "text-classification" else out.last_hidden_state).float().numpy()
        (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        if task != "text-classification":  # padded positions are not read by pooling
            keep = mask[:, :, None].astype(bool)
            ref, got = np.where(keep, ref, 0.0), np.where(keep, got, 0.0)
        worst = max(worst, float(np.abs(np.asarray(got) - ref).max()))
    return worst


def copy_graph(graph: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph, target)
