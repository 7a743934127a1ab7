import json
from pathlib import Path

import pytest

from maas.errors import InvalidRequestError
from maas.registry.formats import detect_format
from tests.helpers import make_hf_dir, make_onnx_file


def test_hf_directory_is_detected_with_parameter_count(hf_dir: Path) -> None:
    detected = detect_format(hf_dir)
    assert detected.format == "hf"
    assert detected.task_hint == "text-classification"
    assert detected.metadata["parameter_count"] == 2 * 8 + 2
    assert detected.metadata["architectures"] == ["BertForSequenceClassification"]


def test_real_minilm_is_detected_as_embeddings(minilm_dir: Path) -> None:
    detected = detect_format(minilm_dir)
    assert detected.format == "hf"
    assert detected.task_hint == "embeddings"
    assert detected.metadata["parameter_count"] == 22_713_728


def test_onnx_file_signature_is_read(onnx_file: Path) -> None:
    detected = detect_format(onnx_file)
    assert detected.format == "onnx"
    assert detected.task_hint == "tensor"
    assert detected.metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert detected.metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    assert detected.metadata["parameter_count"] == 15
    assert detected.metadata["opset"] == 17


def test_maas_native_layout_uses_its_spec(tmp_path: Path) -> None:
    root = make_hf_dir(tmp_path / "native")
    (root / "config.json").unlink()
    (root / "maas.json").write_text(json.dumps({"task": "image-classification", "labels": [0, 1]}))
    detected = detect_format(root)
    assert detected.format == "safetensors"
    assert detected.task_hint == "image-classification"


def test_directory_with_single_onnx_graph(tmp_path: Path) -> None:
    make_onnx_file(tmp_path / "d" / "model.onnx")
    (tmp_path / "d" / "labels.txt").write_text("a\nb\nc\n")
    detected = detect_format(tmp_path / "d")
    assert detected.format == "onnx"
    assert detected.metadata["graph"] == "model.onnx"


def test_unknown_layout_gets_a_helpful_error(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hi")
    with pytest.raises(InvalidRequestError, match=r"config.json \+ \*.safetensors"):
        detect_format(tmp_path / "x")


def test_corrupt_safetensors_header_is_a_clear_error(tmp_path: Path) -> None:
    root = make_hf_dir(tmp_path / "bad")
    (root / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00notjs")
    with pytest.raises(InvalidRequestError, match="corrupt safetensors header"):
        detect_format(root)


def test_invalid_onnx_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf \xff\xff")
    with pytest.raises(InvalidRequestError, match="not a valid ONNX model"):
        detect_format(bad)
