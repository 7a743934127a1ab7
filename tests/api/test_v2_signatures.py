"""V2 metadata describes exactly what ``infer`` accepts and returns, for every runtime.

Each built-in runtime gets a tiny real model. The test reads
``GET /v2/models/{m}/versions/{v}``, builds a request from the advertised inputs
alone (names, datatypes, shapes; text for BYTES, a PNG for an image), posts it
to ``infer`` and expects 200 with exactly the advertised outputs, shaped as
advertised.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from maas.registry.models import VersionRow
from maas.registry.store import Registry
from maas.runtimes.registry import BUILTIN
from tests.gguf_helpers import write_tiny_llama_gguf
from tests.helpers import (
    make_onnx_file,
    make_tiny_bert,
    make_tiny_image_classifier,
    make_tiny_llm,
)
from tests.media_models import make_diffusion_dir, make_vits_dir, make_whisper_dir

pytestmark = pytest.mark.slow  # builds, exports and loads eleven tiny models

# Served on their own OpenAI routes (completions, audio, images), not as V2 tensors.
NO_TENSOR_INTERFACE = {
    "text-generation",
    "automatic-speech-recognition",
    "text-to-speech",
    "text-to-image",
}


def _export(module: Any, graph: Path, output: str) -> None:
    """(input_ids, attention_mask) -> ``output``, dynamic batch and sequence axes.

    The TorchScript exporter: the job's dynamo exporter makes the same
    signature but takes about 15 s here.
    """
    import warnings

    import torch

    graph.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.ones(2, 4, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module,
            (ids, torch.ones_like(ids)),
            str(graph),
            input_names=["input_ids", "attention_mask"],
            output_names=[output],
            dynamic_axes={"input_ids": axes, "attention_mask": axes},
            opset_version=17,
            dynamo=False,
        )


def _onnx_classifier(hf: Path, out: Path) -> Path:
    """What ``maas export`` writes: the job's logits graph and its companion files."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from maas.jobs.onnx_export import ONNX_GRAPH, logits_only, write_onnx_companions

    model = AutoModelForSequenceClassification.from_pretrained(str(hf)).eval()
    _export(logits_only(model), out / ONNX_GRAPH, "logits")
    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    write_onnx_companions(out, tokenizer=tokenizer, config=model.config)
    return out


def _onnx_encoder(hf: Path, out: Path) -> Path:
    """An encoder graph: (input_ids, attention_mask) -> last hidden state."""
    import torch
    from transformers import AutoModel

    from maas.jobs.onnx_export import write_onnx_companions

    class ByKeyword(torch.nn.Module):
        """transformers 5 models clash with positional arguments: call them by keyword."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    _export(ByKeyword(AutoModel.from_pretrained(str(hf)).eval()), out / "model.onnx", "hidden")
    write_onnx_companions(out, source=hf)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """One tiny model directory per built-in (task, format)."""
    root = tmp_path_factory.mktemp("every-runtime")
    encoder = make_tiny_bert(root / "encoder", classifier=False)
    classifier = make_tiny_bert(root / "classifier", classifier=True)
    return {
        ("tensor", "onnx"): make_onnx_file(root / "affine" / "model.onnx").parent,
        ("embeddings", "hf"): encoder,
        ("text-classification", "hf"): classifier,
        ("embeddings", "onnx"): _onnx_encoder(encoder, root / "encoder-onnx"),
        ("text-classification", "onnx"): _onnx_classifier(classifier, root / "classifier-onnx"),
        ("image-classification", "hf"): make_tiny_image_classifier(root / "vit"),
        ("text-generation", "hf"): make_tiny_llm(root / "llm"),
        ("text-generation", "gguf"): _tiny_gguf(root / "gguf" / "tiny.Q8_0.gguf"),
        ("automatic-speech-recognition", "hf"): make_whisper_dir(root / "whisper"),
        ("text-to-speech", "hf"): make_vits_dir(root / "vits"),
        ("text-to-image", "diffusers"): make_diffusion_dir(root / "diffusion"),
    }


def _tiny_gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True)
    write_tiny_llama_gguf(path)
    return path


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _request_from(inputs: list[dict[str, Any]]) -> tuple[bytes, int]:
    """A V2 body built from metadata only: -1 dims become 2; BYTES go in binary form."""
    entries: list[dict[str, Any]] = []
    tail = b""
    for spec in inputs:
        shape = [2 if d == -1 else d for d in spec["shape"]]
        count = int(np.prod(shape))
        entry: dict[str, Any] = {"name": spec["name"], "datatype": spec["datatype"], "shape": shape}
        if spec["datatype"] == "BYTES":
            value = _png() if spec["name"] == "image" else b"a good film"
            raw = b"".join(struct.pack("<I", len(value)) + value for _ in range(count))
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail += raw
        else:
            entry["data"] = (
                [1] * count if spec["datatype"].startswith(("INT", "UINT")) else [0.5] * count
            )
        entries.append(entry)
    header = json.dumps({"inputs": entries}).encode()
    return header + tail, len(header)


def _served(registry: Registry, artifacts: dict[tuple[str, str], Path]) -> dict[str, str]:
    names = {}
    for (task, fmt), path in artifacts.items():
        name = f"{task}-{fmt}"
        registry.push(path, name, task=task)
        names[name] = task
    return names


def test_every_builtin_runtime_has_a_model_here(
    artifacts: dict[tuple[str, str], Path], registry: Registry
) -> None:
    assert set(artifacts) == set(BUILTIN)
    for (task, fmt), path in artifacts.items():
        assert registry.push(path, f"{task}-{fmt}", task=task).format == fmt


def test_metadata_inputs_sent_back_are_accepted_and_name_the_outputs(
    client: TestClient,
    auth: dict[str, str],
    registry: Registry,
    artifacts: dict[tuple[str, str], Path],
) -> None:
    for name, task in _served(registry, artifacts).items():
        if task in NO_TENSOR_INTERFACE:
            continue  # see the next tests
        meta = client.get(f"/v2/models/{name}/versions/1", headers=auth)
        assert meta.status_code == 200, (name, meta.text)
        advertised = meta.json()
        body, header_length = _request_from(advertised["inputs"])
        r = client.post(
            f"/v2/models/{name}/versions/1/infer",
            content=body,
            headers={**auth, "Inference-Header-Content-Length": str(header_length)},
        )
        assert r.status_code == 200, (name, advertised["inputs"], r.text)
        returned = r.json()["outputs"]
        assert [o["name"] for o in returned] == [o["name"] for o in advertised["outputs"]], name
        for got, spec in zip(returned, advertised["outputs"], strict=True):
            assert got["datatype"] == spec["datatype"], (name, got["name"])
            assert len(got["shape"]) == len(spec["shape"]), (name, got["name"])
            for dim, expected in zip(got["shape"], spec["shape"], strict=True):
                assert expected in (-1, dim), (name, got["name"], got["shape"], spec["shape"])


def test_onnx_text_models_advertise_text_not_their_graph_tensors(
    client: TestClient,
    auth: dict[str, str],
    registry: Registry,
    artifacts: dict[tuple[str, str], Path],
) -> None:
    _served(registry, artifacts)
    classifier = client.get("/v2/models/text-classification-onnx", headers=auth).json()
    assert classifier["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert classifier["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
    ]
    encoder = client.get("/v2/models/embeddings-onnx", headers=auth).json()
    assert encoder["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 16]}]
    # The graph's own tensors stay visible in the registry, under names V2 does not read.
    version = registry.get_version("text-classification-onnx:1")
    assert "inputs" not in version.metadata
    assert [i["name"] for i in version.metadata["graph_inputs"]] == ["input_ids", "attention_mask"]


def test_a_version_stored_with_its_graph_signature_still_advertises_text(
    client: TestClient,
    auth: dict[str, str],
    registry: Registry,
    artifacts: dict[tuple[str, str], Path],
) -> None:
    registry.push(artifacts[("text-classification", "onnx")], "legacy", task="text-classification")
    graph_signature = {
        "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
    }
    with registry.db.write() as s:  # what versions pushed before the fix hold
        row = s.query(VersionRow).one()
        row.meta = {**row.meta, **graph_signature}
    body = client.get("/v2/models/legacy/versions/1", headers=auth).json()
    assert body["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_a_text_generation_model_refuses_v2_metadata_as_infer_does(
    client: TestClient,
    auth: dict[str, str],
    registry: Registry,
    artifacts: dict[tuple[str, str], Path],
    fmt: str,
) -> None:
    registry.push(artifacts[("text-generation", fmt)], "llm", task="text-generation")
    meta = client.get("/v2/models/llm", headers=auth)
    infer = client.post(
        "/v2/models/llm/infer",
        json={"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]},
        headers=auth,
    )
    assert meta.status_code == infer.status_code == 400
    assert meta.json() == infer.json()
    assert "/v1/chat/completions" in meta.json()["error"]
