"""Training a classifier from a plan: the model, its data, the loop, what is saved.

The ``train`` job (``jobs/train.py``) builds a :class:`TrainPlan` and runs
:func:`execute` in its own process; with ``nproc`` > 1, ``jobs/ddp.py`` writes
the plan to disk and every torchrun rank runs :func:`execute` on it. Both import
this module, and this module imports neither, so there is no import loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maas.errors import InvalidRequestError
from maas.jobs.base import JobContext
from maas.jobs.dataset_files import (
    Dataset,
    has_split,
    inputs,
    read_dataset,
    read_meta,
    read_split,
    targets,
)
from maas.jobs.fit import Examples, ImageExamples, TextExamples, TrainSettings, World, fit
from maas.jobs.metrics import classification_metrics
from maas.jobs.predictors import HFImagePredictor, HFTextPredictor, predict_dataset_proba

PREPROCESSOR_CONFIG = "preprocessor_config.json"


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
    doc = read_meta(dataset.root)
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
