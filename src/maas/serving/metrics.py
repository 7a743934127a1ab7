"""Prometheus metrics for serving, on a registry owned by one app instance.

A private ``CollectorRegistry`` (not the process-global default) lets several
apps live in one process, as tests do, without duplicate-metric errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "maas_requests",
            "Requests handled",
            ["model", "version", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "maas_request_seconds",
            "End-to-end request latency",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "maas_queue_seconds",
            "Time items waited for their batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "maas_compute_seconds",
            "Model compute time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "maas_batch_size",
            "Items per executed batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.loaded = Gauge("maas_models_loaded", "Models currently loaded", registry=r)
        self.model_memory = Gauge(
            "maas_model_memory_bytes",
            "Memory attributed to each loaded model",
            ["model"],
            registry=r,
        )
        self.loads = Counter("maas_model_loads", "Model loads", ["model", "outcome"], registry=r)
        self.load_seconds = Histogram(
            "maas_model_load_seconds",
            "Model load duration",
            ["model"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.unloads = Counter(
            "maas_model_unloads", "Model unloads", ["model", "reason"], registry=r
        )

        self.ttft_seconds = Histogram(
            "maas_time_to_first_token_seconds",
            "Time from a generation request's admission to its first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl_seconds = Histogram(
            "maas_inter_token_latency_seconds",
            "Time between consecutive generated tokens of one sequence",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_generated = Counter(
            "maas_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.gen_running = Gauge(
            "maas_generation_running", "Sequences generating tokens now", ["model"], registry=r
        )
        self.gen_waiting = Gauge(
            "maas_generation_waiting",
            "Generation requests admitted but without a first token yet",
            ["model"],
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            "maas_kv_cache_usage_ratio",
            "Share of the paged KV cache in use (0-1)",
            ["model"],
            registry=r,
        )
        # Prefix caching (GGUF models): hit rate = hits / queries; share of prompt
        # tokens served from the cache = cached_tokens / prompt_tokens.
        self.prefix_queries = Counter(
            "maas_prefix_cache_queries",
            "Prompts looked up in the prefix cache",
            ["model"],
            registry=r,
        )
        self.prefix_hits = Counter(
            "maas_prefix_cache_hits",
            "Prompts that reused cached KV of a shared prefix",
            ["model"],
            registry=r,
        )
        self.prefix_prompt_tokens = Counter(
            "maas_prefix_cache_prompt_tokens",
            "Prompt tokens of the prompts looked up",
            ["model"],
            registry=r,
        )
        self.prefix_cached_tokens = Counter(
            "maas_prefix_cache_cached_tokens",
            "Prompt tokens reused from the prefix cache instead of computed",
            ["model"],
            registry=r,
        )
        # Shadow traffic (routing policies): mirrors per outcome (ok, error, dropped),
        # their latency, and agreement with the answer the caller got (classifiers).
        self.shadow_requests = Counter(
            "maas_shadow_requests",
            "Requests mirrored to a shadow version, by outcome (ok, error, dropped)",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_seconds = Histogram(
            "maas_shadow_seconds",
            "Time a shadow version took to answer a mirrored request",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_agreement = Counter(
            "maas_shadow_agreement",
            "Mirrored classifications whose top label agreed with the caller's answer",
            ["model", "version", "agree"],
            registry=r,
        )
        self.llama_threads = Gauge(
            "maas_llama_threads",
            "Threads llama.cpp decodes a GGUF model's steps with (chosen by measuring)",
            ["model"],
            registry=r,
        )
        self.batch_padding_ratio = Histogram(
            "maas_batch_padding_ratio",
            "Padded tokens / real tokens per executed batch of a text model (0 = no padding; "
            "text lengths are estimated from UTF-8 size, token-id inputs count exactly)",
            ["model"],
            buckets=(0, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
            registry=r,
        )
        # Image generation's progress (runtimes/text_to_image.py): steps run, and how far
        # the batch denoising now is.
        self.denoising_steps = Counter(
            "maas_denoising_steps",
            "Denoising steps run by an image model (one per step of a batch)",
            ["model"],
            registry=r,
        )
        self.denoising_progress = Gauge(
            "maas_denoising_progress_ratio",
            "Steps done / steps asked of the batch an image model denoises now (1 when idle)",
            ["model"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
