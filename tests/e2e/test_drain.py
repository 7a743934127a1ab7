"""Graceful drain: SIGTERM to `maas serve` while 16 SSE streams are open.

Every stream completes, a request after SIGTERM is refused (connection refused or
503, never a reset mid-response), queued jobs stay queued for another instance,
and the process exits 0. Three ways: one process; a supervisor with two HTTP
workers and an engine, signalled alone (the engine must outlive the workers'
streams); and the same topology signalled as a whole process group, as Ctrl-C in a
terminal or systemd's default ``KillMode`` do — the engine gets the signal too and
must still wait for the workers (it stopped at once before, and every open stream
ended with "the model is unloading" within a second).

Each stream asks for 384 tokens of a 1024-token-context model, 2 decoding at a
time: the drain runs for seconds after the signal, most streams start decoding
only after it, and none may be cut, silently or otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from maas.config import Settings
from maas.jobs.records import get_job
from maas.registry.store import Registry
from tests.e2e.instances import launch
from tests.gguf_helpers import SPECIAL_TOKENS, write_tiny_llama_gguf
from tests.helpers import make_onnx_file

pytestmark = pytest.mark.slow

STREAMS = 16
MAX_TOKENS = 384
CONTEXT = 1024
# The tiny random model samples its end tokens now and then; forbid them, so every
# stream runs its full MAX_TOKENS and is still running when SIGTERM comes.
NO_END = {str(i): -100 for i in range(len(SPECIAL_TOKENS))}


@pytest.fixture(scope="module")
def drain_home_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding the tiny GGUF chat model and a tiny ONNX model (for a job)."""
    home = tmp_path_factory.mktemp("drain-home")
    gguf = tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf"
    write_tiny_llama_gguf(gguf, context=CONTEXT)
    registry = Registry(Settings(home=home))
    try:
        registry.push(gguf, "tiny")
        registry.push(make_onnx_file(tmp_path_factory.mktemp("onnx") / "m.onnx").parent, "affine")
    finally:
        registry.close()
    return home


@dataclass
class Stream:
    status: int | None = None
    events: list[tuple[float, dict[str, object]]] = field(default_factory=list)
    done: bool = False
    error: str | None = None


def _stream(url: str, key: str, index: int, out: Stream) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"tell me about the fox number {index}"}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": NO_END,
        "seed": index,
    }
    try:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        ) as response:
            out.status = response.status_code
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    out.done = True
                elif line.startswith("data: "):
                    out.events.append((time.monotonic(), json.loads(line[6:])))
    except Exception as exc:  # a reset, a cut stream or a garbled event: what this test is about
        out.error = f"{type(exc).__name__}: {exc}"


def _outcome(stream: Stream) -> str:
    """How a stream ended: ``done`` ([DONE] after a 200), ``error: ...`` (an in-band
    error event, which names its cause), or ``cut: ...`` (no [DONE]: the connection
    closed mid-body, or the body just stopped)."""
    errors = [e["error"] for _, e in stream.events if "error" in e]
    if stream.error is not None:
        return f"cut: {stream.error}"
    if errors:
        return f"error: {errors[0]}"
    if stream.status != 200 or not stream.done:
        return f"cut: status {stream.status}, no [DONE] after {len(stream.events)} events"
    return "done"


@pytest.mark.parametrize(
    ("workers", "whole_group"),
    [("1", False), ("2", False), ("2", True)],
    ids=["one-process", "two-workers", "two-workers-group-signal"],
)
def test_sigterm_with_16_open_streams_finishes_them_all_then_exits_0(
    drain_home_template: Path, tmp_path: Path, workers: str, whole_group: bool
) -> None:
    home = tmp_path / "home"
    shutil.copytree(drain_home_template, home)
    server = launch(
        home,
        {
            "MAAS_WORKERS": workers,
            "MAAS_KV_CACHE_TOKENS": "4096",
            # 2 decode at a time, 14 wait: the last streams start well after SIGTERM (with
            # 4 at a time the tiny model, once llama.cpp had its second core, finished 14
            # of 16 before the signal on a quiet machine).
            "MAAS_MAX_RUNNING_SEQUENCES": "2",
            "MAAS_DRAIN_SECONDS": "60",
        },
    )
    key = (home / "admin.key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}"}
    try:
        # A running job and a queued one (one job at a time by default).
        jobs_url = f"{server.url}/admin/v1/jobs"
        job_body = {"kind": "selftest", "spec": {"model": "affine", "sleep": 120}}
        running_job = httpx.post(jobs_url, json=job_body, headers=auth).json()["id"]
        queued_job = httpx.post(jobs_url, json=job_body, headers=auth).json()["id"]
        _wait_for(lambda: httpx.get(f"{jobs_url}/{running_job}", headers=auth).json()["pid"])

        streams = [Stream() for _ in range(STREAMS)]
        threads = [
            threading.Thread(target=_stream, args=(server.url, key, i, s), daemon=True)
            for i, s in enumerate(streams)
        ]
        for thread in threads:
            thread.start()
        # Every stream admitted (a chat stream's first event, the assistant's role, is
        # sent once the request is in the generation engine, decoding or queued). A
        # connection the kernel has completed but the server not yet accepted when the
        # listener closes is reset instead (docs/scale-out.md): not an open stream.
        _wait_for(lambda: all(s.events for s in streams))
        sigterm_at = time.monotonic()
        if whole_group:  # launch() gave the server a process group of its own
            os.killpg(server.proc.pid, signal.SIGTERM)
        else:
            server.proc.send_signal(signal.SIGTERM)

        # Refused from now on: a new connection is refused, or answered 503.
        time.sleep(0.5)
        for path in ("/readyz", "/v1/models"):
            try:
                late = httpx.get(f"{server.url}{path}", headers=auth, timeout=10)
            except httpx.ConnectError:
                continue
            assert late.status_code == 503, (path, late.status_code)

        for thread in threads:
            thread.join(timeout=120)
        exit_code = server.proc.wait(timeout=60)
        drained_at = time.monotonic()
    finally:
        server.stop()
    outcomes = [_outcome(stream) for stream in streams]
    assert outcomes == ["done"] * STREAMS, [(i, o) for i, o in enumerate(outcomes) if o != "done"]
    for i, stream in enumerate(streams):
        usage = stream.events[-1][1]["usage"]
        assert isinstance(usage, dict) and usage["completion_tokens"] == MAX_TOKENS, (i, usage)
        finish = [c["finish_reason"] for _, e in stream.events for c in e["choices"]]  # type: ignore[attr-defined]
        assert finish[-1] == "length", i
    # The drain covered streams in flight: some were still sending after SIGTERM. How many
    # depends on how far the engine got while the test waited for every stream's first
    # event (with 96 tokens a stream, inside a full suite run with two workers only 2-3 of
    # 16 still were; 384 leave more), so only "some" is asserted.
    after = sum(1 for s in streams if s.events[-1][0] > sigterm_at)
    assert after >= 1, after
    print(f"\nworkers={workers}: {after} of {STREAMS} streams still sending at SIGTERM")
    assert exit_code == 0
    print(f"workers={workers}: drained {STREAMS} streams in {drained_at - sigterm_at:.2f} s")

    registry = Registry(Settings(home=home))
    try:
        assert get_job(registry.db, queued_job).status == "queued"
        interrupted = get_job(registry.db, running_job)
        assert interrupted.status == "failed" and "interrupted" in (interrupted.error or "")
    finally:
        registry.close()


def _wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
