"""Refuse a text classifier whose classification head is not in its weights.

A Hugging Face directory pushed as ``text-classification`` is loaded with
``AutoModelForSequenceClassification``. When its weights hold only the encoder
(a sentence-embedding checkpoint such as MiniLM), transformers initialises the
head at random and says so in one log line: the version would answer
``LABEL_0``/``LABEL_1`` with probabilities near 0.5. The check below reads
only safetensors headers and builds the architecture on the ``meta`` device
(no memory, no weights) to learn its head's parameter names.

Building it means importing torch and transformers, 5-7 s in a fresh process
(a job's push, the CLI). So when the weights already hold the final layer of a
classification head (``classifier.weight``, or ``score.weight`` for decoder
classifiers, next to a base model's own tensors), the push is accepted without
building anything: a checkpoint that has its head's output layer was saved from
a classifier. Only weights without one pay for the exact check.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from maas.errors import InvalidRequestError
from maas.registry.formats import safetensors_header

# Head modules of transformers' *ForSequenceClassification classes, for configs
# the architecture cannot be built from (then at least one must be present).
KNOWN_HEAD_MODULES = ("classifier", "score", "pre_classifier", "logits_proj", "sequence_summary")
# The output layer of the usual heads: present, the head was saved (see above).
HEAD_OUTPUT_WEIGHTS = ("classifier.weight", "score.weight", "classifier.out_proj.weight")


def safetensors_keys(root: Path) -> set[str]:
    """Tensor names of every ``*.safetensors`` file under ``root`` (headers only)."""
    keys: set[str] = set()
    for path in sorted(root.rglob("*.safetensors")):
        keys.update(name for name in safetensors_header(path) if name != "__metadata__")
    return keys


def head_parameter_names(root: Path) -> list[str] | None:
    """Names of the classification head's parameters, or ``None`` if the config is not buildable.

    The model is built on the ``meta`` device, so nothing is allocated; its
    parameters outside the base model (``base_model_prefix``) are the head.
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(str(root))
            auto = AutoModelForSequenceClassification
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                model = auto.from_config(config)  # type: ignore[no-untyped-call]
    except Exception:  # unknown model_type, inconsistent config, missing library
        return None
    prefix = f"{model.base_model_prefix}."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def missing_head(root: Path) -> list[str]:
    """The head parameters absent from the weights (empty when the head is there)."""
    keys = safetensors_keys(root)
    if any(name in keys for name in HEAD_OUTPUT_WEIGHTS):
        return []
    names = head_parameter_names(root)
    if names is None:
        found = any(key.split(".")[0] in KNOWN_HEAD_MODULES for key in keys)
        return [] if found else [f"{module}.*" for module in KNOWN_HEAD_MODULES[:2]]
    return [name for name in names if name not in keys]


def require_classification_head(root: Path) -> None:
    """Raise when a Hugging Face text classifier's weights lack its classification head."""
    missing = missing_head(root)
    if missing:
        raise InvalidRequestError(
            f"these weights have no classification head ({', '.join(missing)} missing): "
            "served as text-classification, the head would be random and every answer "
            "meaningless. Push a model fine-tuned for classification, train one from this "
            "model with `maas train --base NAME --dataset DATASET --output NEW-NAME`, or "
            "push it as task embeddings if it is a sentence encoder",
            param="task",
        )
