"""Job specs are validated strictly before a job is queued."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import maas.jobs
from maas.config import Settings
from maas.errors import InvalidRequestError
from maas.jobs.runner import JobRunner
from maas.jobs.specs import SPEC_KEYS, validate_spec
from maas.registry.store import Registry

JOBS_DIR = Path(maas.jobs.__file__).parent
# Module -> the kinds whose bodies run its code (train's settings and fit's loop serve prune
# and distill).
MODULE_KINDS = {
    "train.py": ("train", "prune", "distill"),
    "fit.py": ("train", "prune", "distill"),
    "evaluate.py": ("evaluate",),
    "optimize.py": ("quantize", "export", "prune", "distill"),
    "comparison.py": ("quantize", "export", "prune", "distill"),
    "onnx_export.py": ("quantize", "export", "prune", "distill"),
    "prune.py": ("prune",),
    "distill.py": ("distill",),
    "selftest.py": ("selftest",),
    "pipeline.py": ("pipeline",),
    "edge.py": ("edge",),
    "training.py": ("train", "prune", "distill"),
    "worker.py": ("train", "quantize", "export", "prune", "distill", "selftest"),
}


def _spec_keys_read(path: Path) -> set[str]:
    """String keys a module reads from a spec: spec.get("k"), spec["k"], helpers' literals."""
    keys: set[str] = set()

    def is_spec(node: ast.expr) -> bool:
        return (isinstance(node, ast.Name) and node.id == "spec") or (
            isinstance(node, ast.Attribute) and node.attr == "spec"
        )

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            func = node.func
            reads_spec = (
                isinstance(func, ast.Attribute) and func.attr == "get" and is_spec(func.value)
            )
            helper = isinstance(func, ast.Name) and func.id in ("opt_int", "_model_ref")
            if helper:  # _model_ref(ctx, "model", "base"): the keys follow ctx
                keys.update(
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                )
            elif reads_spec and isinstance(first, ast.Constant) and isinstance(first.value, str):
                keys.add(first.value)
        if (
            isinstance(node, ast.Subscript)
            and is_spec(node.value)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            keys.add(node.slice.value)
    return keys


@pytest.mark.parametrize("module", sorted(MODULE_KINDS))
def test_every_key_a_job_body_reads_is_declared(module: str) -> None:
    read = _spec_keys_read(JOBS_DIR / module)
    assert read, f"no spec reads found in {module}: the scan is broken"
    declared = set().union(*(SPEC_KEYS[kind] for kind in MODULE_KINDS[module]))
    assert read - declared == set()


def test_an_unknown_key_is_refused_naming_it_and_listing_the_valid_ones() -> None:
    with pytest.raises(InvalidRequestError) as refused:
        validate_spec("prune", {"model": "m:1", "sparsity": 0.5})
    message = refused.value.message
    assert message.startswith("unknown prune spec key 'sparsity'; valid keys: ")
    assert "ffn_fraction" in message and "heads_fraction" in message
    assert refused.value.param == "spec"


def test_a_close_misspelling_gets_a_suggestion() -> None:
    with pytest.raises(InvalidRequestError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        validate_spec("train", {"epoch": 2})


def test_a_wrong_quantization_method_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidRequestError) as refused:
        validate_spec("quantize", {"model": "m:1", "method": "dynamic"})
    assert "method 'dynamic'; expected one of: onnx-int8, onnx-int8-static, torch-int8" in (
        refused.value.message
    )
    validate_spec("quantize", {"model": "m:1", "method": "onnx-int8"})


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        ("train", {"epochs": "three"}, "'epochs' must be an integer, got 'three'"),
        ("train", {"epochs": True}, "'epochs' must be an integer"),
        ("train", {"lr": "fast"}, "'lr' must be a number"),
        ("quantize", {"per_channel": "maybe"}, "'per_channel' must be true or false"),
        ("evaluate", {"model": ""}, "'model' must be a model reference"),
        ("evaluate", {"slice_column": 3}, "'slice_column' must be a string or a list"),
        ("prune", {"format": "tflite"}, "unknown prune format 'tflite'; expected one of: hf, onnx"),
        ("train", {"output": "Bad Name"}, "invalid model name"),
    ],
)
def test_values_of_the_wrong_type_or_outside_their_set_are_refused(
    kind: str, spec: dict[str, object], expected: str
) -> None:
    with pytest.raises(InvalidRequestError, match=expected.replace("(", r"\(")):
        validate_spec(kind, spec)


def test_valid_specs_of_every_kind_pass() -> None:
    validate_spec(
        "train", {"base": "minilm", "dataset": "d:2", "epochs": 1, "lr": 1, "output": "x"}
    )
    validate_spec("evaluate", {"model": "m@production", "dataset": "d", "slice_column": ["a"]})
    validate_spec("quantize", {"model": "m:1", "per_channel": "false", "dataset": None})
    validate_spec("prune", {"model": "m:1", "ffn_fraction": 0.5, "finetune_steps": 10})
    validate_spec("distill", {"teacher": "m:1", "student_layers": 2, "max_steps": 5})
    validate_spec("export", {"model": "m:1", "opset": 17, "tolerance": 1e-4})
    validate_spec("selftest", {"model": "m:1", "metrics": {"f1": 0.5}, "evaluate": True})


def test_the_runner_refuses_a_bad_spec_before_queueing(
    registry: Registry, settings: Settings
) -> None:
    runner = JobRunner(registry, settings)
    try:
        with pytest.raises(InvalidRequestError, match="unknown selftest spec key 'slep'"):
            runner.submit("selftest", {"model": "m:1", "slep": 1})
        assert runner.list_jobs() == []
        assert not settings.jobs_dir.exists() or list(settings.jobs_dir.iterdir()) == []
    finally:
        runner.shutdown()


def test_the_api_answers_400_for_an_unknown_spec_key(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = client.post(
        "/admin/v1/jobs",
        json={"kind": "prune", "spec": {"model": "m:1", "sparsity": 0.5}},
        headers=auth,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "unknown prune spec key 'sparsity'" in error["message"]
    assert error["param"] == "spec"
    assert client.get("/admin/v1/jobs", headers=auth).json() == []
