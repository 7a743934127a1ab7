"""Promotion gates and lineage over a real registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from maas.errors import InvalidRequestError
from maas.jobs.gates import Gate, GatesFailedError, check_gates, lineage, promote
from maas.registry.store import Registry


@pytest.fixture
def versions(registry: Registry, hf_dir: Path) -> Registry:
    registry.push(hf_dir, "m", task="text-classification", metrics={"accuracy": 0.8})
    registry.push(
        hf_dir,
        "m",
        task="text-classification",
        parent="m:1",
        job_id="a" * 32,
        metrics={"accuracy": 0.95, "latency_ms_bs1": 12.5, "slices": {"lang=en": {"f1": 0.7}}},
    )
    registry.push(hf_dir, "m-small", task="text-classification", parent="m:2", job_id="b" * 32)
    return registry


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold"),
    [
        ("accuracy>=0.9", "accuracy", ">=", 0.9),
        (" latency_ms_bs1 <= 20 ", "latency_ms_bs1", "<=", 20.0),
        ("slices.lang=en.f1>0.5", "slices.lang=en.f1", ">", 0.5),
        ("loss<1e-3", "loss", "<", 0.001),
        ("errors==0", "errors", "==", 0.0),
        ("drift!=-1", "drift", "!=", -1.0),
    ],
)
def test_gates_parse(text: str, metric: str, op: str, threshold: float) -> None:
    assert Gate.parse(text) == Gate(metric, op, threshold)


@pytest.mark.parametrize("text", ["accuracy", "accuracy>=", ">=0.9", "accuracy=>0.9", "a>=x"])
def test_malformed_gates_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="malformed gate"):
        Gate.parse(text)


def test_gates_read_flat_and_nested_metrics(versions: Registry) -> None:
    results = check_gates(versions.get_version("m:2"), ["accuracy>=0.9", "slices.lang=en.f1>=0.75"])
    assert [(r.value, r.passed) for r in results] == [(0.95, True), (0.7, False)]
    with pytest.raises(InvalidRequestError, match=r"no metric 'recall' \(it has: accuracy,"):
        check_gates(versions.get_version("m:2"), ["recall>0.5"])
    with pytest.raises(InvalidRequestError, match="not a number"):
        check_gates(versions.get_version("m:2"), ["slices>0.5"])


def test_promote_moves_the_alias_only_if_every_gate_holds(versions: Registry) -> None:
    with pytest.raises(GatesFailedError) as refused:
        promote(versions, "m:1", "canary", ["accuracy>=0.9", "accuracy>0.5"], actor="ci")
    assert "accuracy>=0.9 (is 0.8)" in refused.value.message
    assert "accuracy>0.5" not in refused.value.message
    assert [r.passed for r in refused.value.results] == [False, True]
    assert versions.list_aliases("m") == {"production": 1}  # the first version's, unmoved

    result = promote(versions, "m:2", "production", ["accuracy>=0.9", "latency_ms_bs1<=20"])
    assert result.version.ref == "m:2" and result.previous == 1
    assert versions.resolve("m").version == 2
    again = promote(versions, "m:1", "production", [])  # no gates: a plain, recorded move
    assert again.previous == 2
    assert versions.alias_history("m", "production")[1].reason.startswith("promoted; gates:")


def test_lineage_follows_parents_across_models(versions: Registry) -> None:
    chain = lineage(versions, "m-small:1")
    assert [(v.ref, v.job_id) for v in chain] == [
        ("m-small:1", "b" * 32),
        ("m:2", "a" * 32),
        ("m:1", None),
    ]
