"""What the drift monitor measures of one item and the model's answer (``features_of``,
``tensor_features``): plain functions, run on the monitor's worker thread, never per request.

The policy (which features, and why ``tokens_per_char`` stands in for an unknown-token
rate) is in ``serving/monitoring.py``'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CONTINUOUS, CATEGORICAL, VECTOR = "continuous", "categorical", "vector"
# feature -> (side, kind)
FEATURES: dict[str, tuple[str, str]] = {
    "input_chars": ("input", CONTINUOUS),
    "input_tokens": ("input", CONTINUOUS),
    "tokens_per_char": ("input", CONTINUOUS),
    "input_bytes": ("input", CONTINUOUS),
    "label": ("output", CATEGORICAL),
    "confidence": ("output", CONTINUOUS),
    "embedding": ("output", VECTOR),
    "embedding_norm": ("output", CONTINUOUS),
}

Observation = dict[str, Any]  # feature -> value (float, str or np.ndarray)
MAX_TENSOR_COLUMNS = 16


def features_of(item: Any, result: Any) -> Observation:
    """The monitored features of one item and the model's result for it."""
    found: Observation = {}
    tokens = getattr(result, "tokens", None)
    if isinstance(item, str):
        found["input_chars"] = float(len(item))
        if tokens:
            found["input_tokens"] = float(tokens)
            found["tokens_per_char"] = tokens / max(len(item), 1)
    elif isinstance(item, bytes | bytearray):
        found["input_bytes"] = float(len(item))
    elif isinstance(item, list):  # token ids
        found["input_tokens"] = float(len(item))
    labels = getattr(result, "labels", None)
    if labels:
        found["label"] = str(labels[0][0])
        found["confidence"] = float(labels[0][1])
    vector = getattr(result, "vector", None)
    if vector is not None:
        found["embedding"] = vector
        found["embedding_norm"] = float(np.linalg.norm(vector))
    return found


@dataclass(frozen=True, slots=True)
class TensorRequest:
    """One request of a tensor model, kept whole on the hot path, split into rows later."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def tensor_features(request: TensorRequest) -> list[Observation]:
    """One observation per row: every column of every narrow numeric tensor."""
    rows: list[Observation] = []
    for side, tensors in (("input", request.inputs), ("output", request.outputs)):
        for name, array in tensors.items():
            if array.dtype.kind not in "fiub" or array.ndim == 0:
                continue
            table = array.reshape(array.shape[0], -1) if array.ndim > 1 else array[:, None]
            if table.shape[1] > MAX_TENSOR_COLUMNS:
                continue
            values = table.astype(np.float64)  # (rows, columns)
            while len(rows) < len(values):
                rows.append({})
            for i, row in enumerate(values):
                for j, value in enumerate(row):
                    rows[i][f"{side}:{name}[{j}]"] = float(value)
    return rows


def feature_side(name: str) -> str:
    if name in FEATURES:
        return FEATURES[name][0]
    return "output" if name.startswith("output:") else "input"
