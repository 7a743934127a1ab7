"""Decoder-only language models (``text-generation``): the base class and Hugging Face models.

A text-generation runtime loads the weights, the tokenizer and its chat
template, and owns everything about a prompt: rendering a conversation with
the chat template, tokenizing a plain prompt, and the model's limits (context
length, end-of-sequence ids, how many new tokens a prompt leaves room for).
Token generation itself — continuous batching, sampling, streaming — is the
serving layer's ``GenerationEngine``, which drives the loaded model directly;
``predict`` is not the way in for this task.

Two runtimes: ``HFTextGenerationRuntime`` here (format ``hf``, transformers)
and ``llama_cpp.LlamaCppTextGenerationRuntime`` (format ``gguf``, llama.cpp).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from maas.errors import InvalidRequestError
from maas.runtimes.base import Runtime, RuntimeContext, TensorSpec, module_bytes, sequence_limit

# New tokens a request gets when it names no max_tokens (fewer when the context is short).
DEFAULT_MAX_TOKENS = 512


class TextGenerationRuntime(Runtime):
    """What the generation engine needs of a language model, whatever runs it.

    ``tokenizer`` decodes ids to text (``decode(ids, skip_special_tokens=True)``,
    the call ``serving.detokenize`` makes); the subclass loads it.
    """

    task = "text-generation"

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self.tokenizer: Any = None
        self.context_length = 2048
        self.eos_token_ids: list[int] = []

    @property
    @abstractmethod
    def has_chat_template(self) -> bool: ...

    @abstractmethod
    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The prompt token ids of a conversation (``role``/``content`` maps), templated."""

    @abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """The prompt token ids of a plain prompt, with the tokenizer's special tokens."""

    def no_chat_template(self) -> InvalidRequestError:
        return InvalidRequestError(
            f"model {self.version.model} has no chat template; use /v1/completions with a "
            "plain prompt, or push a tokenizer_config.json that defines chat_template",
            param="messages",
        )

    def completion_budget(
        self, prompt_tokens: int, max_tokens: int | None, *, prompt_param: str = "prompt"
    ) -> int:
        """How many new tokens a prompt may get: ``max_tokens``, or by default what the
        context leaves (at most ``DEFAULT_MAX_TOKENS``); refused when it does not fit."""
        limit = self.context_length
        wanted = (
            max_tokens
            if max_tokens is not None
            else min(DEFAULT_MAX_TOKENS, max(1, limit - prompt_tokens))
        )
        if prompt_tokens + wanted > limit:
            raise InvalidRequestError(
                f"this model's context length is {limit} tokens; the prompt has {prompt_tokens} "
                f"and max_tokens asks for {wanted} more ({prompt_tokens + wanted} in all)",
                param="max_tokens" if prompt_tokens < limit else prompt_param,
            )
        return wanted

    # ------------------------------------------------------------- Runtime API

    async def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        error = InvalidRequestError("text-generation models are served by the generation engine")
        return [error] * len(batch)

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("prompt", "BYTES", [-1])]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [-1])]


class HFTextGenerationRuntime(TextGenerationRuntime):
    formats = ("hf",)

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self.model: Any = None  # transformers PreTrainedModel, once loaded
        self.pad_token_id = 0

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _load_sync(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.context.torch_threads:
            torch.set_num_threads(self.context.torch_threads)
        path = str(self.context.model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        self.model = model
        config = model.config
        positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.context_length = sequence_limit(positions, self.tokenizer, 2048)
        eos: set[int] = set()
        for source in (model.generation_config.eos_token_id, config.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list):
                eos.update(int(x) for x in source)
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = sorted(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_ids or [0])[0])

    async def unload(self) -> None:
        self.model = None
        self.tokenizer = None

    # ----------------------------------------------------------------- prompts

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The prompt token ids of a conversation (``role``/``content`` maps), templated."""
        if not self.has_chat_template:
            raise self.no_chat_template()
        try:
            rendered = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja errors: a template that refuses these messages
            raise InvalidRequestError(
                f"the chat template refused these messages: {exc}", param="messages"
            ) from exc
        # The template already wrote the special tokens it wants (BOS included).
        ids: list[int] = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return ids

    def encode_text(self, text: str) -> list[int]:
        """The prompt token ids of a plain prompt, with the tokenizer's special tokens."""
        ids: list[int] = self.tokenizer(text)["input_ids"]
        if not ids:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        return ids

    def memory_bytes(self) -> int:
        return module_bytes(self.model)
