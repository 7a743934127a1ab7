"""The evaluate job: metrics checked against scikit-learn, slices, ONNX and image versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from maas.jobs import evaluate, train
from maas.jobs.base import JobContext, JobOutput
from maas.jobs.dataset_files import read_dataset, read_split, targets
from maas.jobs.metrics import classification_metrics, expected_calibration_error, slice_metrics
from maas.jobs.predictors import HFTextPredictor
from tests.jobs.ml_fixtures import make_ctx

GATE_KEYS = {
    "accuracy",
    "macro_f1",
    "ece",
    "latency_ms_bs1",
    "latency_ms_bs32",
    "size_bytes",
    "slice_gap",
    "slice_gap_flagged",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE written the long way: loop over examples, assign each to its bin."""
    totals = [[0, 0.0, 0.0] for _ in range(bins)]  # count, correct, confidence
    for row, label in zip(probs, y, strict=True):
        confidence = float(row.max())
        b = min(bins - 1, max(0, int(np.ceil(confidence * bins)) - 1))
        totals[b][0] += 1
        totals[b][1] += float(row.argmax() == label)
        totals[b][2] += confidence
    return sum(abs(c - conf) / len(y) for n, c, conf in totals if n)


def test_metrics_match_scikit_learn_on_random_predictions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4))
    logits[np.arange(200), y] += 1.0  # better than chance
    logits[:, 3] -= 5.0  # class 3 is almost never predicted: zero-division paths
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)

    got = classification_metrics(y, probs, ["a", "b", "c", "d"])

    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert got["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3], zero_division=0)
    for i, name in enumerate("abcd"):
        assert got["per_class"][name]["precision"] == pytest.approx(p[i])
        assert got["per_class"][name]["recall"] == pytest.approx(r[i])
        assert got["per_class"][name]["f1"] == pytest.approx(f[i])
        assert got["per_class"][name]["support"] == s[i]
    assert got["ece"] == pytest.approx(reference_ece(probs, y))
    assert expected_calibration_error(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) == 0.0


def test_slice_gap_is_the_best_minus_worst_accuracy_among_large_slices() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    pred = np.array([1, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    column = ["a"] * 4 + ["b"] * 4 + ["tiny"] * 2
    got = slice_metrics(y, pred, column, threshold=0.4, min_size=3)
    assert got["slices"]["tiny"] == {"n": 2, "accuracy": 0.0}
    assert got["gap"] == pytest.approx(0.5)  # a: 1.0, b: 0.5; tiny is too small to count
    assert (got["best"], got["worst"], got["flagged"]) == ("a", "b", True)


def test_evaluation_matches_scikit_learn_on_the_models_own_predictions(
    tmp_path: Path, tiny_classifier_dir: Path, sentiment_dataset: Path
) -> None:
    ctx = make_ctx(
        tmp_path,
        "evaluate",
        {"model": "clf", "dataset": "sentiment", "latency_runs": 2},
        {"clf": tiny_classifier_dir, "sentiment": sentiment_dataset},
    )
    out = evaluate.run(ctx)

    assert (out.new_version, out.parent, out.format) == (False, "clf", "hf")
    assert set(out.metrics) == GATE_KEYS
    # The same predictions computed independently, scored by scikit-learn.
    dataset = read_dataset(sentiment_dataset)
    records = read_split(dataset, "test")
    y = targets(records, dataset)
    probs = HFTextPredictor.from_dir(tiny_classifier_dir).predict_proba(
        [r["text"] for r in records]
    )
    pred = probs.argmax(axis=1)
    assert out.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert out.metrics["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert out.report["quality"]["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert out.metrics["ece"] == pytest.approx(reference_ece(probs, y), abs=1e-6)
    assert out.metrics["size_bytes"] == sum(
        p.stat().st_size for p in tiny_classifier_dir.rglob("*") if p.is_file()
    )
    assert out.metrics["latency_ms_bs1"] > 0 and out.metrics["latency_ms_bs32"] > 0
    domain = np.array([r["domain"] for r in records])
    by_domain = [float((pred == y)[domain == d].mean()) for d in ("food", "movies")]
    assert out.metrics["slice_gap"] == pytest.approx(abs(by_domain[0] - by_domain[1]))
    assert out.metrics["slice_gap_flagged"] is (out.metrics["slice_gap"] > 0.1)
    assert out.report_html is not None and "Confusion matrix" in out.report_html


def test_a_slice_the_model_fails_is_flagged(
    tmp_path: Path, tiny_classifier_dir: Path, skewed_dataset: Path
) -> None:
    refs = {"clf": tiny_classifier_dir, "skewed": skewed_dataset}
    spec = {"model": "clf", "dataset": "skewed", "slice_column": "domain", "latency_runs": 1}
    out = evaluate.run(make_ctx(tmp_path, "evaluate", spec, refs))

    slices = out.report["slices"]["domain"]
    assert slices["best"] == "food" and slices["worst"] == "movies"
    assert out.metrics["slice_gap"] > 0.5
    assert out.metrics["slice_gap_flagged"] is True
    assert out.report_html is not None and "Slices by domain" in out.report_html

    lenient = evaluate.run(
        make_ctx(tmp_path / "b", "evaluate", {**spec, "slice_gap_threshold": 1.0}, refs)
    )
    assert lenient.metrics["slice_gap_flagged"] is False


@pytest.mark.slow
def test_an_int8_onnx_version_evaluates_like_its_parent(
    tmp_path: Path,
    tiny_classifier_dir: Path,
    sentiment_dataset: Path,
    int8_quantized: tuple[JobContext, JobOutput],
) -> None:
    refs = {"clf": tiny_classifier_dir, "sentiment": sentiment_dataset}
    quantized, _ = int8_quantized  # the quantize job's version of clf
    refs["clf-int8"] = quantized.output_dir
    spec = {"dataset": "sentiment", "latency_runs": 1}
    onnx_eval = evaluate.run(
        make_ctx(tmp_path / "a", "evaluate", {**spec, "model": "clf-int8"}, refs)
    )
    hf_eval = evaluate.run(make_ctx(tmp_path / "b", "evaluate", {**spec, "model": "clf"}, refs))

    assert onnx_eval.format == "onnx"
    assert abs(onnx_eval.metrics["accuracy"] - hf_eval.metrics["accuracy"]) <= 0.1
    assert onnx_eval.metrics["size_bytes"] < hf_eval.metrics["size_bytes"]


def test_an_image_classifier_evaluates_as_it_was_trained(
    tmp_path: Path, digits_dataset: Path
) -> None:
    refs = {"digits": digits_dataset}
    trained = make_ctx(
        tmp_path, "train", {"dataset": "digits", "epochs": 1, "batch_size": 32}, refs
    )
    train_out = train.run(trained)
    refs["cnn"] = trained.output_dir
    out = evaluate.run(
        make_ctx(
            tmp_path / "e",
            "evaluate",
            {"model": "cnn", "dataset": "digits", "latency_runs": 1},
            refs,
        )
    )
    assert out.task == "image-classification"
    # Same preprocessing in training and evaluation: the same test accuracy.
    assert out.metrics["accuracy"] == pytest.approx(train_out.metrics["accuracy"])
    assert len(out.report["quality"]["confusion_matrix"]) == 10
