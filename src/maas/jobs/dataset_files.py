"""A materialized dataset directory as the jobs read it: ``dataset.json`` (kind, label
names, slice columns) and one ``<split>.jsonl`` of records per split.

How such a directory is made from a source is :mod:`maas.jobs.datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError


@dataclass(frozen=True, slots=True)
class Dataset:
    """A materialized dataset directory (``dataset.json`` + ``<split>.jsonl``)."""

    root: Path
    kind: str  # "text" | "image"
    label_names: list[str]
    slice_columns: list[str]

    @property
    def task(self) -> str:
        return "image-classification" if self.kind == "image" else "text-classification"


def read_dataset(root: Path) -> Dataset:
    path = root / "dataset.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"not a dataset directory ({path.name}: {exc})") from exc
    kind = str(doc.get("kind", "text"))
    if kind not in ("text", "image"):
        raise InvalidRequestError(f"dataset kind must be 'text' or 'image', got {kind!r}")
    names = [str(n) for n in doc.get("label_names") or []]
    if len(names) < 2:
        raise InvalidRequestError("dataset.json must list at least two label_names")
    return Dataset(root, kind, names, [str(c) for c in doc.get("slice_columns") or []])


def read_split(dataset: Dataset, split: str) -> list[dict[str, Any]]:
    """The records of one split; an absent split is an error, an empty one is []."""
    path = dataset.root / f"{split}.jsonl"
    if not path.is_file():
        raise InvalidRequestError(f"the dataset has no {split!r} split", param="split")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def has_split(dataset: Dataset, split: str) -> bool:
    return (dataset.root / f"{split}.jsonl").is_file()


def label_index(value: Any, names: Sequence[str]) -> int:
    """A record's label as an index into ``names`` (records hold an index or a name)."""
    if isinstance(value, bool):
        raise InvalidRequestError(f"invalid label {value!r}")
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    if isinstance(value, str) and value in names:
        return names.index(value)
    raise InvalidRequestError(f"label {value!r} is not one of the dataset's label_names")


def targets(records: Sequence[dict[str, Any]], dataset: Dataset) -> np.ndarray:
    return np.array([label_index(r["label"], dataset.label_names) for r in records], np.int64)


def inputs(records: Sequence[dict[str, Any]], dataset: Dataset) -> list[Any]:
    """Model inputs of records: texts, or image paths resolved inside the dataset."""
    if dataset.kind == "image":
        return [dataset.root / str(r["image"]) for r in records]
    return [str(r["text"]) for r in records]
