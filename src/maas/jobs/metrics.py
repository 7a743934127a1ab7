"""Metrics of a classifier, computed with numpy from the confusion matrix (the tests check
them against scikit-learn): accuracy, macro-F1, per-class scores, calibration (ECE),
accuracy per slice; and the latency and size of a model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maas.jobs.predictors import Predictor

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels, n_labels) counts: rows are true labels, columns predictions."""
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # 0/0 counts as 0 (scikit-learn's zero_division=0).
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by size.

    Confidence is the top probability; bin b holds confidences in (b/B, (b+1)/B]
    (the first bin also holds 0).
    """
    if len(y_true) == 0:
        return 0.0
    confidence = probs.max(axis=1)  # (n,)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)  # (n,)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = abs(correct[members].mean() - confidence[members].mean())
            ece += members.mean() * gap
    return float(ece)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix, ECE."""
    n_labels = len(label_names)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    matrix = confusion_matrix(y_true, y_pred, n_labels)
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = matrix.sum()
    return {
        "n": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.tolist(),
        "ece": expected_calibration_error(probs, y_true) if total else 0.0,
    }


def slice_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    values: Sequence[Any],
    *,
    threshold: float,
    min_size: int,
) -> dict[str, Any]:
    """Accuracy per value of one column, and the best-worst gap among large-enough slices."""
    groups: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(str(value), []).append(i)
    slices = {}
    for value, rows in sorted(groups.items()):
        idx = np.array(rows)
        slices[value] = {
            "n": len(rows),
            "accuracy": float((y_true[idx] == y_pred[idx]).mean()),
        }
    eligible = {k: v["accuracy"] for k, v in slices.items() if v["n"] >= min_size}
    gap = max(eligible.values()) - min(eligible.values()) if len(eligible) >= 2 else 0.0
    return {
        "slices": slices,
        "gap": float(gap),
        "flagged": bool(gap > threshold),
        "best": max(eligible, key=lambda k: eligible[k]) if eligible else None,
        "worst": min(eligible, key=lambda k: eligible[k]) if eligible else None,
    }


def measure_latency_ms(
    predictor: Predictor, items: Sequence[Any], batch_size: int, runs: int
) -> float:
    """Median wall time (ms) of one ``predict_proba`` of ``batch_size`` items, end to end.

    End to end means tokenisation (or image decoding) plus the forward pass:
    what a served request pays. Items are cycled when there are fewer than the batch.
    """
    if not items:
        return 0.0
    batch = [items[i % len(items)] for i in range(batch_size)]
    predictor.predict_proba(batch)  # warm-up: first calls allocate
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        predictor.predict_proba(batch)
        times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
