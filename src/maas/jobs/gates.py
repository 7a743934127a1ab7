"""Promotion gates and lineage: move an alias only when a version's metrics clear every bar.

A gate is ``<metric> <op> <number>`` with ``op`` one of ``>= <= > < == !=``,
e.g. ``accuracy>=0.9`` or ``latency_ms_bs1<=20``. A metric is looked up in the
version's metrics by its full name first, then as a dotted path into nested
metrics (``test.accuracy``, ``slices.lang=en.f1``). A malformed gate, a
metric the version lacks, or a metric that is not a number is a 400; a gate
that does not hold refuses the promotion (409) and names every failing gate.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from maas.errors import ConflictError, InvalidRequestError
from maas.registry.refs import ModelRef, validate_alias
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_GATE_RE = re.compile(
    r"^\s*(?P<metric>[^\s<>!=](?:[^\s<>!]*?[^\s<>!=])?)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
MAX_LINEAGE = 1000


@dataclass(frozen=True, slots=True)
class Gate:
    metric: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = _GATE_RE.match(text)
        if match is None:
            raise InvalidRequestError(
                f"malformed gate {text!r}: expected <metric><op><number> with op one of "
                f"{' '.join(_OPS)}, e.g. 'accuracy>=0.9'",
                param="require",
            )
        return cls(match["metric"], match["op"], float(match["value"]))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


class GateResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    gate: str
    metric: str
    op: str
    threshold: float
    value: float
    passed: bool


class PromotionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    alias: str
    previous: int | None
    version: VersionInfo
    gates: list[GateResult]


class GatesFailedError(ConflictError):
    """At least one gate does not hold; the alias did not move."""

    code = "gates_failed"

    def __init__(self, message: str, results: list[GateResult]) -> None:
        super().__init__(message, param="require")
        self.results = results


def _flatten(metrics: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name


def metric_value(version: VersionInfo, name: str) -> float:
    """The number a gate compares: ``name`` itself, else a dotted path into nested metrics."""
    metrics = version.metrics
    found: Any
    if name in metrics:
        found = metrics[name]
    else:
        node: Any = metrics
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(sorted(_flatten(metrics))) or "none"
                raise InvalidRequestError(
                    f"{version.ref} has no metric {name!r} (it has: {known})", param="require"
                )
            node = node[part]
        found = node
    if isinstance(found, bool) or not isinstance(found, (int, float)) or math.isnan(found):
        raise InvalidRequestError(
            f"metric {name!r} of {version.ref} is {found!r}, not a number", param="require"
        )
    return float(found)


def check_gates(version: VersionInfo, require: list[str]) -> list[GateResult]:
    """Evaluate every gate (all of them, so a refusal can list each failure)."""
    gates = [Gate.parse(text) for text in require]
    results = []
    for gate in gates:
        value = metric_value(version, gate.metric)
        results.append(
            GateResult(
                gate=str(gate),
                metric=gate.metric,
                op=gate.op,
                threshold=gate.threshold,
                value=value,
                passed=_OPS[gate.op](value, gate.threshold),
            )
        )
    return results


def promote(
    registry: Registry,
    ref: str,
    alias: str,
    require: list[str],
    *,
    actor: str | None = None,
    reason: str = "",
) -> PromotionResult:
    """Point ``alias`` at the version ``ref`` if every gate in ``require`` holds."""
    validate_alias(alias)
    version = registry.get_version(ModelRef.parse(ref))
    results = check_gates(version, require)
    failing = [r for r in results if not r.passed]
    if failing:
        listed = "; ".join(f"{r.gate} (is {r.value:g})" for r in failing)
        raise GatesFailedError(
            f"{version.ref} was not promoted to {alias}: {len(failing)} gate(s) failed: {listed}",
            results,
        )
    previous = registry.list_aliases(version.model).get(alias)
    note = reason or (
        "promoted; gates: " + ", ".join(r.gate for r in results) if results else "promoted"
    )
    moved = registry.set_alias(version.model, alias, version.version, actor=actor, reason=note)
    return PromotionResult(
        model=version.model, alias=alias, previous=previous, version=moved, gates=results
    )


def lineage(registry: Registry, ref: str) -> list[VersionInfo]:
    """The version and its ancestors, nearest first (parent links, across models)."""
    chain = [registry.get_version(ModelRef.parse(ref))]
    seen = {chain[0].ref}
    while chain[-1].parent is not None and len(chain) < MAX_LINEAGE:
        parent = registry.get_version(ModelRef.parse(chain[-1].parent))
        if parent.ref in seen:  # pragma: no cover - versions are immutable, so no cycles
            break
        seen.add(parent.ref)
        chain.append(parent)
    return chain
