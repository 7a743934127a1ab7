"""Builders for real, small model artifacts used across the suite."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file


def make_hf_dir(root: Path, *, hidden: int = 8, seed: int = 0) -> Path:
    """A Hugging Face style directory: config.json + model.safetensors (real tensors)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": hidden,
        "id2label": {"0": "neg", "1": "pos"},
    }
    (root / "config.json").write_text(json.dumps(config))
    save_file(
        {
            "classifier.weight": rng.standard_normal((2, hidden)).astype(np.float32),
            "classifier.bias": np.zeros(2, dtype=np.float32),
        },
        str(root / "model.safetensors"),
    )
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\nworld\n")
    return root


def make_onnx_file(path: Path) -> Path:
    """A real ONNX graph: y = x @ W + b with W (4, 3)."""
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    bias = numpy_helper.from_array(np.ones(3, dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tar_bytes(files: dict[str, bytes], *, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_of_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(root).as_posix())
    return buf.getvalue()


def tar_with_symlink(target: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"{}"
        info = tarfile.TarInfo("config.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("model.safetensors")
        link.type = tarfile.SYMTYPE
        link.linkname = target
        tar.addfile(link)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def blob_count(home: Path) -> int:
    root = home / "blobs" / "sha256"
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def leftover_temp_files(home: Path) -> list[Path]:
    found: list[Path] = []
    for sub in (home / "tmp", home / "blobs" / "tmp"):
        if sub.exists():
            found.extend(p for p in sub.rglob("*") if not p.name.startswith("ready-"))
    return found


def make_tiny_image_classifier(root: Path) -> Path:
    """A tiny random ViT image classifier saved the Hugging Face way, 32x32 RGB, 10 labels.

    config.json + model.safetensors + preprocessor_config.json (ViT recipe:
    bilinear resize to 32x32, rescale by 1/255, normalise with mean = std = 0.5).
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    root.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        id2label={i: f"digit-{i}" for i in range(10)},
        label2id={f"digit-{i}": i for i in range(10)},
    )
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(0)
        model = ViTForImageClassification(config)
    model.save_pretrained(str(root), safe_serialization=True)
    preprocessor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (root / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return root
