"""Export of a Hugging Face text classifier to one ONNX graph, its companion files, and
the logits parity check between the two.

The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``,
dynamic) and returns ``logits`` (float32, ``[batch, num_labels]``). Export uses the
default (dynamo, ``torch.export``) exporter with symbolic batch and sequence sizes, and
saves one file (external data only past protobuf's 2 GB); see :mod:`maas.jobs.optimize`.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maas.errors import MaasError
from maas.jobs.base import JobContext
from maas.jobs.predictors import OnnxTextPredictor

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
