"""The keys each job kind's spec accepts, checked before a job is queued.

A job body reads its spec with ``spec.get(key, default)``, so a misspelt or
invented key (``sparsity`` for ``ffn_fraction``) would otherwise be ignored
and the default used in silence. :func:`validate_spec` refuses such a spec at
submit time, naming the key and listing the valid ones, and checks each
value's JSON type and, where there is a fixed set, its value. Ranges and
cross-key rules stay with the bodies, which know them best.

When a body learns a new key, add it here too: ``tests/jobs/test_specs.py``
checks every key a body reads is listed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from maas.errors import InvalidRequestError
from maas.registry.refs import ModelRef, validate_model_name


@dataclass(frozen=True, slots=True)
class SpecKey:
    kind: str  # "ref", "name", "int", "float", "bool", "str", "ints", "strs", "object"
    help: str
    choices: tuple[str, ...] = ()


QUANTIZE_METHODS = ("onnx-int8", "onnx-int8-static", "torch-int8")

_OUTPUT = {
    "output": SpecKey("name", "model that receives the new version"),
    "description": SpecKey("str", "description of the new version"),
}
_TRAINING = {
    "epochs": SpecKey("int", "passes over the train split (default 3)"),
    "max_steps": SpecKey("int", "stop after this many optimizer steps"),
    "batch_size": SpecKey("int", "examples per step (default 16)"),
    "learning_rate": SpecKey("float", "AdamW learning rate"),
    "lr": SpecKey("float", "same as learning_rate"),
    "max_length": SpecKey("int", "tokens per text (default 128)"),
    "weight_decay": SpecKey("float", "AdamW weight decay (default 0.01)"),
    "warmup_ratio": SpecKey("float", "share of steps with a linear warm-up (default 0)"),
    "patience": SpecKey("int", "validations without improvement before stopping (default 2)"),
    "eval_every": SpecKey("int", "steps between validations (default: once per epoch)"),
}
_COMPARISON = {
    "dataset": SpecKey("ref", "text dataset to measure accuracy on"),
    "split": SpecKey("str", "split of the dataset (default test)"),
    "latency_runs": SpecKey("int", "timed runs per latency figure (default 10)"),
}
_SOURCE = {
    "model": SpecKey("ref", "the version to work on"),
    "base": SpecKey("ref", "same as model"),
}
_ONNX = {
    "opset": SpecKey("int", "ONNX opset (default 17)"),
    "tolerance": SpecKey("float", "largest |logits difference| allowed after export (1e-3)"),
}

SPEC_KEYS: dict[str, dict[str, SpecKey]] = {
    "train": {
        "base": SpecKey("ref", "model to fine-tune (optional for image datasets)"),
        "model": SpecKey("ref", "same as base"),
        "dataset": SpecKey("ref", "dataset to train on"),
        **_TRAINING,
        "nproc": SpecKey("int", "processes for data-parallel training (default 1)"),
        "embedding_size": SpecKey("int", "image model from scratch: stem width (16)"),
        "hidden_sizes": SpecKey("ints", "image model from scratch: stage widths ([16, 32])"),
        "depths": SpecKey("ints", "image model from scratch: blocks per stage ([1, 1])"),
        **_OUTPUT,
    },
    "evaluate": {
        "model": SpecKey("ref", "the version to evaluate"),
        "dataset": SpecKey("ref", "dataset to score on"),
        "split": SpecKey("str", "split to score (default test)"),
        "batch_size": SpecKey("int", "examples per forward pass (default 32)"),
        "latency_runs": SpecKey("int", "timed runs per latency figure (default 10)"),
        "slice_column": SpecKey("strs", "column(s) to compute per-slice metrics on"),
        "slice_gap_threshold": SpecKey("float", "flag slices this far below overall (0.1)"),
        "min_slice_size": SpecKey("int", "smallest slice that counts (default 5)"),
    },
    "quantize": {
        **_SOURCE,
        "method": SpecKey(
            "str",
            "onnx-int8 (default): ONNX Runtime dynamic int8, a new ONNX version; "
            "onnx-int8-static: weights and activations int8, calibrated on the dataset, "
            "accuracy-aware; torch-int8: torch dynamic int8 of the Linear layers, "
            "measured and reported only",
            QUANTIZE_METHODS,
        ),
        "per_channel": SpecKey("bool", "one int8 scale per output channel (default true)"),
        "calibration_split": SpecKey("str", "static: split whose texts set the scales (train)"),
        "calibration_size": SpecKey("int", "static: calibration texts (default 128)"),
        "max_accuracy_drop": SpecKey(
            "float", "static: largest accuracy drop on the held-out split (default 0.01)"
        ),
        "percentile": SpecKey("float", "static: percentile of calibration values (99.99)"),
        "opset": _ONNX["opset"],
        **_COMPARISON,
        "tolerance": _ONNX["tolerance"],
        **_OUTPUT,
    },
    "export": {**_SOURCE, **_ONNX, **_COMPARISON, **_OUTPUT},
    "prune": {
        **_SOURCE,
        "ffn_fraction": SpecKey("float", "share of FFN neurons removed per layer (0.5)"),
        "heads_fraction": SpecKey("float", "share of attention heads removed per layer (0)"),
        "finetune_steps": SpecKey("int", "steps of fine-tuning on dataset after pruning (0)"),
        "format": SpecKey(
            "str", "hf or onnx (default: onnx when heads are removed, else hf)", ("hf", "onnx")
        ),
        **_ONNX,
        **_COMPARISON,
        **{k: v for k, v in _TRAINING.items() if k != "max_steps"},  # finetune_steps sets it
        **_OUTPUT,
    },
    "distill": {
        "teacher": SpecKey("ref", "the model to learn from"),
        "model": SpecKey("ref", "same as teacher"),
        "student": SpecKey("ref", "a smaller registered model (default: the teacher cut)"),
        "student_layers": SpecKey("int", "layers kept when cutting the teacher (half)"),
        "temperature": SpecKey("float", "softmax temperature of the soft targets (2.0)"),
        "alpha": SpecKey("float", "weight of the soft-target loss, 0..1 (0.5)"),
        **_COMPARISON,
        **_TRAINING,
        **_OUTPUT,
    },
    "pipeline": {
        "model": SpecKey("name", "the model to retrain; its new version is the candidate"),
        "dataset": SpecKey("str", "dataset name (its newest ready version) or name:version"),
        "base": SpecKey("ref", "version to train from (default: the model's production)"),
        **_TRAINING,
        "split": SpecKey("str", "split to evaluate on (default test)"),
        "slice_column": SpecKey("strs", "column(s) to compute per-slice metrics on"),
        "slice_gap_threshold": SpecKey("float", "flag slices this far below overall (0.1)"),
        "min_slice_size": SpecKey("int", "smallest slice that counts (default 5)"),
        "gates": SpecKey("strs", "promotion gates, e.g. accuracy>=0.8 (all must hold)"),
        "rollout": SpecKey("object", "the canary rollout: steps, step_seconds, criteria"),
        "schedule": SpecKey("str", "the schedule that started this run (set by it)"),
        "scheduled_for": SpecKey("str", "the time the run was due (set by the schedule)"),
    },
    "edge": {
        **_SOURCE,
        "target": SpecKey(
            "str",
            "onnx-int8 (default): an int8 graph (an int8 version as it is, else quantized); "
            "onnx: fp32",
            ("onnx-int8", "onnx"),
        ),
        "tolerance": SpecKey("float", "largest |output difference| allowed after export (1e-3)"),
    },
    "selftest": {
        "model": SpecKey("ref", "the version copied into the new one"),
        "sleep": SpecKey("float", "seconds to wait (cancellable)"),
        "fail": SpecKey("str", "fail with this message"),
        "metrics": SpecKey("object", "metrics of the new version"),
        "evaluate": SpecKey("bool", "record the metrics on model instead of a new version"),
        **_OUTPUT,
    },
}

_TYPE_NAMES = {
    "ref": "a model reference (name, name:3, name@alias)",
    "name": "a model name",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "ints": "a list of integers",
    "strs": "a string or a list of strings",
    "object": "a JSON object",
}


def describe_keys(kind: str) -> str:
    """One line per key, for help texts: ``key: help``."""
    return "\n".join(f"{key}: {spec.help}" for key, spec in SPEC_KEYS[kind].items())


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool) or (
            isinstance(value, str) and value.lower() in ("true", "false")
        )
    if kind in ("str", "ref", "name"):
        return isinstance(value, str) and (kind == "str" or bool(value))
    if kind == "ints":
        return isinstance(value, list) and all(_type_ok("int", v) for v in value)
    if kind == "strs":
        return isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
    return isinstance(value, dict)  # "object"


def validate_spec(kind: str, spec: dict[str, Any]) -> None:
    """Refuse unknown keys, values of the wrong type and values outside a fixed set."""
    keys = SPEC_KEYS.get(kind)
    if keys is None:  # the runner refuses unknown kinds before this
        return
    valid = ", ".join(sorted(keys))
    for key, value in spec.items():
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidRequestError(
                f"unknown {kind} spec key {key!r}{hint}; valid keys: {valid}", param="spec"
            )
        rule = keys[key]
        if value is None:
            continue  # the same as leaving the key out
        if not _type_ok(rule.kind, value):
            raise InvalidRequestError(
                f"{kind} spec key {key!r} must be {_TYPE_NAMES[rule.kind]}, got {value!r}",
                param="spec",
            )
        if rule.choices and value not in rule.choices:
            raise InvalidRequestError(
                f"unknown {kind} {key} {value!r}; expected one of: "
                f"{', '.join(rule.choices)} ({rule.help})",
                param="spec",
            )
        if rule.kind == "ref":
            ModelRef.parse(value)
        elif rule.kind == "name":
            validate_model_name(value)
