"""The train job: real fine-tuning (MiniLM), a CNN on digits, and DDP equivalence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maas.errors import InvalidRequestError
from maas.jobs import train
from maas.jobs.fit import TextExamples, validate
from maas.registry.formats import detect_format
from tests.jobs.ml_fixtures import events, make_ctx


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_finetuning_minilm_beats_chance_on_held_out_reviews(
    tmp_path: Path, minilm_dir: Path, sentiment_dataset: Path
) -> None:
    ctx = make_ctx(
        tmp_path,
        "train",
        {
            "base": "minilm",
            "dataset": "sentiment",
            "max_steps": 12,
            "batch_size": 8,
            "learning_rate": 1e-4,
            "max_length": 16,
            "eval_every": 4,
        },
        {"minilm": minilm_dir, "sentiment": sentiment_dataset},
    )
    out = train.run(ctx)

    assert out.task == "text-classification" and out.format == "hf"
    assert out.metrics["accuracy"] > 0.7  # held-out test split; chance is 0.5
    assert out.parent == "minilm"
    detected = detect_format(ctx.output_dir)
    assert (detected.format, detected.task_hint) == ("hf", "text-classification")
    assert (ctx.output_dir / "model.safetensors").is_file()
    assert (ctx.output_dir / "tokenizer.json").is_file()
    config = json.loads((ctx.output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    progress = events(ctx)
    assert [e["step"] for e in progress] == list(range(1, 13))
    assert all("loss" in e for e in progress)
    assert sum("macro_f1" in e for e in progress) == 3  # steps 4, 8, 12
    assert out.report_html is not None and "Loss" in out.report_html


def test_early_stopping_keeps_the_best_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_dataset: Path
) -> None:
    # The untrained tiny model sits on a validation macro-F1 plateau for its
    # first steps: with patience 1 the second evaluation (step 4) stops the run,
    # and the state saved must be the one of step 2, not the last one.
    ctx = make_ctx(
        tmp_path,
        "train",
        {
            "base": "tiny",
            "dataset": "sentiment",
            "epochs": 20,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "eval_every": 2,
            "patience": 1,
        },
        {"tiny": tiny_bert_dir, "sentiment": sentiment_dataset},
    )
    out = train.run(ctx)
    fit = out.report["fit"]
    assert fit["stopped_early"]
    assert (fit["best_step"], fit["steps"]) == (2, 4)
    first, last = fit["validation"]
    assert first["loss"] != pytest.approx(last["loss"], abs=1e-6)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from maas.jobs.dataset_files import read_dataset, read_split, targets

    dataset = read_dataset(sentiment_dataset)
    records = read_split(dataset, "validation")
    tokenizer = AutoTokenizer.from_pretrained(str(ctx.output_dir))
    examples = TextExamples([r["text"] for r in records], targets(records, dataset), tokenizer, 128)
    saved = AutoModelForSequenceClassification.from_pretrained(str(ctx.output_dir))
    scores = validate(saved, examples, dataset.label_names)
    assert scores["loss"] == pytest.approx(first["loss"], abs=1e-5)
    assert out.metrics["val_macro_f1"] == first["macro_f1"]


@pytest.mark.slow
def test_small_cnn_learns_digits(tmp_path: Path, digits_dataset: Path) -> None:
    ctx = make_ctx(
        tmp_path,
        "train",
        {"dataset": "digits", "epochs": 3, "batch_size": 32},
        {"digits": digits_dataset},
    )
    out = train.run(ctx)

    assert out.task == "image-classification"
    assert out.metrics["accuracy"] > 0.7
    detected = detect_format(ctx.output_dir)
    assert (detected.format, detected.task_hint) == ("hf", "image-classification")
    preprocessor = json.loads((ctx.output_dir / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == {"height": 8, "width": 8}
    assert out.parent is None


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_dataset: Path
) -> None:
    """Same seed, same global batch of 8 (2 x 4 under DDP), no dropout: same weights.

    Each rank scales its summed loss by world_size / global_batch, so the
    all-reduced average gradient equals the single-process batch-mean gradient;
    both runs draw the same permutation and initialise the head with the same
    seed, so they take the same AdamW steps up to float summation order.
    """
    spec = {
        "base": "tiny",
        "dataset": "sentiment",
        "max_steps": 4,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "patience": 0,
        "eval_every": 100,  # validate once, at the end
    }
    refs = {"tiny": tiny_bert_dir, "sentiment": sentiment_dataset}
    single = make_ctx(tmp_path / "single", "train", spec, refs)
    double = make_ctx(tmp_path / "ddp", "train", {**spec, "nproc": 2}, refs)
    one = train.run(single)
    two = train.run(double)

    assert two.report["world_size"] == 2
    a = load_file(str(single.output_dir / "model.safetensors"))
    b = load_file(str(double.output_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = max(
        float((a[k] - load_file(str(tiny_bert_dir / "model.safetensors"))[k]).abs().max())
        for k in ("bert.encoder.layer.0.intermediate.dense.weight",)
    )
    assert moved > 1e-3  # training really changed the weights...
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4  # ...and both runs changed them the same way
    losses_one = [loss for _, loss in one.report["fit"]["train_loss"]]
    losses_two = [loss for _, loss in two.report["fit"]["train_loss"]]
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    assert [e["step"] for e in events(double)] == [1, 2, 3, 4]


def test_text_training_without_a_base_is_rejected(tmp_path: Path, sentiment_dataset: Path) -> None:
    ctx = make_ctx(tmp_path, "train", {"dataset": "sentiment"}, {"sentiment": sentiment_dataset})
    with pytest.raises(InvalidRequestError, match="needs 'base'"):
        train.run(ctx)


def test_cancelled_training_stops_between_steps(
    tmp_path: Path, tiny_bert_dir: Path, sentiment_dataset: Path
) -> None:
    from maas.jobs.base import JobCancelled

    ctx = make_ctx(
        tmp_path,
        "train",
        {"base": "tiny", "dataset": "sentiment", "epochs": 5, "batch_size": 8},
        {"tiny": tiny_bert_dir, "sentiment": sentiment_dataset},
    )
    ctx.request_cancel()
    with pytest.raises(JobCancelled):
        train.run(ctx)
    assert not (ctx.output_dir / "model.safetensors").exists()
