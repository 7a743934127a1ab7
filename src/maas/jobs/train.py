"""The ``train`` job: fine-tune a text classifier, or train a small image classifier.

Spec keys: ``dataset`` (required), ``base`` (the encoder or classifier to start
from; required for text, optional for images), ``epochs`` (3), ``max_steps``
(none), ``batch_size`` (16), ``learning_rate`` or ``lr`` (5e-5 for text, 3e-3
for an image model trained from scratch), ``max_length`` (128 tokens),
``weight_decay`` (0.01), ``warmup_ratio`` (0), ``patience`` (2 evaluations
without a better validation macro-F1 stop training; 0 never stops early),
``eval_every`` (steps between validation passes; default once per epoch),
``nproc`` (1; more runs the same loop under torchrun, see :mod:`maas.jobs.ddp`)
and, for images from scratch, ``embedding_size`` (16), ``hidden_sizes``
([16, 32]), ``depths`` ([1, 1]).

Text: ``AutoModelForSequenceClassification`` on top of the base encoder, with
``num_labels``/``id2label`` from the dataset; the head is new, the encoder
weights are the base's.

Images from scratch: a tiny ResNet (``ResNetConfig``, basic blocks). It is a
plain CNN, it learns small images in a few epochs on a CPU, and it is an
``AutoModelForImageClassification`` model, so the ``image-classification``
runtime serves the result like any Hugging Face checkpoint. The version gets a
``preprocessor_config.json`` (resize to the dataset's image size, rescale by
1/255, normalise with mean = std = 0.5); training preprocesses with the
runtime's own :class:`~maas.runtimes.image_classification.ImagePreprocessing`
so served inputs match trained ones exactly. (A ViT of the same size learnt
far slower on 8x8 digits.)

The loop keeps the state with the best validation macro-F1 and saves that one
(safetensors, Hugging Face layout, tokenizer or preprocessor config beside it).

Every optimisation step uses a global batch of ``batch_size`` examples drawn
from a seeded permutation; the trailing partial batch of an epoch is dropped.
Under DDP each of N ranks takes one contiguous shard of the same global batch
and scales its summed loss by N / global_batch, so the averaged gradient is the
gradient of the global batch mean: with the same seed and no dropout, one
process and N processes take the same steps up to float summation order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from maas.errors import InvalidRequestError
from maas.jobs.base import JobCancelled, JobContext, JobOutput
from maas.jobs.evaluate import (
    Dataset,
    HFImagePredictor,
    HFTextPredictor,
    classification_metrics,
    evaluation_sections,
    has_split,
    inputs,
    predict_dataset_proba,
    read_dataset,
    read_split,
    targets,
)
from maas.jobs.reports import LineChart, Paragraph, Section, Table, render_report

if TYPE_CHECKING:
    import torch

PREPROCESSOR_CONFIG = "preprocessor_config.json"


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


# ------------------------------------------------------------------------------ models


def build_text_classifier(base: Path, label_names: Sequence[str]) -> tuple[Any, Any]:
    """(model, tokenizer): the base encoder with a fresh head for these labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        ignore_mismatched_sizes=True,  # a classifier base with another label set
    )
    model.config.problem_type = "single_label_classification"
    return model, tokenizer


def image_size_of(dataset: Dataset, records: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(height, width) from dataset.json's ``image_size``, else the first image's."""
    doc = json.loads((dataset.root / "dataset.json").read_text(encoding="utf-8"))
    size = doc.get("image_size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, list) and len(size) == 2:
        return int(size[0]), int(size[1])
    from PIL import Image

    with Image.open(dataset.root / str(records[0]["image"])) as image:
        width, height = image.size
    return height, width


def preprocessor_config(height: int, width: int) -> dict[str, Any]:
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def build_image_classifier(
    base: Path | None, label_names: Sequence[str], spec: dict[str, Any], size: tuple[int, int]
) -> tuple[Any, dict[str, Any]]:
    """(model, preprocessor config): fine-tune ``base`` or a tiny ResNet from scratch."""
    from transformers import AutoModelForImageClassification, ResNetConfig

    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in enumerate(label_names)}
    if base is not None:
        model = AutoModelForImageClassification.from_pretrained(
            str(base),
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
        )
        path = base / PREPROCESSOR_CONFIG
        doc = json.loads(path.read_text()) if path.is_file() else preprocessor_config(*size)
        return model, doc
    config = ResNetConfig(
        num_channels=3,
        embedding_size=int(spec.get("embedding_size", 16)),
        hidden_sizes=[int(h) for h in spec.get("hidden_sizes", [16, 32])],
        depths=[int(d) for d in spec.get("depths", [1, 1])],
        layer_type="basic",
        downsample_in_first_stage=False,
    )
    config.id2label, config.label2id = id2label, label2id  # num_labels follows id2label
    from transformers import ResNetForImageClassification

    return ResNetForImageClassification(config), preprocessor_config(*size)


# ------------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """Everything a training process needs, JSON-serialisable (DDP ranks read it from disk)."""

    dataset: str  # materialized dataset directory
    base: str | None  # materialized base model directory
    output_dir: str
    spec: dict[str, Any]
    seed: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def execute(plan: TrainPlan, ctx: JobContext, world: World | None = None) -> dict[str, Any]:
    """Build, train and (on rank 0) save the model; returns a JSON-able result."""
    import torch

    world = world or World()
    dataset = read_dataset(Path(plan.dataset))
    base = Path(plan.base) if plan.base else None
    names = dataset.label_names
    train_records = read_split(dataset, "train")
    val_records = read_split(dataset, "validation") if has_split(dataset, "validation") else []
    torch.manual_seed(plan.seed)  # the new head's initialisation, identical on every rank
    tokenizer: Any = None
    preprocess_doc: dict[str, Any] | None = None
    if dataset.kind == "text":
        if base is None:
            raise InvalidRequestError("training a text classifier needs 'base'", param="base")
        settings = TrainSettings.from_spec(plan.spec, default_lr=5e-5)
        model, tokenizer = build_text_classifier(base, names)

        def examples(records: list[dict[str, Any]]) -> Examples:
            texts = inputs(records, dataset)
            return TextExamples(texts, targets(records, dataset), tokenizer, settings.max_length)

    else:
        settings = TrainSettings.from_spec(plan.spec, default_lr=5e-5 if base else 3e-3)
        size = image_size_of(dataset, train_records)
        model, preprocess_doc = build_image_classifier(base, names, plan.spec, size)
        predictor = HFImagePredictor.from_config_doc(model, preprocess_doc)

        def examples(records: list[dict[str, Any]]) -> Examples:
            return ImageExamples(
                predictor.pixels(inputs(records, dataset)), targets(records, dataset)
            )

    train, validation = examples(train_records), examples(val_records) if val_records else None
    ctx.log(
        f"training on {len(train)} examples (validation {len(val_records)}), "
        f"{world.size} process(es), batch {settings.batch_size}, lr {settings.learning_rate}"
    )
    result = fit(model, train, validation, names, settings, ctx, seed=plan.seed, world=world)
    out: dict[str, Any] = {
        "settings": asdict(settings),
        "fit": asdict(result),
        "parameter_count": int(sum(p.numel() for p in model.parameters())),
        "world_size": world.size,
    }
    if not world.is_main:
        return out
    output = Path(plan.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(output))
    if preprocess_doc is not None:
        (output / PREPROCESSOR_CONFIG).write_text(json.dumps(preprocess_doc, indent=2))
    if has_split(dataset, "test"):
        test_records = read_split(dataset, "test")
        if test_records:
            test_predictor: Any = (
                HFTextPredictor(model, tokenizer, settings.max_length)
                if tokenizer is not None
                else HFImagePredictor(model, predictor.preprocess)
            )
            probs = predict_dataset_proba(test_predictor, inputs(test_records, dataset), names)
            out["test"] = classification_metrics(targets(test_records, dataset), probs, names)
    return out


def run(ctx: JobContext) -> JobOutput:
    spec = ctx.spec
    if not spec.get("dataset"):
        raise InvalidRequestError("train needs 'dataset'", param="dataset")
    dataset_dir = ctx.dataset_path(str(spec["dataset"]))
    base_ref = spec.get("base") or spec.get("model")
    base_dir = ctx.model_path(str(base_ref)) if base_ref else None
    plan = TrainPlan(
        dataset=str(dataset_dir),
        base=str(base_dir) if base_dir else None,
        output_dir=str(ctx.output_dir),
        spec=dict(spec),
        seed=ctx.seed,
    )
    nproc = int(spec.get("nproc", 1))
    if nproc > 1:
        from maas.jobs import ddp

        result = ddp.launch(ctx, plan, nproc)
    else:
        result = execute(plan, ctx)
    dataset = read_dataset(dataset_dir)
    return _output(ctx, dataset, result, base_ref=str(base_ref) if base_ref else None)


def _output(
    ctx: JobContext, dataset: Dataset, result: dict[str, Any], *, base_ref: str | None
) -> JobOutput:
    fit_result = result["fit"]
    best = fit_result["best"]
    metrics: dict[str, Any] = {
        "train_loss": fit_result["train_loss"][-1][1] if fit_result["train_loss"] else None,
        "steps": fit_result["steps"],
    }
    if best:
        metrics.update(val_accuracy=best["accuracy"], val_macro_f1=best["macro_f1"])
    test = result.get("test")
    if test:
        metrics.update(accuracy=test["accuracy"], macro_f1=test["macro_f1"], ece=test["ece"])
    params = {**result["settings"], "seed": ctx.seed, "dataset": ctx.spec["dataset"]}
    if base_ref:
        params["base"] = base_ref
    report = {"metrics": metrics, "params": params, **result}
    curves = {"train loss": [tuple(p) for p in fit_result["train_loss"]]}
    if fit_result["validation"]:
        curves["validation loss"] = [(v["step"], v["loss"]) for v in fit_result["validation"]]
    sections = [
        Section(
            "Summary",
            [
                Paragraph(
                    f"{fit_result['steps']} steps on {result['world_size']} process(es); "
                    f"best validation macro-F1 at step {fit_result['best_step']}"
                    + (" (early stop)." if fit_result["stopped_early"] else ".")
                ),
                Table(["metric", "value"], [[k, v] for k, v in metrics.items() if v is not None]),
                Table(["parameter", "value"], [[k, str(v)] for k, v in params.items()]),
            ],
        ),
        Section("Loss", [LineChart(curves, y_label="loss")]),
    ]
    if fit_result["validation"]:
        sections.append(
            Section(
                "Validation",
                [
                    LineChart(
                        {
                            "accuracy": [
                                (v["step"], v["accuracy"]) for v in fit_result["validation"]
                            ],
                            "macro-F1": [
                                (v["step"], v["macro_f1"]) for v in fit_result["validation"]
                            ],
                        },
                        y_label="score",
                    )
                ],
            )
        )
    if test:
        test_report = {
            "model": "trained model",
            "format": "hf",
            "dataset": ctx.spec["dataset"],
            "split": "test",
            "metrics": {k: test[k] for k in ("accuracy", "macro_f1", "ece")},
            "quality": test,
        }
        sections.extend(
            Section(f"Test split: {s.title.lower()}", s.blocks)
            for s in evaluation_sections(test_report, dataset)
        )
    return JobOutput(
        task=dataset.task,
        format="hf",
        metrics=metrics,
        params=params,
        report=report,
        report_html=render_report("Training report", sections),
        parent=base_ref,
        description=f"trained on {ctx.spec['dataset']}",
    )
