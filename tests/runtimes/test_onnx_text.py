"""ONNX text runtimes (classification, embeddings) agree with the HF models they came from."""

from __future__ import annotations

import asyncio
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas.registry.store import Registry
from maas.runtimes.base import RuntimeContext
from maas.runtimes.embeddings import HFEmbeddingRuntime
from maas.runtimes.onnx_text import OnnxEmbeddingRuntime, OnnxTextClassificationRuntime
from maas.runtimes.text_classification import HFTextClassificationRuntime

TEXTS = ["a great film", "an awful, boring evening", "北京是中国的首都"]


def _export(model: Any, out: Path) -> None:
    import torch

    class ByKeyword(torch.nn.Module):
        """transformers 5 models clash with positional arguments: call them by keyword."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    ids = torch.ones(2, 8, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            ByKeyword(model.eval()),
            (ids, torch.ones_like(ids)),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["output"],
            dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
            opset_version=17,
            dynamo=False,
        )


@pytest.fixture(scope="module")
def exported(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("onnx-text")
    out: dict[str, Path] = {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        classifier = AutoModelForSequenceClassification.from_pretrained(
            minilm_dir, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}
        )
    for name, model in (
        ("classifier", classifier),
        ("encoder", AutoModel.from_pretrained(minilm_dir)),
    ):
        hf = root / f"{name}-hf"
        model.save_pretrained(hf)
        for f in minilm_dir.iterdir():
            if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
                shutil.copy(f, hf / f.name)
        onnx_dir = root / f"{name}-onnx"
        onnx_dir.mkdir()
        _export(model, onnx_dir / "model.onnx")
        for f in hf.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy(f, onnx_dir / f.name)
        out[f"{name}-hf"], out[f"{name}-onnx"] = hf, onnx_dir
    return out


def _run(runtime_cls: Any, path: Path, registry: Registry, task: str, fmt: str) -> list[Any]:
    info = registry.push(path, f"{task}-{fmt}", task=task)
    assert info.format == fmt

    async def go() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            runtime = runtime_cls(
                RuntimeContext(
                    model_dir=registry.materialize(info.ref), version=info, executor=pool
                )
            )
            await runtime.load()
            return list(await runtime.predict(TEXTS))

    return asyncio.run(go())


@pytest.mark.slow
def test_onnx_classifier_matches_the_hf_classifier(
    exported: dict[str, Path], registry: Registry
) -> None:
    onnx = _run(
        OnnxTextClassificationRuntime,
        exported["classifier-onnx"],
        registry,
        "text-classification",
        "onnx",
    )
    hf = _run(
        HFTextClassificationRuntime,
        exported["classifier-hf"],
        registry,
        "text-classification",
        "hf",
    )
    for a, b in zip(onnx, hf, strict=True):
        assert [label for label, _ in a.labels] == [label for label, _ in b.labels]
        np.testing.assert_allclose([p for _, p in a.labels], [p for _, p in b.labels], atol=1e-4)
        assert a.tokens == b.tokens


@pytest.mark.slow
def test_onnx_encoder_embeddings_match_the_hf_encoder(
    exported: dict[str, Path], registry: Registry
) -> None:
    onnx = _run(OnnxEmbeddingRuntime, exported["encoder-onnx"], registry, "embeddings", "onnx")
    hf = _run(HFEmbeddingRuntime, exported["encoder-hf"], registry, "embeddings", "hf")
    for a, b in zip(onnx, hf, strict=True):
        assert float(np.dot(a.vector, b.vector)) > 0.9999
