"""quantize / export / prune / distill on a real tiny BERT classifier trained by the train job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from maas.errors import InvalidRequestError, MaasError
from maas.jobs import distill, onnx_export, optimize, prune
from maas.jobs.base import JobContext, JobOutput
from maas.jobs.predictors import HFTextPredictor, OnnxTextPredictor
from maas.registry.formats import detect_format
from tests.jobs.ml_fixtures import make_ctx

TEXTS = ["what a superb film", "the soup was awful", "i found the plot boring", "lovely coffee"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def refs(tiny_classifier_dir: Path, sentiment_dataset: Path) -> dict[str, Path]:
    return {"clf": tiny_classifier_dir, "sentiment": sentiment_dataset}


def assert_servable_onnx_classifier(root: Path) -> None:
    """What an ONNX text-classification runtime relies on."""
    detected = detect_format(root)
    assert detected.format == "onnx" and detected.metadata["graph"] == "model.onnx"
    assert detected.metadata["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert detected.metadata["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 2]}
    ]
    config = json.loads((root / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (root / "tokenizer.json").is_file()
    assert not list(root.glob("*.safetensors"))


@pytest.mark.slow
def test_int8_quantization_shrinks_the_graph_and_reports_the_accuracy_delta(
    int8_quantized: tuple[JobContext, JobOutput], tiny_classifier_dir: Path
) -> None:
    ctx, out = int8_quantized  # {"model": "clf", "dataset": "sentiment", "latency_runs": 2}

    assert (out.task, out.format, out.parent, out.new_version) == (
        "text-classification",
        "onnx",
        "clf",
        True,
    )
    assert_servable_onnx_classifier(ctx.output_dir)
    fp32 = (tiny_classifier_dir / "model.safetensors").stat().st_size
    int8 = (ctx.output_dir / "model.onnx").stat().st_size
    assert fp32 / int8 >= 2.5
    assert out.metrics["size_ratio"] == pytest.approx(fp32 / int8)
    assert abs(out.metrics["accuracy_delta"]) <= 0.1
    assert out.metrics["accuracy"] > 0.8
    assert out.metrics["agreement"] >= 0.9  # int8 rarely flips a prediction
    assert 0 < out.metrics["max_prob_diff"] < 0.2
    for key in ("latency_ms_bs1", "latency_ms_bs32", "speedup_bs1", "speedup_bs32"):
        assert out.metrics[key] > 0
    assert out.report_html is not None and "Comparison with the parent" in out.report_html


@pytest.mark.slow
def test_static_int8_is_calibrated_and_holds_the_accuracy_gate(
    tmp_path: Path, refs: dict[str, Path]
) -> None:
    spec = {"model": "clf", "method": "onnx-int8-static", "dataset": "sentiment"}
    ctx = make_ctx(tmp_path, "quantize", {**spec, "latency_runs": 1}, refs)
    out = optimize.quantize(ctx)
    assert_servable_onnx_classifier(ctx.output_dir)
    graph = onnx.load(str(ctx.output_dir / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # activations quantized (QDQ)
    assert "DynamicQuantizeLinear" not in ops
    assert out.params["method"] == "onnx-int8-static"
    rounds = out.params["fallback_rounds"]
    assert rounds and rounds[-1]["drop"] <= 0.01  # held-out split, before the test split
    # The gate holds on the test split too (the tiny model loses nothing here).
    assert out.metrics["accuracy_delta"] >= -0.01 and out.metrics["size_ratio"] >= 2.5


@pytest.mark.slow
def test_static_int8_keeps_the_most_sensitive_matmuls_in_fp32_until_the_gate_holds(
    tmp_path: Path, refs: dict[str, Path]
) -> None:
    """A coarse calibration (the 90th percentile clips a tenth of every activation) loses
    accuracy; the fallback keeps MatMuls in fp32, worst first, until it holds or gives up."""
    spec = {
        "model": "clf",
        "method": "onnx-int8-static",
        "dataset": "sentiment",
        "percentile": 90.0,
        "max_accuracy_drop": 0.0,
        "latency_runs": 1,
    }
    ctx = make_ctx(tmp_path, "quantize", spec, refs)
    try:
        out = optimize.quantize(ctx)
    except MaasError as exc:
        assert "quantizable MatMuls in fp32" in exc.message and "with 0 " not in exc.message
        return
    rounds = out.params["fallback_rounds"]
    assert len(rounds) >= 2 and rounds[0]["drop"] > 0 >= rounds[-1]["drop"]
    kept = out.params["fp32_matmuls_kept"]
    assert len(kept) == rounds[-1]["fp32_matmuls"] > 0
    quantized = {n.name for n in onnx.load(str(ctx.output_dir / "model.onnx")).graph.node}
    assert set(kept) <= quantized  # still there, as plain fp32 MatMuls


def test_torch_int8_is_a_report_on_the_parent(tmp_path: Path, refs: dict[str, Path]) -> None:
    ctx = make_ctx(
        tmp_path,
        "quantize",
        {"model": "clf", "method": "torch-int8", "dataset": "sentiment", "latency_runs": 1},
        refs,
    )
    out = optimize.quantize(ctx)
    assert out.new_version is False and out.parent == "clf"
    assert set(out.metrics) >= {"torch_int8_accuracy_delta", "torch_int8_size_ratio"}
    assert out.metrics["torch_int8_size_ratio"] > 1
    assert not ctx.output_dir.exists() or not any(ctx.output_dir.iterdir())


def test_unknown_quantization_method_is_rejected(tmp_path: Path, refs: dict[str, Path]) -> None:
    ctx = make_ctx(tmp_path, "quantize", {"model": "clf", "method": "fp4"}, refs)
    with pytest.raises(InvalidRequestError, match="unknown quantization method"):
        optimize.quantize(ctx)


@pytest.mark.slow
def test_export_matches_the_model_within_tolerance(
    tmp_path: Path, refs: dict[str, Path], tiny_classifier_dir: Path
) -> None:
    ctx = make_ctx(tmp_path, "export", {"model": "clf", "latency_runs": 1}, refs)
    out = optimize.export(ctx)

    assert out.format == "onnx"
    assert out.metrics["parity_max_abs_diff"] <= 1e-3
    assert_servable_onnx_classifier(ctx.output_dir)
    # Independently: ONNX Runtime on new texts (other lengths, padded batch) agrees with torch.
    onnx_probs = OnnxTextPredictor(ctx.output_dir).predict_proba(TEXTS)
    torch_probs = HFTextPredictor.from_dir(tiny_classifier_dir).predict_proba(TEXTS)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)


def test_parity_beyond_the_tolerance_fails_the_job(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, "export", {"tolerance": 1e-5}, {})
    assert onnx_export.require_parity(2e-6, ctx) == 2e-6
    for diff in (3e-5, float("nan")):
        with pytest.raises(MaasError, match="differs from the model"):
            onnx_export.require_parity(diff, ctx)


def test_ffn_pruning_makes_a_smaller_model_that_reloads(
    tmp_path: Path, refs: dict[str, Path], tiny_classifier_dir: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    ctx = make_ctx(
        tmp_path,
        "prune",
        {
            "model": "clf",
            "ffn_fraction": 0.5,
            "finetune_steps": 2,
            "dataset": "sentiment",
            "batch_size": 8,
            "latency_runs": 1,
        },
        refs,
    )
    out = prune.prune(ctx)

    assert out.format == "hf" and out.params["intermediate_size"] == 32  # of 64
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(ctx.output_dir))
    original = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier_dir))
    assert reloaded.config.intermediate_size == 32
    assert reloaded.bert.encoder.layer[1].intermediate.dense.weight.shape == (32, 32)
    count = sum(p.numel() for p in reloaded.parameters())
    assert count < sum(p.numel() for p in original.parameters())
    assert out.metrics["parameter_count"] == count
    new_size = (ctx.output_dir / "model.safetensors").stat().st_size
    assert new_size < (tiny_classifier_dir / "model.safetensors").stat().st_size
    assert "accuracy_delta" in out.metrics


def test_pruning_keeps_the_neurons_with_the_largest_weights(tiny_classifier_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_classifier_dir))
    layer = model.bert.encoder.layer[0]
    up, down = layer.intermediate.dense.weight.clone(), layer.output.dense.weight.clone()
    score = up.abs().sum(dim=1) + down.abs().sum(dim=0)
    expected = torch.sort(torch.topk(score, 16).indices).values

    assert prune.prune_ffn(model, 0.75) == 16
    assert torch.equal(layer.intermediate.dense.weight, up[expected])
    assert torch.equal(layer.output.dense.weight, down[:, expected])


@pytest.mark.slow
def test_head_pruning_exports_a_smaller_onnx_graph(
    tmp_path: Path, refs: dict[str, Path], tiny_classifier_dir: Path
) -> None:
    ctx = make_ctx(
        tmp_path, "prune", {"model": "clf", "heads_fraction": 0.5, "latency_runs": 1}, refs
    )
    out = prune.prune(ctx)

    assert out.format == "onnx" and out.params["attention_heads_per_layer"] == 2  # of 4
    assert_servable_onnx_classifier(ctx.output_dir)
    original = sum(
        p.numel() for p in HFTextPredictor.from_dir(tiny_classifier_dir).model.parameters()
    )
    # q, k, v lose half their rows and the output projection half its columns, per layer.
    assert original - out.metrics["parameter_count"] == 2 * (3 * (16 * 32 + 16) + 32 * 16)


def test_head_pruning_refuses_the_hf_format(tmp_path: Path, refs: dict[str, Path]) -> None:
    ctx = make_ctx(tmp_path, "prune", {"model": "clf", "heads_fraction": 0.5, "format": "hf"}, refs)
    with pytest.raises(InvalidRequestError, match="use format onnx"):
        prune.prune(ctx)


def test_student_is_initialised_from_evenly_spaced_teacher_layers(tiny_bert_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    assert distill.student_layer_indices(6, 3) == [0, 2, 5]
    assert distill.student_layer_indices(12, 2) == [0, 11]
    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir))
    student, chosen = distill.make_student(teacher, 1)
    assert chosen == [1] and student.config.num_hidden_layers == 1
    for name, value in student.bert.encoder.layer[0].state_dict().items():
        assert torch.equal(value, teacher.bert.encoder.layer[1].state_dict()[name])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)


def test_distilled_student_has_fewer_layers_and_trains(
    tmp_path: Path, refs: dict[str, Path]
) -> None:
    from transformers import AutoModelForSequenceClassification

    ctx = make_ctx(
        tmp_path,
        "distill",
        {
            "teacher": "clf",
            "dataset": "sentiment",
            "student_layers": 1,
            "max_steps": 16,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "temperature": 2.0,
            "alpha": 0.7,
            "latency_runs": 1,
        },
        refs,
    )
    out = distill.distill(ctx)

    student = AutoModelForSequenceClassification.from_pretrained(str(ctx.output_dir))
    assert student.config.num_hidden_layers == 1
    assert out.format == "hf" and out.parent == "clf"
    assert out.params["steps"] == 16
    assert out.metrics["accuracy"] > 0.7  # the student still separates the reviews
    assert out.metrics["size_ratio"] > 1
    assert "accuracy_delta" in out.metrics


def test_a_registered_student_is_distilled_with_the_teachers_labels(
    tmp_path: Path, refs: dict[str, Path], tiny_bert_dir: Path
) -> None:
    ctx = make_ctx(
        tmp_path,
        "distill",
        {
            "teacher": "clf",
            "student": "fresh",
            "dataset": "sentiment",
            "max_steps": 8,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "latency_runs": 1,
        },
        {**refs, "fresh": tiny_bert_dir},
    )
    out = distill.distill(ctx)
    assert out.params["student"] == "fresh" and out.params["teacher_layers"] == []
    assert out.params["steps"] == 8
    config = json.loads((ctx.output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
