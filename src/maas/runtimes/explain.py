"""Token attributions for text classification: Integrated Gradients over the input embeddings.

Integrated Gradients (Sundararajan et al., 2017) integrates the gradient of the
target's probability along a straight line from a *baseline* input to the real
one. Here the line runs in the space of the model's input-embedding output:

* the baseline is the same sequence with every ordinary token replaced by the
  pad token; special tokens (``[CLS]``, ``[SEP]``, ...) keep their ids, so they
  differ from the baseline in nothing and their attribution is exactly zero;
* what is explained is the softmax probability of ``target``, so the raw
  attributions add up to ``p(target | text) - p(target | baseline)`` and the
  gap between the two sides is the convergence delta (smaller with more steps).

Thread safety: the runtime runs other forwards on the same model concurrently.
Captum's layer methods register forward hooks on the layer they are given, and a
hook on the model's own embedding module would also fire inside those other
forwards. So Captum gets a private wrapper around the embedding instead, and
the model is fed ``inputs_embeds`` computed through that wrapper: the shared
model's modules, its mode (it stays in ``eval``) and its parameters' ``grad``
are never touched (``torch.autograd.grad`` does not accumulate into ``.grad``),
and gradients are switched on only for this thread (grad mode is thread-local).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from maas.errors import InvalidRequestError

if TYPE_CHECKING:
    import torch

DEFAULT_STEPS = 32
MAX_STEPS = 256
METHOD: Final = "integrated_gradients"
# Steps x tokens evaluated in one chunk: bounds the activations kept for the
# backward pass (a 512-token text runs 4 steps per chunk, a short one all at once).
_TOKEN_STEPS_PER_CHUNK = 2048


@dataclass(frozen=True, slots=True)
class Explanation:
    tokens: list[str]  # the model's tokens, special tokens included
    attributions: list[float]  # one per token; the vector has unit L2 norm (or is all zero)
    target: str  # the label explained
    target_index: int
    probability: float  # p(target | text)
    baseline_probability: float  # p(target | baseline): where the integration path starts
    convergence_delta: float  # sum(raw attributions) - (probability - baseline_probability)
    steps: int


@runtime_checkable
class ExplainableRuntime(Protocol):
    """A runtime that can explain one prediction (text classification does)."""

    async def explain(self, text: str, *, target: str | int | None, steps: int) -> Explanation: ...


def resolve_target(target: str | int | None, labels: list[str], predicted: int) -> int:
    """The label index to explain: a label name, an index, or ``None`` for the prediction."""
    if target is None:
        return predicted
    if isinstance(target, bool):  # bool is an int subclass; True is not a label
        raise InvalidRequestError("target must be a label name or index", param="target")
    if isinstance(target, int):
        if not 0 <= target < len(labels):
            raise InvalidRequestError(
                f"target index {target} is out of range; the model has {len(labels)} labels",
                param="target",
            )
        return target
    if target not in labels:
        raise InvalidRequestError(
            f"unknown target label {target!r}; the model's labels are {labels}", param="target"
        )
    return labels.index(target)


def _private_layer(embedding: torch.nn.Module) -> torch.nn.Module:
    """A module of our own that computes exactly what ``embedding`` computes.

    Hooks Captum registers land on this wrapper, never on the shared model.
    """
    import torch

    class PrivateEmbedding(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.inner(input_ids)
            return out

    return PrivateEmbedding(embedding)


def _baseline_ids(tokenizer: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """``input_ids`` with every non-special token replaced by the pad (else unk) token."""
    import torch

    fill = tokenizer.pad_token_id
    if fill is None:
        fill = tokenizer.unk_token_id
    if fill is None:
        raise InvalidRequestError(
            "the model's tokenizer has neither a pad nor an unk token to build the "
            "Integrated Gradients baseline from",
            param="model",
        )
    special = tokenizer.get_special_tokens_mask(
        input_ids[0].tolist(), already_has_special_tokens=True
    )
    keep = torch.tensor(special, dtype=torch.bool, device=input_ids.device).unsqueeze(0)
    return torch.where(keep, input_ids, torch.full_like(input_ids, int(fill)))  # (1, seq)


def explain_classification(
    model: Any,
    tokenizer: Any,
    text: str,
    *,
    target: str | int | None = None,
    steps: int = DEFAULT_STEPS,
    max_length: int = 512,
) -> Explanation:
    """Attribute ``model``'s probability for ``target`` on ``text`` to each token.

    ``model`` is a Hugging Face sequence-classification model in eval mode; it is
    only read. Blocking: call it from an executor thread.
    """
    import torch
    from captum.attr import LayerIntegratedGradients  # type: ignore[import-untyped]

    if not 1 <= steps <= MAX_STEPS:
        raise InvalidRequestError(f"steps must be between 1 and {MAX_STEPS}", param="steps")
    config = model.config
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    embedding = model.get_input_embeddings()
    device = embedding.weight.device

    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    input_ids = enc["input_ids"].to(device)  # (1, seq)
    attention_mask = enc["attention_mask"].to(device)  # (1, seq); the baseline attends alike
    token_type_ids = enc.get("token_type_ids")
    if token_type_ids is not None:
        token_type_ids = token_type_ids.to(device)  # (1, seq)
    baseline_ids = _baseline_ids(tokenizer, input_ids)  # (1, seq)
    layer = _private_layer(embedding)

    def target_probabilities(
        ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None
    ) -> torch.Tensor:
        # ids, mask, types: (batch, seq); Captum stacks interpolation steps on batch.
        # The model sees the same embeddings it would compute from ids itself, but
        # produced by our private layer, where Captum swaps in interpolated ones.
        extra = {} if types is None else {"token_type_ids": types}
        logits = model(inputs_embeds=layer(ids), attention_mask=mask, **extra).logits
        return torch.softmax(logits, dim=-1)  # (batch, labels)

    with torch.no_grad():
        probs = target_probabilities(input_ids, attention_mask, token_type_ids)[0]  # (labels,)
        baseline_probs = target_probabilities(baseline_ids, attention_mask, token_type_ids)[0]
    index = resolve_target(target, labels, int(probs.argmax()))

    seq_len = int(input_ids.shape[1])
    chunk = max(1, min(steps, _TOKEN_STEPS_PER_CHUNK // seq_len))
    with torch.enable_grad():  # thread-local: the server's other forwards stay grad-free
        ig = LayerIntegratedGradients(target_probabilities, layer)
        attributions, delta = ig.attribute(
            inputs=input_ids,
            baselines=baseline_ids,
            additional_forward_args=(attention_mask, token_type_ids),
            target=index,
            n_steps=steps,
            internal_batch_size=chunk,
            return_convergence_delta=True,
        )
    # attributions: (1, seq, hidden), one per embedding coordinate; delta: (1,)
    per_token = attributions.detach().sum(dim=-1)[0].float()  # (seq,)
    norm = float(torch.linalg.vector_norm(per_token))
    if norm > 0.0:  # all zero when the text holds only special tokens
        per_token = per_token / norm

    return Explanation(
        tokens=[str(t) for t in tokenizer.convert_ids_to_tokens(input_ids[0].tolist())],
        attributions=[float(a) for a in per_token.tolist()],
        target=labels[index],
        target_index=index,
        probability=float(probs[index]),
        baseline_probability=float(baseline_probs[index]),
        convergence_delta=float(delta.detach()[0]),
        steps=steps,
    )
