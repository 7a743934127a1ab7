"""Serving benchmark: maas over HTTP against the same work done in-process, in one run.

Prints ratios against baselines measured in the same run on the same machine:

(a) embeddings: all-MiniLM-L6-v2 batched in-process (batch 32, the server's
    torch threads) vs ``POST /v1/embeddings`` with one sentence per request,
    driven by wrk at concurrency 1, 8 and 32; mean batch size from /metrics.
(b) ONNX: ``InferenceSession.run`` in-process vs V2 ``POST /v2/models/affine/infer``
    at concurrency 1 and 8; the p50 latency the server adds.
(c) cold start: the first ``/v1/embeddings`` on a freshly started server vs a
    fresh process that imports torch + transformers, loads MiniLM and runs one forward.
(d) memory: server RSS idle and with MiniLM loaded, against the model's own bytes
    and against a bare ``import torch, transformers`` process.

Usage: ``.venv/bin/python benchmarks/serving.py [--quick] [--json out.json]``.
The full run takes about four minutes; ``--quick`` about one. Method and the
figures of a reference run: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from _common import (
    PYTHON,
    REPO,
    SENTENCES,
    Server,
    WrkResult,
    cpu_seconds,
    has_mapped,
    histogram,
    machine_busy_seconds,
    median,
    register_models,
    rss_bytes,
    run_wrk,
    start_server,
    write_bodies,
)

BASELINES = Path(__file__).resolve().parent / "_baselines.py"
MB = 1e6
EMBED_CONCURRENCY = (1, 8, 32)
ONNX_CONCURRENCY = (1, 8)

# Targets (docs/performance.md).
TARGET_EMBED_RATIO = 0.9  # served / raw sentences/s at concurrency 32, at least
TARGET_ADDED_P50_MS = 2.0  # V2 ONNX p50 minus direct p50 at concurrency 1, at most
TARGET_COLD_RATIO = 1.5  # served cold start / raw cold start, at most
TARGET_OVERHEAD_MB = 150.0  # RSS with MiniLM loaded minus the model's bytes, at most
# A run counts as quiet when other processes used less CPU than this meanwhile (cores).
# torch's spinning OpenMP threads make both sides fragile under foreign load, so only
# quiet runs compare like with like on a shared machine.
QUIET_CORES = 0.3


@dataclass(frozen=True)
class Plan:
    wrk_seconds: float
    reps: int
    raw_seconds: float
    cold_reps: int
    warmup_seconds: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(wrk_seconds=2, reps=1, raw_seconds=1.5, cold_reps=1, warmup_seconds=1)
        return cls(wrk_seconds=5, reps=5, raw_seconds=2.5, cold_reps=3, warmup_seconds=3)


def say(message: str, stream: TextIO = sys.stderr) -> None:
    print(message, file=stream, flush=True)


def baseline(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one ``_baselines.py`` mode in a fresh process; return its JSON answer."""
    done = subprocess.run(
        [str(PYTHON), str(BASELINES), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


class RawEmbedder:
    """The ``embed-worker`` baseline process, kept alive between measurements."""

    def __init__(self, torch_threads: int, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(PYTHON), str(BASELINES), "embed-worker", "--torch-threads", str(torch_threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the raw embedding worker died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def throughput(self, seconds: float, batch: int = 32) -> dict[str, float]:
        """Sentences/s, CPU ms per sentence and the foreign load (cores) during the run."""
        busy = machine_busy_seconds()
        answer = self.ask(cmd="run", seconds=seconds, batch=batch)
        foreign = machine_busy_seconds() - busy - answer["cpu_seconds"]
        return {
            "sentences_per_s": answer["sentences_per_s"],
            "cpu_ms_per_sentence": 1000 * answer["cpu_seconds"] / answer["sentences"],
            "foreign_cores": max(0.0, foreign / answer["seconds"]),
        }

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


@dataclass
class LoadLevel:
    """Median figures of the wrk runs at one concurrency."""

    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    server_cpu_ms: float  # server CPU time per request, all threads
    wrk_cpu_ms: float  # load generator CPU time per request
    foreign_cores: float  # CPU used by other processes on the machine meanwhile
    errors: int
    runs: list[float]  # rps of each run
    paired_ratio: float  # median over runs of rps / raw rate measured around that run
    quiet_ratio: float  # the same over quiet runs only (see QUIET_CORES); nan if none
    quiet_runs: int


@dataclass(frozen=True)
class Observed:
    """One wrk run plus what /metrics and /proc saw meanwhile."""

    wrk: WrkResult
    mean_batch: float
    server_cpu_ms: float
    foreign_cores: float


def summarise(
    connections: int, runs: list[Observed], paired_raw: list[tuple[float, float]] | None = None
) -> LoadLevel:
    """Medians over runs; ``paired_raw[i]``: (raw rate, foreign cores) around run ``i``."""
    pairs = list(zip(runs, paired_raw or [], strict=False))
    paired = [r.wrk.rps / rate for r, (rate, _) in pairs]
    quiet = [
        r.wrk.rps / rate
        for r, (rate, foreign) in pairs
        if max(foreign, r.foreign_cores) < QUIET_CORES
    ]
    return LoadLevel(
        connections=connections,
        rps=median([r.wrk.rps for r in runs]),
        p50_ms=median([r.wrk.p50_ms for r in runs]),
        p99_ms=median([r.wrk.p99_ms for r in runs]),
        mean_batch=median([r.mean_batch for r in runs]),
        server_cpu_ms=median([r.server_cpu_ms for r in runs]),
        wrk_cpu_ms=median([1000 * r.wrk.wrk_cpu_seconds / max(1, r.wrk.requests) for r in runs]),
        foreign_cores=median([r.foreign_cores for r in runs]),
        errors=sum(r.wrk.errors for r in runs),
        runs=[round(r.wrk.rps, 1) for r in runs],
        paired_ratio=median(paired),
        quiet_ratio=median(quiet),
        quiet_runs=len(quiet),
    )


def observe(
    server: Server, model: str, url: str, bodies: Path, connections: int, seconds: float
) -> Observed:
    before = histogram(server.metrics_text(), "maas_batch_size", model)
    cpu, busy = cpu_seconds(server.pid), machine_busy_seconds()
    result = run_wrk(url, server.key, bodies, connections=connections, seconds=seconds)
    server_cpu = cpu_seconds(server.pid) - cpu
    foreign = machine_busy_seconds() - busy - server_cpu - result.wrk_cpu_seconds
    after = histogram(server.metrics_text(), "maas_batch_size", model)
    items, count = after[0] - before[0], after[1] - before[1]
    return Observed(
        wrk=result,
        mean_batch=items / count if count else float("nan"),
        server_cpu_ms=1000 * server_cpu / max(1, result.requests),
        foreign_cores=max(0.0, foreign / result.seconds),
    )


def loaded_view(server: Server, model: str) -> dict[str, Any]:
    loaded = server.request("GET", "/admin/v1/loaded")
    return next(m for m in loaded["models"] if m["model"] == model)


def measure_load(
    server: Server,
    model: str,
    bodies: Path,
    path: str,
    levels: tuple[int, ...],
    plan: Plan,
    between: Callable[[], object] | None = None,
) -> dict[int, list[Observed]]:
    """wrk at each concurrency, ``plan.reps`` times; ``between()`` runs before every run."""
    url = server.url + path
    run_wrk(url, server.key, bodies, connections=8, seconds=plan.warmup_seconds)
    out: dict[int, list[Observed]] = {}
    for connections in levels:
        runs: list[Observed] = []
        for _ in range(plan.reps):
            if between is not None:
                between()
            seen = observe(server, model, url, bodies, connections, plan.wrk_seconds)
            runs.append(seen)
            say(
                f"    c={connections:<3} {seen.wrk.rps:8.1f} req/s  p50 {seen.wrk.p50_ms:7.2f} ms"
                f"  p99 {seen.wrk.p99_ms:7.2f} ms  batch {seen.mean_batch:5.2f}  server "
                f"{seen.server_cpu_ms:5.2f} CPU ms/req  foreign {seen.foreign_cores:4.2f} cores"
                f"  errors {seen.wrk.errors}"
            )
        out[connections] = runs
    return out


def first_embedding(server: Server) -> dict[str, Any]:
    """Time the first ``/v1/embeddings`` of a fresh server (the model is not loaded yet)."""
    torch_before = has_mapped(server.pid, "libtorch")
    rss_before = rss_bytes(server.pid)
    started = time.perf_counter()
    server.request("POST", "/v1/embeddings", {"model": "minilm", "input": SENTENCES[0]})
    elapsed = time.perf_counter() - started
    load_sum, _ = histogram(server.metrics_text(), "maas_model_load_seconds", "minilm")
    started = time.perf_counter()
    server.request("POST", "/v1/embeddings", {"model": "minilm", "input": SENTENCES[1]})
    warm = time.perf_counter() - started
    return {
        "first_s": elapsed,
        "load_s": load_sum,  # what the server's ModelManager counted as the load
        "second_s": warm,
        "torch_imported_at_start": torch_before,
        "rss_before": rss_before,
    }


def source_state() -> dict[str, Any]:
    """Which code the server ran: the commit, and the files of src/ changed since."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "src").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "src_changes": len(changed)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.make(args.quick)
    env = dict(kv.split("=", 1) for kv in args.server_env)
    # A user's shell may carry MAAS_URL, MAAS_API_KEY...: the server gets only what we say.
    for name in [n for n in os.environ if n.startswith("MAAS_")]:
        del os.environ[name]
    # The raw baselines run with the server's compute settings (torch threads, OMP_* ...).
    torch_threads = int(env.get("MAAS_TORCH_THREADS", "0"))
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "source": source_state(),
        "plan": asdict(plan),
        "server_env": env,
    }
    work = Path(tempfile.mkdtemp(prefix="maas-bench-"))
    server: Server | None = None
    raw: RawEmbedder | None = None
    try:
        home = work / "home"
        home.mkdir()
        say("registering minilm and affine ...")
        register_models(home, work / "onnx")
        onnx_path = work / "onnx" / "model.onnx"
        embed_bodies = write_bodies(
            work / "embed.jsonl", [{"model": "minilm", "input": s} for s in SENTENCES]
        )
        v2_body = {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
        }
        onnx_bodies = write_bodies(work / "v2.jsonl", [v2_body])

        say("(d) reference: bare `import torch, transformers` process ...")
        results["bare_import_rss"] = median(
            [baseline("bare-rss", env=env)["rss"] for _ in range(max(1, plan.cold_reps))]
        )

        say("(a) raw: loading MiniLM in a worker process ...")
        raw = RawEmbedder(torch_threads, env)
        results["raw_torch_threads"] = raw.info["torch_threads"]

        say("starting the server ...")
        server = start_server(home, env)
        time.sleep(1.0)  # let startup allocations settle
        results["server_idle_rss"] = rss_bytes(server.pid)
        results["server_idle_has_torch"] = has_mapped(server.pid, "libtorch")
        server.request("POST", "/admin/v1/models/minilm/versions/1/load")
        results["server_loaded_rss"] = rss_bytes(server.pid)
        results["model_bytes"] = loaded_view(server, "minilm")["memory_bytes"]

        say("(a) embeddings: raw batch-32 runs interleaved with wrk runs ...")
        raw_runs: list[dict[str, float]] = []

        def raw_once() -> None:
            assert raw is not None
            raw_runs.append(raw.throughput(plan.raw_seconds))
            last = raw_runs[-1]
            say(
                f"    raw batch 32: {last['sentences_per_s']:8.1f} sentences/s  "
                f"{last['cpu_ms_per_sentence']:5.2f} CPU ms/sentence  "
                f"foreign {last['foreign_cores']:4.2f} cores"
            )

        embed_runs = measure_load(
            server, "minilm", embed_bodies, "/v1/embeddings", EMBED_CONCURRENCY, plan, raw_once
        )
        raw_once()
        # Raw runs bracket the served ones: raw[i], served[i], raw[i + 1], ...
        rates = [r["sentences_per_s"] for r in raw_runs]
        foreign = [r["foreign_cores"] for r in raw_runs]
        around = [
            ((rates[i] * rates[i + 1]) ** 0.5, max(foreign[i], foreign[i + 1]))
            for i in range(len(rates) - 1)
        ]
        embed_levels = [
            summarise(c, runs, around[i * plan.reps : (i + 1) * plan.reps])
            for i, (c, runs) in enumerate(embed_runs.items())
        ]
        results["raw_sentences_per_s"] = median([r["sentences_per_s"] for r in raw_runs])
        results["raw_cpu_ms_per_sentence"] = median([r["cpu_ms_per_sentence"] for r in raw_runs])
        results["raw_foreign_cores"] = median([r["foreign_cores"] for r in raw_runs])
        results["raw_runs"] = [round(r["sentences_per_s"], 1) for r in raw_runs]
        results["embeddings"] = [asdict(level) for level in embed_levels]
        results["server_rss_after_load_test"] = rss_bytes(server.pid)
        results["raw_rss_after_batches"] = raw.ask(cmd="rss")["rss"]
        raw.close()
        raw = None

        say("(b) ONNX: direct InferenceSession.run, then V2 over HTTP ...")
        direct = baseline("onnx-direct", str(onnx_path), "--calls", "20000", env=env)
        results["onnx_direct_p50_ms"] = direct["p50_ms"]
        server.request("POST", "/admin/v1/models/affine/versions/1/load")
        onnx_runs = measure_load(
            server, "affine", onnx_bodies, "/v2/models/affine/infer", ONNX_CONCURRENCY, plan
        )
        onnx_levels = [summarise(c, runs) for c, runs in onnx_runs.items()]
        results["onnx"] = [asdict(level) for level in onnx_levels]
        server.stop()
        server = None

        say("(c) cold start: fresh servers vs fresh raw processes ...")
        cold_home = work / "cold-home"
        cold_home.mkdir()
        register_models(cold_home)
        first_loads: list[dict[str, Any]] = []
        restarts: list[dict[str, Any]] = []
        raws: list[dict[str, Any]] = []
        for _ in range(plan.cold_reps):
            # First load after a push: the version is not materialised in the cache yet.
            shutil.rmtree(cold_home / "cache", ignore_errors=True)
            for bucket in (first_loads, restarts):
                server = start_server(cold_home, env)
                time.sleep(1.0)
                bucket.append(first_embedding(server))
                server.stop()
                server = None
            raws.append(baseline("cold-start", "--torch-threads", str(torch_threads), env=env))
            say(
                f"    first load {first_loads[-1]['first_s']:.2f} s, restart "
                f"{restarts[-1]['first_s']:.2f} s, raw {raws[-1]['total_s']:.2f} s"
            )
        results["cold"] = {
            "served_first_load": first_loads,
            "served_restart": restarts,
            "raw": raws,
        }
    finally:
        if server is not None:
            server.stop()
        if raw is not None:
            raw.close()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def quiet(level: dict[str, Any]) -> str:
    if not level["quiet_runs"]:
        return "-"
    return f"{level['quiet_ratio']:.2f}x ({level['quiet_runs']})"


def report(results: dict[str, Any], out: TextIO = sys.stdout) -> None:
    def p(line: str = "") -> None:
        print(line, file=out)

    plan = results["plan"]
    raw = results["raw_sentences_per_s"]
    p()
    p(
        f"maas serving benchmark: {results['machine']['cpus']} CPU cores, no GPU; "
        f"medians of {plan['reps']} x {plan['wrk_seconds']:g} s wrk runs"
    )
    source = results["source"]
    p(
        f"code: commit {source['commit'][:12]}, "
        f"{source['src_changes']} uncommitted change(s) in src/"
    )
    if results["server_env"]:
        p(f"server environment: {results['server_env']}")
    p()
    p("(a) /v1/embeddings, all-MiniLM-L6-v2, one sentence per request")
    p(
        f"    raw in-process, batch 32, {results['raw_torch_threads']} torch threads: "
        f"{raw:.1f} sentences/s, {results['raw_cpu_ms_per_sentence']:.2f} CPU ms/sentence, "
        f"foreign load {results['raw_foreign_cores']:.2f} cores"
    )
    p(f"    (raw runs: {results['raw_runs']})")
    p(
        f"    {'conc':>4}  {'sent/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'batch':>6}  "
        f"{'/raw':>6}  {'paired':>6}  {'quiet (n)':>9}  {'srv CPU ms':>10}  {'wrk CPU ms':>10}  "
        f"{'foreign':>7}"
    )
    for level in results["embeddings"]:
        p(
            f"    {level['connections']:>4}  {level['rps']:8.1f}  {level['p50_ms']:8.2f}  "
            f"{level['p99_ms']:8.2f}  {level['mean_batch']:6.2f}  {level['rps'] / raw:5.2f}x  "
            f"{level['paired_ratio']:5.2f}x  {quiet(level):>9}  {level['server_cpu_ms']:10.2f}  "
            f"{level['wrk_cpu_ms']:10.3f}  {level['foreign_cores']:7.2f}"
        )
    p("    /raw: median served / median raw; paired: median of served / raw measured around it;")
    p(f"    quiet: paired, only runs where other processes used < {QUIET_CORES} cores (n runs)")
    p("    CPU ms per request, all threads; foreign: cores used by other processes meanwhile")
    p()
    direct = results["onnx_direct_p50_ms"]
    p("(b) V2 /v2/models/affine/infer (JSON), ONNX y = x @ W + b, x [1, 4]")
    p(f"    direct InferenceSession.run p50: {direct * 1000:.1f} us")
    p(
        f"    {'conc':>4}  {'req/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'batch':>6}  "
        f"{'added p50':>9}  {'srv CPU ms':>10}  {'foreign':>7}"
    )
    for level in results["onnx"]:
        p(
            f"    {level['connections']:>4}  {level['rps']:8.1f}  {level['p50_ms']:8.2f}  "
            f"{level['p99_ms']:8.2f}  {level['mean_batch']:6.2f}  "
            f"{level['p50_ms'] - direct:6.2f} ms  {level['server_cpu_ms']:10.2f}  "
            f"{level['foreign_cores']:7.2f}"
        )
    p()
    cold = results["cold"]
    first = median([c["first_s"] for c in cold["served_first_load"]])
    restart = median([c["first_s"] for c in cold["served_restart"]])
    restart_load = median([c["load_s"] for c in cold["served_restart"]])
    raw_cold = median([c["total_s"] for c in cold["raw"]])
    raw_import = median([c["import_s"] for c in cold["raw"]])
    torch_at_start = any(c["torch_imported_at_start"] for c in cold["served_restart"])
    p("(c) cold start: first /v1/embeddings on a fresh, ready server (MiniLM not loaded)")
    p(f"    raw fresh process (import {raw_import:.2f} s + load + 1 forward): {raw_cold:.2f} s")
    p(
        f"    served, restart (cache present): {restart:.2f} s ({restart / raw_cold:.2f}x raw; "
        f"ModelManager load {restart_load:.2f} s; torch imported at startup: {torch_at_start})"
    )
    p(f"    served, first load after push (materialise + verify): {first:.2f} s")
    p()
    model = results["model_bytes"]
    loaded = results["server_loaded_rss"]
    raw_loaded = median([c["rss"] for c in cold["raw"]])
    p("(d) memory (RSS from /proc/<pid>/status)")
    p(f"    bare `import torch, transformers`:          {results['bare_import_rss'] / MB:7.1f} MB")
    p(f"    raw process, MiniLM loaded + 1 forward:     {raw_loaded / MB:7.1f} MB")
    p(f"    server idle (no model):                     {results['server_idle_rss'] / MB:7.1f} MB")
    p(f"    server, MiniLM loaded:                      {loaded / MB:7.1f} MB")
    p(f"    MiniLM memory_bytes (/admin/v1/loaded):     {model / MB:7.1f} MB")
    p(f"    server overhead = loaded - model bytes:     {(loaded - model) / MB:7.1f} MB")
    p(f"    server - raw process (same model loaded):   {(loaded - raw_loaded) / MB:7.1f} MB")
    p(
        f"    after the load test: server {results['server_rss_after_load_test'] / MB:.1f} MB, "
        f"raw worker {results['raw_rss_after_batches'] / MB:.1f} MB"
    )
    p()
    c32 = next(x for x in results["embeddings"] if x["connections"] == 32)
    c1 = next(x for x in results["onnx"] if x["connections"] == 1)
    foreign = max(results["raw_foreign_cores"], c32["foreign_cores"])
    noisy = " (noisy)" if foreign >= QUIET_CORES else ""
    rows = [
        (
            "embeddings sent/s, c=32 / raw batch 32",
            f"{c32['rps']:.1f} / {raw:.1f}",
            f"{c32['rps'] / raw:.2f}x",
            f">= {TARGET_EMBED_RATIO}x",
            verdict(c32["rps"] / raw >= TARGET_EMBED_RATIO) + noisy,
        ),
        (
            "  same, paired with adjacent raw runs",
            "",
            f"{c32['paired_ratio']:.2f}x",
            f">= {TARGET_EMBED_RATIO}x",
            verdict(c32["paired_ratio"] >= TARGET_EMBED_RATIO) + noisy,
        ),
        (
            f"  same, quiet runs only (n={c32['quiet_runs']})",
            "",
            quiet(c32),
            f">= {TARGET_EMBED_RATIO}x",
            verdict(c32["quiet_ratio"] >= TARGET_EMBED_RATIO) if c32["quiet_runs"] else "n/a",
        ),
        (
            "V2 ONNX p50 added, c=1",
            f"{c1['p50_ms']:.2f} - {direct:.3f} ms",
            f"{c1['p50_ms'] - direct:.2f} ms",
            f"<= {TARGET_ADDED_P50_MS} ms",
            verdict(c1["p50_ms"] - direct <= TARGET_ADDED_P50_MS),
        ),
        (
            "cold start, restart / raw",
            f"{restart:.2f} / {raw_cold:.2f} s",
            f"{restart / raw_cold:.2f}x",
            f"<= {TARGET_COLD_RATIO}x",
            verdict(restart / raw_cold <= TARGET_COLD_RATIO),
        ),
        (
            "server RSS overhead beyond model",
            f"{loaded / MB:.0f} - {model / MB:.0f} MB",
            f"{(loaded - model) / MB:.0f} MB",
            f"<= {TARGET_OVERHEAD_MB:.0f} MB",
            verdict((loaded - model) / MB <= TARGET_OVERHEAD_MB),
        ),
        (
            "  same, beyond a raw process",
            f"{loaded / MB:.0f} - {raw_loaded / MB:.0f} MB",
            f"{(loaded - raw_loaded) / MB:.0f} MB",
            f"<= {TARGET_OVERHEAD_MB:.0f} MB",
            verdict((loaded - raw_loaded) / MB <= TARGET_OVERHEAD_MB),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    p("summary")
    for row in rows:
        p(("    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip())
    load = results["machine"]
    p()
    p(
        f"load average at start {load['load_average_at_start'][0]:.2f}, "
        f"at end {load['load_average_at_end'][0]:.2f} (other work on the machine adds noise)"
    )
    if noisy:
        p(
            f"note: other processes used a median {foreign:.2f} cores during (a); with torch's "
            "spinning threads both raw and served slow down by large, uneven factors, so trust "
            "the quiet column (or rerun on a quiet machine) over /raw and paired"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="MAAS_X=V",
        help="extra environment for the server (repeatable), e.g. MAAS_LOG_LEVEL=warning",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    parser.add_argument(
        "--from-json", type=Path, metavar="FILE", help="measure nothing; print a saved --json run"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved)
        print(f"\nwall time {saved['wall_seconds']:.0f} s")
        return 0
    started = time.monotonic()
    results = run(args)
    results["wall_seconds"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nwall time {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
