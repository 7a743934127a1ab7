"""Decoder-only Hugging Face language models (``text-generation``, format ``hf``).

The runtime loads the weights, the tokenizer and its chat template, and knows
the model's limits (context length, end-of-sequence ids). Token generation
itself — continuous batching, sampling, streaming — is the serving layer's
``GenerationEngine``, which drives ``model`` directly; ``predict`` is not the
way in for this task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from maas.errors import InvalidRequestError
from maas.runtimes.base import Runtime, TensorSpec, module_bytes, sequence_limit


class HFTextGenerationRuntime(Runtime):
    task = "text-generation"
    formats = ("hf",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.model: Any = None
        self.tokenizer: Any = None
        self.context_length = 2048
        self.eos_token_ids: list[int] = []
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

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt token ids for a conversation, rendered with the model's chat template."""
        if not self.has_chat_template:
            raise InvalidRequestError(
                f"model {self.version.model} has no chat template; use /v1/completions with a "
                "plain prompt, or push a tokenizer_config.json that defines chat_template",
                param="messages",
            )
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja errors: a template that refuses these messages
            raise InvalidRequestError(
                f"the chat template refused these messages: {exc}", param="messages"
            ) from exc
        ids: list[int] = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return ids

    def encode_text(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text)["input_ids"]
        return ids

    async def predict(self, batch: Sequence[Any]) -> Sequence[Any]:
        error = InvalidRequestError("text-generation models are served by the generation engine")
        return [error] * len(batch)

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("prompt", "BYTES", [-1])]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", "BYTES", [-1])]

    def memory_bytes(self) -> int:
        return module_bytes(self.model)
