"""A text classifier whose weights lack the classification head is refused at push."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from maas.errors import InvalidRequestError
from maas.registry.heads import head_parameter_names, missing_head
from maas.registry.store import Registry
from tests.helpers import blob_count, make_hf_dir


def _tiny_bert(root: Path, *, with_head: bool) -> Path:
    """A real 1-layer BERT saved by transformers: a classifier, or its bare encoder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForSequenceClassification(config) if with_head else BertModel(config)
    model.save_pretrained(str(root))
    return root


def test_head_names_come_from_the_architecture_built_on_the_meta_device(
    tmp_path: Path,
) -> None:
    root = _tiny_bert(tmp_path / "clf", with_head=True)
    assert head_parameter_names(root) == ["classifier.weight", "classifier.bias"]
    assert missing_head(root) == []


def test_encoder_only_weights_pushed_as_text_classification_are_refused(
    registry: Registry, tmp_path: Path
) -> None:
    encoder = _tiny_bert(tmp_path / "enc", with_head=False)
    with pytest.raises(InvalidRequestError) as refused:
        registry.push(encoder, "clf", task="text-classification")
    message = refused.value.message
    assert "no classification head (classifier.weight, classifier.bias missing)" in message
    assert "maas train" in message and "embeddings" in message
    assert refused.value.param == "task"
    assert registry.list_models() == []
    assert blob_count(registry.settings.home) == 0  # refused before anything was stored
    assert registry.push(encoder, "enc", task="embeddings").ref == "enc:1"


def test_a_real_classifier_is_accepted(registry: Registry, tmp_path: Path) -> None:
    root = _tiny_bert(tmp_path / "clf", with_head=True)
    assert registry.push(root, "clf", task="text-classification").ref == "clf:1"


def test_bundled_minilm_pushed_as_a_classifier_is_refused_even_into_an_existing_model(
    registry: Registry, minilm_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequestError, match="no classification head"):
        registry.push(minilm_dir, "sentiment", task="text-classification")
    registry.push(_tiny_bert(tmp_path / "clf", with_head=True), "sentiment")
    with pytest.raises(InvalidRequestError, match="no classification head"):
        registry.push(minilm_dir, "sentiment")  # the task comes from the model
    assert registry.push(minilm_dir, "minilm").task == "embeddings"


def test_unbuildable_configs_fall_back_to_the_known_head_names(
    registry: Registry, tmp_path: Path
) -> None:
    with_head = make_hf_dir(tmp_path / "a")  # hidden 8 with 12 heads: not buildable
    assert head_parameter_names(with_head) is None
    assert registry.push(with_head, "a", task="text-classification").ref == "a:1"
    headless = make_hf_dir(tmp_path / "b")
    save_file(
        {"encoder.weight": np.zeros((2, 2), dtype=np.float32)}, headless / "model.safetensors"
    )
    with pytest.raises(InvalidRequestError, match="no classification head"):
        registry.push(headless, "b", task="text-classification")


def test_weights_with_the_heads_output_layer_are_accepted_without_importing_torch(
    tmp_path: Path,
) -> None:
    root = _tiny_bert(tmp_path / "clf", with_head=True)
    probe = (
        "import sys; from pathlib import Path; from maas.registry.heads import missing_head; "
        f"assert missing_head(Path({str(root)!r})) == []; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]  # a push in a fresh process stays light


def test_a_head_without_its_output_layer_still_gets_the_exact_check(tmp_path: Path) -> None:
    root = _tiny_bert(tmp_path / "clf", with_head=True)
    weights = root / "model.safetensors"
    from safetensors.numpy import load_file

    tensors = {k: v for k, v in load_file(str(weights)).items() if k != "classifier.weight"}
    save_file(tensors, str(weights))
    assert missing_head(root) == ["classifier.weight"]
