"""DriftMonitor: watches what each served version is asked and answers, against a reference.

Composed into the data plane (``DataPlane.compose``), like the batcher into a
loaded model: the data plane hands it each request's items and results; it
never wraps or patches a model.

Policy
------
* **The hot path only appends.** ``observe`` puts the request's ``(items,
  results)`` on the version's buffer (one append, one addition, one clock read)
  and, when a quarter window of new items has come and
  ``monitoring_interval_seconds`` have passed since the last analysis, starts
  one on a worker thread. Features are extracted there, not per request. The
  buffer is bounded at two windows: under a load faster than the analyses,
  the oldest requests are dropped, never the process's memory.
* **Features** (``features_of``): input length in characters, tokens, tokens
  per character (a text in a language or jargon the vocabulary does not cover
  splits into more, shorter tokens: the cheap stand-in for an unknown-token
  rate, which WordPiece vocabularies rarely emit), and for outputs the predicted
  label and its probability (classifiers), the embedding and its norm
  (embedding models). Images: input size in bytes, and the outputs. Tensor
  models: each column of each numeric input and output tensor of at most
  ``MAX_TENSOR_COLUMNS`` columns (``input:x[0]``, ``output:y[2]``), one value
  per row; wider tensors (images, sequences) are not watched column by column.
* **Reference.** The version's training data when its lineage names a dataset
  (``params["dataset"]``, which the train job writes): a sample of the
  dataset's train split of one window is run through the model once, so that
  outputs have a reference too. Otherwise, or when that fails, the first full
  window served after the monitor saw the version (a *baseline window*).
* **Analysis** (``serving.monitoring_stats``): once the current window is
  full, every feature is tested against the reference; a feature *crosses*
  when its p-value is below ``monitoring_alpha`` *and* the change is big enough
  to matter (``MIN_EFFECT``: a KS distance of 0.1, a label PSI of 0.1, the
  usual "no significant change" bound). A p-value alone flags ever smaller
  changes as windows grow, and at 500 items a 50/50 label mix that came out
  60/40 by chance (PSI 0.04) was one of the false alarms measured without the
  floor. Windows slide: each analysis takes the newest ``window`` items.
* **Alerts.** A version starts drifting when some feature has crossed in
  ``CONFIRMATIONS`` analyses in a row, and stops when none has in as many;
  each transition is one webhook alert (``serving.monitoring_alerts``), sent
  in the background. Why confirm: with five or six features tested at
  ``alpha`` = 0.001 per analysis, about 0.6 % of analyses of an unchanged
  stream cross by chance (measured: 3 of 520); a crossing that lasts two
  overlapping windows is far less likely to be chance, and a real shift stays
  crossed. It costs one step (a quarter window) of delay.

Results: the ``maas_drift_*`` gauges, and ``report`` / ``version_report`` for
the monitoring route — and for a rollout that wants to read a candidate's
drift. With ``maas serve --workers N`` each worker process monitors the
requests it handles (a random share of the traffic: the same distribution, a
window fills N times slower).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import numpy as np
from prometheus_client import Counter, Gauge

from maas.registry.schemas import VersionInfo
from maas.serving.metrics import ServingMetrics
from maas.serving.monitoring_features import (
    CATEGORICAL,
    CONTINUOUS,
    FEATURES,
    VECTOR,
    Observation,
    TensorRequest,
    feature_side,
    features_of,
    tensor_features,
)
from maas.serving.monitoring_stats import TestOutcome, ks_test, label_test, mmd_test

log = logging.getLogger(__name__)

CONFIRMATIONS = 2  # analyses in a row that must agree before the drifting state flips
# Smallest change that counts, by test: the KS distance D, the label PSI (MMD: none).
MIN_EFFECT = {"ks": 0.1, "chi2": 0.1}
# Runs items through the version (the host's predict): how a dataset reference gets outputs.
Predict = Callable[[VersionInfo, list[Any]], Awaitable[list[Any]]]
# Finds the texts of the version's training data (a worker thread calls it); None: none.
ReferenceTexts = Callable[[VersionInfo, int], tuple[str, list[str]] | None]
AlertSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class FeatureResult:
    feature: str
    side: str
    outcome: TestOutcome
    threshold: float
    min_effect: float | None
    crossed: bool
    reference_items: int
    window_items: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "side": self.side,
            **self.outcome.as_dict(),
            "threshold": self.threshold,
            "min_effect": self.min_effect,
            "crossed": self.crossed,
            "reference_items": self.reference_items,
            "window_items": self.window_items,
        }


@dataclass(frozen=True, slots=True)
class VersionReport:
    """The latest drift analysis of one served version (what a rollout could read)."""

    model: str
    version: int
    reference: dict[str, Any]  # {"kind": "dataset"|"baseline", "source": ..., "items": n}
    observed_items: int
    analyses: int
    analysed_at: datetime | None
    drifting: bool
    features: tuple[FeatureResult, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "reference": self.reference,
            "observed_items": self.observed_items,
            "analyses": self.analyses,
            "analysed_at": self.analysed_at.isoformat() if self.analysed_at else None,
            "drifting": self.drifting,
            "features": [f.as_dict() for f in self.features],
        }


@dataclass(slots=True)
class _Windows:
    """Per feature, a bounded window of values."""

    size: int
    values: dict[str, deque[Any]] = field(default_factory=dict)

    def add(self, observation: Observation) -> None:
        for name, value in observation.items():
            window = self.values.get(name)
            if window is None:
                window = self.values[name] = deque(maxlen=self.size)
            window.append(value)

    def full(self) -> bool:
        return bool(self.values) and all(len(w) == self.size for w in self.values.values())


class _VersionState:
    def __init__(self, version: VersionInfo, window: int) -> None:
        self.version = version
        self.window = window
        self.buffer: deque[tuple[Sequence[Any], Sequence[Any]]] = deque()
        self.buffered = 0  # items in buffer
        self.new_items = 0  # since the last analysis started
        self.observed = 0
        self.last_started = -math.inf
        self.running = False
        self.reference: _Windows | None = None  # None: being captured (baseline)
        self.reference_doc: dict[str, Any] = {"kind": "baseline", "source": None, "items": 0}
        self.reference_pending = True  # a dataset reference is being looked up
        self.capture = _Windows(window)  # the baseline window while it fills
        self.current = _Windows(window)
        self.analyses = 0
        self.streak = 0  # analyses in a row that disagree with ``drifting``
        self.drifting = False
        self.report: VersionReport | None = None


class DriftMonitor:
    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        window: int = 500,
        interval_seconds: float = 30.0,
        alpha: float = 0.001,
        permutations: int = 1999,
        predict: Predict | None = None,
        reference_texts: ReferenceTexts | None = None,
        alert: AlertSink | None = None,
    ) -> None:
        self.window = window
        self.step = max(1, window // 4)
        self.interval = interval_seconds
        self.alpha = alpha
        # A permutation p-value is at least 1 / (permutations + 1): enough of them that MMD
        # can go below alpha at all (1999 at the default 0.001; a smaller alpha costs more).
        self.permutations = max(permutations, math.ceil(2 / alpha))
        self._predict = predict
        self._reference_texts = reference_texts
        self._alert = alert
        self._states: dict[str, _VersionState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        r = metrics.registry
        labels = ["model", "version", "feature"]
        self.score = Gauge(
            "maas_drift_score",
            "Drift test statistic of a feature against its reference (KS D, chi-square, MMD²)",
            labels,
            registry=r,
        )
        self.p_value = Gauge(
            "maas_drift_p_value",
            "p-value of the latest drift test of a feature",
            labels,
            registry=r,
        )
        self.crossed = Gauge(
            "maas_drift_alert",
            "1 while a feature's drift p-value is below the threshold (MAAS_MONITORING_ALPHA)",
            labels,
            registry=r,
        )
        self.analysis_seconds = Counter(
            "maas_drift_analysis_seconds",
            "Time spent in drift analyses (worker threads, off the request path)",
            ["model"],
            registry=r,
        )

    # ------------------------------------------------------------------ hot path

    def observe(self, version: VersionInfo, items: Sequence[Any], results: Sequence[Any]) -> None:
        """Note one request's items and results; never blocks and never raises."""
        state = self._states.get(version.ref)
        if state is None:
            state = self._start_version(version)
        state.buffer.append((items, results))
        count = len(items)
        state.buffered += count
        state.new_items += count
        state.observed += count
        if state.buffered > 2 * self.window:  # analyses lag behind: keep the newest
            dropped, _ = state.buffer.popleft()
            state.buffered -= len(dropped)
        if (
            state.new_items >= self.step
            and not state.running
            and not state.reference_pending
            and time.monotonic() - state.last_started >= self.interval
        ):
            state.running = True  # before the task runs: the next request must not spawn one
            self._spawn(self._analyse(state))

    def observe_tensors(
        self, version: VersionInfo, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        """Note one tensor request (counted as one item; its rows are split off the loop)."""
        self.observe(version, [TensorRequest(inputs, outputs)], [None])

    # ------------------------------------------------------------------- reading

    @property
    def busy(self) -> bool:
        """True while an analysis or a reference lookup runs."""
        return bool(self._tasks)

    async def settle(self) -> None:
        """Wait until no analysis or reference lookup runs (tests and benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def version_report(self, model: str, version: int) -> VersionReport | None:
        state = self._states.get(f"{model}:{version}")
        if state is None:
            return None
        return state.report or self._empty_report(state)

    def report(self, model: str) -> list[VersionReport]:
        found = [
            state.report or self._empty_report(state)
            for state in self._states.values()
            if state.version.model == model
        ]
        return sorted(found, key=lambda r: r.version)

    def _empty_report(self, state: _VersionState) -> VersionReport:
        return VersionReport(
            state.version.model,
            state.version.version,
            dict(state.reference_doc),
            state.observed,
            0,
            None,
            False,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------------- background

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_version(self, version: VersionInfo) -> _VersionState:
        state = _VersionState(version, self.window)
        self._states[version.ref] = state
        if self._reference_texts is not None and self._predict is not None:
            self._spawn(self._dataset_reference(state))
        else:
            state.reference_pending = False
        return state

    async def _dataset_reference(self, state: _VersionState) -> None:
        """The model's own answers on a sample of its training data, as the reference."""
        version = state.version
        assert self._reference_texts is not None and self._predict is not None
        try:
            found = await anyio.to_thread.run_sync(self._reference_texts, version, self.window)
            if found is not None:
                source, texts = found
                results: list[Any] = []
                for start in range(0, len(texts), 32):
                    results.extend(await self._predict(version, texts[start : start + 32]))
                reference = _Windows(max(len(texts), 1))
                for text, result in zip(texts, results, strict=True):
                    reference.add(features_of(text, result))
                state.reference = reference
                state.reference_doc = {"kind": "dataset", "source": source, "items": len(texts)}
        except Exception:  # a missing or unreadable dataset: fall back to a baseline window
            log.warning("drift reference of %s: its training data is unusable", version.ref)
            log.debug("reference failure", exc_info=True)
        finally:
            state.reference_pending = False

    async def _analyse(self, state: _VersionState) -> None:
        state.last_started = time.monotonic()
        state.new_items = 0
        batch = list(state.buffer)
        state.buffer.clear()
        state.buffered = 0
        started = time.perf_counter()
        try:
            report = await anyio.to_thread.run_sync(self._analyse_sync, state, batch)
        except Exception:
            log.exception("drift analysis of %s failed", state.version.ref)
            return
        finally:
            state.running = False
            self.analysis_seconds.labels(state.version.model).inc(time.perf_counter() - started)
        if report is None:
            return
        state.report = report
        self._publish(report)
        if report.drifting != state.drifting:
            state.drifting = report.drifting
            if self._alert is not None:
                self._alert(_alert_payload(report))

    def _analyse_sync(
        self, state: _VersionState, batch: list[tuple[Sequence[Any], Sequence[Any]]]
    ) -> VersionReport | None:
        for items, results in batch:
            for item, result in zip(items, results, strict=False):
                if isinstance(item, TensorRequest):
                    observations = tensor_features(item)
                else:
                    observations = [features_of(item, result)]
                for observation in observations:
                    if state.reference is None:
                        state.capture.add(observation)
                        if state.capture.full():
                            state.reference = state.capture
                            state.reference_doc = {
                                "kind": "baseline",
                                "source": "the first full window served",
                                "items": self.window,
                            }
                    else:
                        state.current.add(observation)
        if state.reference is None or not state.current.full():
            return None
        state.analyses += 1
        outcomes: list[FeatureResult] = []
        for name, window in state.current.values.items():
            reference = state.reference.values.get(name)
            if not reference or len(reference) < 2:
                continue
            outcome = self._test(name, list(reference), list(window), state.analyses)
            side = feature_side(name)
            floor = MIN_EFFECT.get(outcome.test)
            size = outcome.effect if outcome.test == "chi2" else outcome.statistic
            big_enough = floor is None or (size is not None and size >= floor)
            outcomes.append(
                FeatureResult(
                    name,
                    side,
                    outcome,
                    self.alpha,
                    floor,
                    outcome.p_value < self.alpha and big_enough,
                    len(reference),
                    len(window),
                )
            )
        crossed = any(f.crossed for f in outcomes)
        state.streak = state.streak + 1 if crossed != state.drifting else 0
        drifting = (not state.drifting) if state.streak >= CONFIRMATIONS else state.drifting
        if drifting != state.drifting:
            state.streak = 0
        return VersionReport(
            state.version.model,
            state.version.version,
            dict(state.reference_doc),
            state.observed,
            state.analyses,
            datetime.now(UTC),
            drifting,
            tuple(outcomes),
        )

    def _test(self, name: str, reference: list[Any], current: list[Any], seed: int) -> TestOutcome:
        kind = FEATURES.get(name, ("input", CONTINUOUS))[1]
        if kind == CATEGORICAL:
            return label_test([str(v) for v in reference], [str(v) for v in current])
        if kind == VECTOR:
            return mmd_test(
                np.stack(reference), np.stack(current), permutations=self.permutations, seed=seed
            )
        return ks_test(np.asarray(reference, float), np.asarray(current, float))

    def _publish(self, report: VersionReport) -> None:
        version = str(report.version)
        for f in report.features:
            labels = (report.model, version, f.feature)
            if math.isfinite(f.outcome.statistic):
                self.score.labels(*labels).set(f.outcome.statistic)
            self.p_value.labels(*labels).set(f.outcome.p_value)
            self.crossed.labels(*labels).set(1.0 if f.crossed else 0.0)


def _alert_payload(report: VersionReport) -> dict[str, Any]:
    return {
        "event": "drift.detected" if report.drifting else "drift.cleared",
        "model": report.model,
        "version": report.version,
        "ref": f"{report.model}:{report.version}",
        "at": (report.analysed_at or datetime.now(UTC)).isoformat(),
        "reference": report.reference,
        "crossed": [f.feature for f in report.features if f.crossed],
        "features": [f.as_dict() for f in report.features],
    }
