"""Real, tiny models and datasets for the ML job tests, and a JobContext on local folders.

The fixtures are re-exported by ``tests/jobs/conftest.py``; the helpers
(``make_ctx``, ``events``, ...) are imported from here. The datasets follow the
layout ``JobContext.dataset_path`` materializes: ``dataset.json`` +
``train/validation/test.jsonl`` (+ ``images/`` for image datasets).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maas.jobs.base import JobContext, JobOutput

POSITIVE = ("good", "great", "excellent", "wonderful", "amazing", "lovely", "fantastic", "superb")
NEGATIVE = ("bad", "terrible", "awful", "horrible", "poor", "dreadful", "disappointing", "boring")
NOUNS = {
    "food": ("meal", "soup", "pizza", "dessert", "salad", "coffee"),
    "movies": ("film", "plot", "acting", "ending", "soundtrack", "movie"),
}
TEMPLATES = (
    "the {noun} was {adj}",
    "what a {adj} {noun}",
    "i found the {noun} {adj}",
    "honestly a {adj} {noun} overall",
    "{adj} {noun}, really",
)


@dataclass
class LocalJobContext(JobContext):
    """A JobContext whose refs name local folders instead of registry versions."""

    refs: dict[str, Path] = field(default_factory=dict)

    def model_path(self, ref: str) -> Path:
        return self.refs[ref]

    def dataset_path(self, ref: str) -> Path:
        return self.refs[ref]


def make_ctx(
    tmp_path: Path, kind: str, spec: dict[str, Any], refs: dict[str, Path], seed: int = 0
) -> LocalJobContext:
    workdir = tmp_path / f"job-{kind}"
    return LocalJobContext(
        job_id=f"test-{kind}",
        kind=kind,
        workdir=workdir,
        output_dir=workdir / "output",
        spec=spec,
        seed=seed,
        refs=refs,
    )


def events(ctx: JobContext) -> list[dict[str, Any]]:
    path = ctx.workdir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sentiment_records(n: int, seed: int, *, flip_domain: str | None = None) -> list[dict[str, Any]]:
    """Short reviews whose label is carried by one sentiment word; ``domain`` is a slice column.

    ``flip_domain`` inverts the labels of that domain (a slice the model must fail).
    """
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = i % 2
        domain = "food" if (i // 2) % 2 == 0 else "movies"
        text = rng.choice(TEMPLATES).format(
            noun=rng.choice(NOUNS[domain]), adj=rng.choice(POSITIVE if label else NEGATIVE)
        )
        if domain == flip_domain:
            label = 1 - label
        records.append({"text": text, "label": label, "domain": domain})
    return records


def write_dataset(
    root: Path, meta: dict[str, Any], splits: dict[str, list[dict[str, Any]]]
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for split, records in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


TEXT_META = {"kind": "text", "label_names": ["negative", "positive"], "slice_columns": ["domain"]}


@pytest.fixture(scope="session")
def sentiment_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("sentiment"),
        TEXT_META,
        {
            "train": sentiment_records(64, seed=1),
            "validation": sentiment_records(16, seed=2),
            "test": sentiment_records(32, seed=3),
        },
    )


@pytest.fixture(scope="session")
def skewed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test split where every ``movies`` label is inverted: a slice gap by construction."""
    return write_dataset(
        tmp_path_factory.mktemp("skewed"),
        TEXT_META,
        {"test": sentiment_records(40, seed=4, flip_domain="movies")},
    )


@pytest.fixture(scope="session")
def digits_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sklearn's 8x8 digits as grayscale PNGs: 700 train, 150 validation, 150 test."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    (root / "images").mkdir()
    digits = load_digits()
    pixels = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    order = np.random.default_rng(0).permutation(len(pixels))[:1000]
    records = []
    for i in order:
        name = f"images/{i}.png"
        Image.fromarray(pixels[i], mode="L").save(root / name)
        records.append({"image": name, "label": int(digits.target[i])})
    meta = {"kind": "image", "label_names": [str(d) for d in range(10)], "image_size": [8, 8]}
    return write_dataset(
        root,
        meta,
        {"train": records[:700], "validation": records[700:850], "test": records[850:]},
    )


def save_tokenizer(source: Path, target: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A random 2-layer BERT classifier (hidden 32, no dropout) with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
    model.save_pretrained(str(root))
    save_tokenizer(minilm_dir, root)
    return root


@pytest.fixture(scope="session")
def tiny_classifier_dir(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, sentiment_dataset: Path
) -> Path:
    """The tiny BERT trained on the sentiment dataset by the train job (accuracy well above 0.5)."""
    import torch

    from maas.jobs import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = make_ctx(
            tmp_path_factory.mktemp("tiny-classifier"),
            "train",
            {
                "base": "tiny",
                "dataset": "sentiment",
                "epochs": 6,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "patience": 0,
            },
            {"tiny": tiny_bert_dir, "sentiment": sentiment_dataset},
        )
        out = train.run(ctx)
    finally:
        torch.set_num_threads(threads)
    assert out.metrics["accuracy"] > 0.8, out.metrics
    return ctx.output_dir


@pytest.fixture(scope="session")
def int8_quantized(
    tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path, sentiment_dataset: Path
) -> tuple[LocalJobContext, JobOutput]:
    """The tiny classifier quantized to int8 ONNX by the quantize job, compared on the
    sentiment test split: made once, read by the quantize and evaluate tests (none writes
    into it)."""
    import torch

    from maas.jobs import optimize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = make_ctx(
            tmp_path_factory.mktemp("int8"),
            "quantize",
            {"model": "clf", "dataset": "sentiment", "latency_runs": 2},
            {"clf": tiny_classifier_dir, "sentiment": sentiment_dataset},
        )
        out = optimize.quantize(ctx)
    finally:
        torch.set_num_threads(threads)
    return ctx, out
