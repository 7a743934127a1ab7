"""The training loop shared by ``train``, ``prune`` and ``distill``: settings, examples,
the (possibly distributed) world, and :func:`fit`.

Every optimisation step uses a global batch of ``batch_size`` examples drawn
from a seeded permutation; the trailing partial batch of an epoch is dropped.
Under DDP each of N ranks takes one contiguous shard of the same global batch
and scales its summed loss by N / global_batch, so the averaged gradient is the
gradient of the global batch mean: with the same seed and no dropout, one
process and N processes take the same steps up to float summation order.

The loop keeps the state with the best validation macro-F1 and leaves that one loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from maas.errors import InvalidRequestError
from maas.jobs.base import JobCancelled, JobContext
from maas.jobs.metrics import classification_metrics

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class TrainSettings:
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    patience: int = 2
    eval_every: int | None = None
    nproc: int = 1

    @classmethod
    def from_spec(cls, spec: dict[str, Any], *, default_lr: float) -> TrainSettings:
        def opt_int(key: str) -> int | None:
            value = spec.get(key)
            return None if value is None else int(value)

        settings = cls(
            epochs=int(spec.get("epochs", 3)),
            max_steps=opt_int("max_steps"),
            batch_size=int(spec.get("batch_size", 16)),
            learning_rate=float(spec.get("learning_rate", spec.get("lr", default_lr))),
            max_length=int(spec.get("max_length", 128)),
            weight_decay=float(spec.get("weight_decay", 0.01)),
            warmup_ratio=float(spec.get("warmup_ratio", 0.0)),
            patience=int(spec.get("patience", 2)),
            eval_every=opt_int("eval_every"),
            nproc=int(spec.get("nproc", 1)),
        )
        for name in ("epochs", "batch_size", "max_length", "nproc"):
            if getattr(settings, name) < 1:
                raise InvalidRequestError(f"{name} must be at least 1", param=name)
        if settings.max_steps is not None and settings.max_steps < 1:
            raise InvalidRequestError("max_steps must be at least 1", param="max_steps")
        if settings.batch_size < settings.nproc:
            raise InvalidRequestError("batch_size must be at least nproc", param="batch_size")
        return settings


# ------------------------------------------------------------------ distributed world


@dataclass(frozen=True, slots=True)
class World:
    """This process's place in a (possibly single-process) training run."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (for cancellation)."""
        if self.size == 1:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def from_main(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every rank (for decisions only rank 0 makes)."""
        if self.size == 1:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0])
        dist.broadcast(value, src=0)
        return bool(value.item())

    def sum(self, value: float) -> float:
        if self.size == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item())


# ---------------------------------------------------------------------------- examples


class Examples(Protocol):
    labels: torch.Tensor  # (n,) int64

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model keyword inputs for the examples at ``idx``."""
        ...


class TextExamples:
    """Token ids of every text (truncated, unpadded); batches are padded to their longest."""

    def __init__(self, texts: Sequence[str], labels: np.ndarray, tokenizer: Any, max_length: int):
        import torch

        self.ids: list[list[int]] = tokenizer(list(texts), truncation=True, max_length=max_length)[
            "input_ids"
        ]
        self.pad = int(tokenizer.pad_token_id or 0)
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        import torch

        rows = [self.ids[i] for i in idx.tolist()]
        longest = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), longest), self.pad, dtype=torch.long)  # (b, seq)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)  # (b, seq)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class ImageExamples:
    def __init__(self, pixels: np.ndarray, labels: np.ndarray) -> None:
        import torch

        self.pixels = torch.from_numpy(pixels)  # (n, 3, H, W) float32, preprocessed
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[idx]}


# -------------------------------------------------------------------------------- loop

# Summed per-example loss of a shard: (logits (b, labels), labels (b,), example idx (b,)).
LossFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), labels, reduction="sum")


@dataclass
class FitResult:
    steps: int = 0
    best_step: int = 0
    stopped_early: bool = False
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)


def validate(
    model: Any, examples: Examples, label_names: Sequence[str], batch_size: int = 64
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 of ``model`` on ``examples`` (eval mode, no grad)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(examples)))
            chunks.append(model(**examples.batch(idx)).logits.float())  # (b, labels)
    logits = torch.cat(chunks)  # (n, labels)
    loss = float(F.cross_entropy(logits, examples.labels).item())
    probs = torch.softmax(logits, dim=-1).numpy()
    quality = classification_metrics(examples.labels.numpy(), probs, label_names)
    return {"loss": loss, "accuracy": quality["accuracy"], "macro_f1": quality["macro_f1"]}


def _optimizer(model: Any, settings: TrainSettings) -> torch.optim.Optimizer:
    import torch

    # Standard practice: no weight decay on biases and normalisation weights.
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.learning_rate,
    )


def fit(
    model: Any,
    train: Examples,
    validation: Examples | None,
    label_names: Sequence[str],
    settings: TrainSettings,
    ctx: JobContext,
    *,
    seed: int,
    world: World | None = None,
    loss_fn: LossFn = cross_entropy_sum,
) -> FitResult:
    """Train ``model`` in place; leaves the best validation state loaded (rank 0)."""
    import torch

    world = world or World()
    n = len(train)
    if n == 0:
        raise InvalidRequestError("the train split is empty", param="dataset")
    global_batch = min(settings.batch_size, n)
    if global_batch < world.size:
        raise InvalidRequestError("fewer training examples than processes", param="nproc")
    steps_per_epoch = n // global_batch  # trailing partial batch dropped
    total = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    eval_every = settings.eval_every or steps_per_epoch
    warmup = int(total * settings.warmup_ratio)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    net: Any = model
    if world.size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = _optimizer(model, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    result = FitResult()
    best_state: dict[str, torch.Tensor] | None = None
    best_f1 = -math.inf
    evals_without_gain = 0
    step = 0
    epoch = 0
    while step < total:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=generator)  # same on every rank
        for b in range(steps_per_epoch):
            global_idx = order[b * global_batch : (b + 1) * global_batch]
            shard = torch.tensor_split(global_idx, world.size)[world.rank]
            model.train()
            logits = net(**train.batch(shard)).logits  # (shard, labels)
            loss_sum = loss_fn(logits, train.labels[shard], shard)
            # DDP averages gradients over ranks: scale so the average is d(global mean)/dw.
            loss = loss_sum * (world.size / len(global_idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            step += 1
            mean_loss = world.sum(float(loss_sum.item())) / len(global_idx)
            result.train_loss.append((step, mean_loss))
            if world.any(ctx.cancelled()):
                raise JobCancelled()
            values = {"loss": mean_loss, "epoch": epoch + 1}
            stop = False
            if (
                validation is not None
                and len(validation)
                and (step % eval_every == 0 or step == total)
            ):
                if world.is_main:
                    scores = validate(model, validation, label_names)
                    result.validation.append({"step": step, **scores})
                    values.update(accuracy=scores["accuracy"], macro_f1=scores["macro_f1"])
                    if scores["macro_f1"] > best_f1:
                        best_f1, evals_without_gain = scores["macro_f1"], 0
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                        result.best_step, result.best = step, scores
                    else:
                        evals_without_gain += 1
                    stop = 0 < settings.patience <= evals_without_gain
                stop = world.from_main(stop)
            if world.is_main:
                ctx.progress(step, total, **values)
            if stop:
                result.stopped_early = True
                ctx.log(f"early stop at step {step}: best macro-F1 at step {result.best_step}")
                break
            if step >= total:
                break
        if result.stopped_early:
            break
        epoch += 1
    result.steps = step
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_step = step
    model.eval()
    return result
