"""GGUF language models served by llama.cpp (``text-generation``, format ``gguf``).

The weights stay quantized as they are in the file (Q4_1, Q8_0, ...): llama.cpp
decodes straight from the quantized blocks with its own CPU kernels, so a
model takes the file's size in memory instead of four bytes a parameter.
The file also carries the tokenizer and the chat template; both are used from
it (llama.cpp's tokenizer, the template rendered by ``chat_template``), so no
Hugging Face directory is needed.

The runtime loads the model and creates one llama.cpp context: the KV cache
that every running sequence of the model shares (``kv_cache_tokens`` cells,
``max_sequences`` running sequence ids and as many for the prefix cache).
Generation itself is the serving layer's ``LlamaGenerationEngine``, whose
decode loop drives ``ctx`` with batches of several sequences; nothing else may
touch ``ctx`` while it runs.

llama-cpp-python is imported lazily (at load), through its low-level ctypes
API (``llama_cpp.llama_cpp``); its high-level ``Llama`` class runs one
sequence at a time and is not used.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from maas.errors import InvalidRequestError
from maas.runtimes.chat_template import render_chat
from maas.runtimes.text_generation import TextGenerationRuntime

log = logging.getLogger("maas.llama_cpp")

# llama.cpp's LLAMA_MAX_SEQ (include/llama-cparams.h of the bundled version).
_MAX_SEQUENCE_IDS = 256

_backend_lock = threading.Lock()
_backend_ready = False
_log_callback: Any = None  # kept referenced: llama.cpp calls it for as long as it runs


def _init_backend() -> Any:
    """Import llama.cpp's bindings and initialise its backend once per process."""
    global _backend_ready, _log_callback
    import llama_cpp.llama_cpp as lib

    with _backend_lock:
        if not _backend_ready:
            # llama.cpp logs every tensor it loads at INFO; those go to our debug log,
            # its warnings and errors (ggml levels 3 and 4) to ours.
            def forward(level: int, text: bytes, _user: Any) -> None:
                line = text.decode("utf-8", "replace").rstrip()
                if line:
                    log.log(logging.WARNING if level in (3, 4) else logging.DEBUG, "%s", line)

            _log_callback = lib.llama_log_callback(forward)
            lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lib.llama_backend_init()
            _backend_ready = True
    return lib


class LlamaTokenizer:
    """llama.cpp's tokenizer of one model, with the ``decode`` that ``detokenize`` calls."""

    def __init__(self, lib: Any, vocab: Any) -> None:
        self._lib = lib
        self._vocab = vocab
        self.n_vocab = int(lib.llama_vocab_n_tokens(vocab))

    def encode(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        capacity = len(raw) + 8
        while True:
            buffer = (ctypes.c_int32 * capacity)()
            count = int(
                self._lib.llama_tokenize(
                    self._vocab, raw, len(raw), buffer, capacity, add_special, parse_special
                )
            )
            if count >= 0:
                return list(buffer[:count])
            capacity = -count  # too small: llama.cpp says how many it needs

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; bytes that do not form a whole character yet end as U+FFFD."""
        if not ids:
            return ""
        tokens = (ctypes.c_int32 * len(ids))(*ids)
        capacity = 16 * len(ids) + 16
        while True:
            buffer = ctypes.create_string_buffer(capacity)
            # remove_special: no BOS/EOS the tokenizer adds; unparse_special: control
            # tokens (<|im_end|>) are written out only when special tokens are kept.
            count = int(
                self._lib.llama_detokenize(
                    self._vocab,
                    tokens,
                    len(ids),
                    buffer,
                    capacity,
                    False,
                    not skip_special_tokens,
                )
            )
            if count >= 0:
                return buffer.raw[:count].decode("utf-8", "replace")
            capacity = -count

    def token_text(self, token: int) -> str:
        """One token's own text (for log-probabilities), special tokens written out."""
        buffer = ctypes.create_string_buffer(64)
        count = int(self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, True))
        if count < 0:
            buffer = ctypes.create_string_buffer(-count)
            count = int(self._lib.llama_token_to_piece(self._vocab, token, buffer, -count, 0, True))
        return buffer.raw[:count].decode("utf-8", "replace")

    def special_text(self, token: int) -> str:
        return self.token_text(token) if token >= 0 else ""


class LlamaCppTextGenerationRuntime(TextGenerationRuntime):
    """A GGUF file, run by llama.cpp: weights quantized, one shared KV cache."""

    formats = ("gguf",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.lib: Any = None
        self.model: Any = None  # llama_model *
        self.ctx: Any = None  # llama_context *: the decode loop's, exclusively
        self.vocab: Any = None
        self.chat_template: str | None = None
        self.bos_text = ""
        self.eos_text = ""
        options = context.options
        self.kv_cache_tokens = int(options.get("kv_cache_tokens", 4096))
        self.max_sequences = int(options.get("max_sequences", 8))
        # Sequence ids of the context: one per running sequence, as many again for
        # finished sequences whose cells the prefix cache keeps (``llama_prefix``);
        # llama.cpp allows at most _MAX_SEQUENCE_IDS.
        parked = int(options.get("prefix_cache_sequences", self.max_sequences))
        self.max_sequences = min(self.max_sequences, _MAX_SEQUENCE_IDS)
        self.sequence_ids = min(self.max_sequences + max(0, parked), _MAX_SEQUENCE_IDS)
        self.batch_tokens = int(options.get("batch_tokens", 512))
        # Threads: all cores but one to start with, the count that never collapses when
        # something else (the HTTP front end, a job) wants a core; the decode loop adds
        # the last core while it measures that faster (serving/llama_threads.py says
        # why and how). MAAS_TORCH_THREADS fixes the count instead.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        explicit = options.get("threads")
        self.threads = int(explicit or max(1, cores - 1))
        self.max_threads = self.threads if explicit else max(self.threads, cores)
        self._kv_bytes = 0
        self.flash_attention = bool(options.get("flash_attention", True))

    def gguf_file(self) -> Path:
        root = self.context.model_dir
        if root.is_file():
            return root
        found = sorted(root.rglob("*.gguf"))
        if len(found) != 1:
            raise InvalidRequestError(
                f"a gguf version holds exactly one .gguf file; {root.name} has {len(found)}"
            )
        return found[0]

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        lib = _init_backend()
        self.lib = lib
        path = self.gguf_file()
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model = lib.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise InvalidRequestError(f"llama.cpp could not load {path.name}")
        self.model = model
        vocab = lib.llama_model_get_vocab(model)
        self.vocab = vocab
        self.tokenizer = LlamaTokenizer(lib, vocab)
        trained = int(lib.llama_model_n_ctx_train(model)) or 2048
        # Every sequence may be as long as the model allows, but all of them share
        # the one cache (unified KV), so no single one may be longer than the cache.
        self.context_length = min(trained, self.kv_cache_tokens)

        params = lib.llama_context_default_params()
        params.n_ctx = self.kv_cache_tokens
        params.n_batch = self.batch_tokens
        params.n_ubatch = self.batch_tokens
        params.n_seq_max = self.sequence_ids
        params.n_threads = self.threads
        params.n_threads_batch = self.threads
        params.kv_unified = True
        # Flash attention (MAAS_FLASH_ATTENTION, on by default): in the shared cache
        # every token would otherwise attend to every used cell, masked, so a step's
        # attention grows with the square of the running sequences (58% of a 32-stream
        # step, profiled); flash attention skips the masked cells. Its CPU kernel sums
        # in half precision in cell order, so a sequence's logits then depend a little
        # on where its cells landed, i.e. on what ran beside it (measured: 7 of 16
        # greedy completions of a tiny random model drifted; SmolLM2 Q4_1 drifts
        # batched either way). Off, batched greedy decoding of a Q8_0 model is
        # token-for-token llama.cpp's own (tests/serving/test_generation_llama.py).
        params.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if self.flash_attention
            else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            raise InvalidRequestError(
                f"llama.cpp could not create a context of {self.kv_cache_tokens} tokens "
                f"for {path.name} (MAAS_KV_CACHE_TOKENS)"
            )
        self.ctx = ctx

        template = lib.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8") if template else None
        eos = int(lib.llama_vocab_eos(vocab))
        eot = int(lib.llama_vocab_eot(vocab))
        self.eos_token_ids = sorted({t for t in (eos, eot) if t >= 0})
        self.bos_text = self.tokenizer.special_text(int(lib.llama_vocab_bos(vocab)))
        self.eos_text = self.tokenizer.special_text(eos)
        # K and V (f16) of every layer for every cell of the cache.
        layers = int(lib.llama_model_n_layer(model))
        heads = max(1, int(lib.llama_model_n_head(model)))
        kv_width = (
            int(lib.llama_model_n_embd(model)) // heads * int(lib.llama_model_n_head_kv(model))
        )
        self._kv_bytes = 2 * 2 * layers * kv_width * int(lib.llama_n_ctx(ctx))

    async def unload(self) -> None:
        lib, ctx, model = self.lib, self.ctx, self.model
        self.ctx = self.model = self.vocab = None
        self.tokenizer = None
        if lib is not None:
            if ctx:
                lib.llama_free(ctx)
            if model:
                lib.llama_model_free(model)

    def is_end(self, token: int) -> bool:
        """End of generation: EOS, end-of-turn, or any token the vocabulary marks so."""
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    # ----------------------------------------------------------------- prompts

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        if not self.chat_template:
            raise self.no_chat_template()
        rendered = render_chat(
            self.chat_template, messages, bos_token=self.bos_text, eos_token=self.eos_text
        )
        # The template already wrote the special tokens it wants (BOS included).
        ids: list[int] = self.tokenizer.encode(rendered, add_special=False, parse_special=True)
        if not ids:
            raise InvalidRequestError("the rendered conversation is empty", param="messages")
        return ids

    def encode_text(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special=True, parse_special=False)
        if not ids or not text:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return ids

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        return int(self.lib.llama_model_size(self.model)) + self._kv_bytes
