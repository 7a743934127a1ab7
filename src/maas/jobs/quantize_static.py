"""Static int8 quantization (QDQ) of an fp32 ONNX text classifier, accuracy-aware.

Dynamic int8 (``quantize_dynamic``) computes each activation's scale at run time
from the batch at hand: cheap to make, but the scale then depends on the batch's
padding (an answer moves with what it is batched with) and the run-time min/max
costs time at large batches. Static int8 fixes every activation's scale once,
from a **calibration split** of the dataset, and stores the graph with
QuantizeLinear/DequantizeLinear pairs around each quantized operator, which ONNX
Runtime fuses into integer kernels.

The recipe (ONNX Runtime's ``quantize_static``, measured on a fine-tuned MiniLM
in ``benchmarks/optimize.py``; docs/optimization.md):

* weights int8 per output channel, activations uint8 (the u8s8 kernels of x86);
* only ``MatMul`` and ``Gather`` (the embedding table) are quantized; the
  attention products of two activations (Q·Kᵀ and softmax·V) stay fp32: their
  ranges move with every input and quantizing them cost accuracy for no size;
* activation ranges from the 99.99th percentile of the calibration values, not
  their min/max: BERT's activations have rare outliers that would otherwise
  stretch the scale and crush every ordinary value (MinMax lost 3-4 points of
  accuracy on the benchmark's model, the percentile none);
* **accuracy-aware fallback**: the candidate is scored on a held-out split (the
  validation split, else the calibration one); while its accuracy is more than
  ``max_accuracy_drop`` below the fp32 model's, the MatMuls whose outputs differ
  most from the fp32 model's (lowest signal-to-quantization-noise ratio on the
  calibration inputs, read with ``onnxruntime.quantization.qdq_loss_debug``) are
  kept in fp32 — 2, then 4, 8, 16 — and the graph is quantized again. When no
  round holds the drop, the job fails, naming the best drop it reached.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import MaasError

FALLBACK_ROUNDS = (2, 4, 8, 16)
CALIBRATION_BATCH = 8


@dataclass
class StaticResult:
    excluded: list[str] = field(default_factory=list)  # MatMuls kept in fp32 by the fallback
    rounds: list[dict[str, Any]] = field(default_factory=list)  # accuracy per attempt
    fp32_accuracy: float | None = None


class _Reader:
    """Calibration inputs: the texts tokenized as the runtime does, padded to one length
    (ONNX Runtime's histogram calibrators stack batches), in batches."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], names: Sequence[str], limit: int):
        lengths = [len(tokenizer(t, truncation=True, max_length=limit)["input_ids"]) for t in texts]
        length = max(lengths, default=8)
        self.batches = []
        for start in range(0, len(texts), CALIBRATION_BATCH):
            enc = tokenizer(
                list(texts[start : start + CALIBRATION_BATCH]),
                padding="max_length",
                truncation=True,
                max_length=length,
                return_tensors="np",
            )
            feed = {n: np.asarray(enc[n], dtype=np.int64) for n in names if n in enc}
            if "token_type_ids" in names and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            self.batches.append(feed)
        self._next = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self.batches)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # what qdq_loss_debug reads
        return iter(self.batches)


def quantize_static_onnx(
    graph: Path,
    output: Path,
    *,
    work: Path,
    tokenizer: Any,
    calibration: Sequence[str],
    score: Callable[[Path], float],
    fp32_accuracy: float,
    max_accuracy_drop: float,
    percentile: float,
    max_length: int,
    log: Callable[[str], None],
) -> StaticResult:
    """Quantize ``graph`` into ``output`` (a file) as the module docstring says.

    ``score`` gives the accuracy of a quantized graph file on the held-out split;
    ``work`` is a scratch folder (removed at the end), outside the output's folder.
    """
    import onnx
    import onnxruntime as ort  # type: ignore[import-untyped]
    from onnxruntime.quantization.shape_inference import (  # type: ignore[import-untyped]
        quant_pre_process,
    )

    work.mkdir(parents=True, exist_ok=True)
    try:
        prepared = work / "prepared.onnx"
        # Constant folding and shape inference ONNX Runtime recommends before calibration;
        # the symbolic pass cannot follow the exporter's Min(512, sequence) shapes.
        quant_pre_process(str(graph), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        names = [i.name for i in ort.InferenceSession(str(prepared)).get_inputs()]
        reader = _Reader(tokenizer, calibration, names, max_length)
        activations_only = _activation_matmuls(model)
        result = StaticResult(fp32_accuracy=fp32_accuracy)
        excluded: list[str] = []
        ranking: list[str] | None = None
        for attempt in range(len(FALLBACK_ROUNDS) + 1):
            _quantize(prepared, output, reader, activations_only + excluded, percentile)
            accuracy = score(output)
            drop = fp32_accuracy - accuracy
            result.rounds.append(
                {"fp32_matmuls": len(excluded), "accuracy": accuracy, "drop": drop}
            )
            log(
                f"static int8 with {len(excluded)} MatMul(s) kept in fp32: accuracy "
                f"{accuracy:.4f} ({-drop:+.4f} vs fp32)"
            )
            if drop <= max_accuracy_drop:
                result.excluded = excluded
                return result
            if attempt == len(FALLBACK_ROUNDS):
                break
            if ranking is None:
                ranking = _sensitivity(prepared, output, reader, work, activations_only)
            excluded = ranking[: FALLBACK_ROUNDS[attempt]]
        best = min(r["drop"] for r in result.rounds)
        raise MaasError(
            f"static int8 stays {best:.4f} below the fp32 accuracy even with "
            f"{len(excluded)} quantizable MatMuls in fp32 (max_accuracy_drop {max_accuracy_drop}); "
            "use method onnx-int8 (dynamic), or raise max_accuracy_drop"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quantize(
    prepared: Path, output: Path, reader: _Reader, exclude: list[str], percentile: float
) -> None:
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    reader.rewind()
    quantize_static(
        str(prepared),
        str(output),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gather"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"CalibPercentile": percentile},
    )


def _activation_matmuls(model: Any) -> list[str]:
    """MatMuls of two activations (no weight among their inputs)."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in constants for i in n.input)
    ]


def _sensitivity(
    prepared: Path, quantized: Path, reader: _Reader, work: Path, skip: list[str]
) -> list[str]:
    """The quantized MatMuls, the one whose output strays most from fp32 first (lowest
    signal-to-quantization-noise ratio over the calibration batches)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (  # type: ignore[import-untyped]
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    outputs = {}
    for name, path in (("fp32", prepared), ("int8", quantized)):
        augmented = work / f"{name}-augmented.onnx"
        modify_model_output_intermediate_tensors(str(path), str(augmented), ["MatMul"])
        outputs[name] = collect_activations(str(augmented), reader)
    nodes = onnx.load(str(prepared)).graph.node
    scored = []
    for node in nodes:
        tensor = node.output[0] if node.op_type == "MatMul" else None
        if tensor is None or node.name in skip or tensor not in outputs["int8"]:
            continue
        signal = sum(float(np.square(f).sum()) for f in outputs["fp32"][tensor])
        noise = sum(
            float(np.square(f - q).sum())
            for f, q in zip(outputs["fp32"][tensor], outputs["int8"][tensor], strict=True)
        )
        scored.append((10 * np.log10(signal / max(noise, 1e-30)), node.name))
    return [name for _, name in sorted(scored)]  # lowest SQNR first
