"""The dataset directory layout, read and written here only: ``dataset.json`` (kind, label
names, slice columns, how it was made) and one ``<split>.jsonl`` of records per split
(``images/`` beside them for image datasets).

How such a directory is made from a source (reading, cleaning, splitting) is
:mod:`maas.jobs.datasets`; it writes through :func:`write_meta` and :func:`write_split`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
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


META_FILE = "dataset.json"


def split_path(root: Path, split: str) -> Path:
    return root / f"{split}.jsonl"


def write_split(root: Path, split: str, records: Iterable[dict[str, Any]]) -> None:
    """One JSON record per line, UTF-8 as is."""
    with split_path(root, split).open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_meta(root: Path, doc: dict[str, Any]) -> None:
    (root / META_FILE).write_text(json.dumps(doc, indent=2, ensure_ascii=False))


def read_meta(root: Path) -> dict[str, Any]:
    """All of ``dataset.json`` (what :func:`read_dataset` checks and more)."""
    doc: dict[str, Any] = json.loads((root / META_FILE).read_text(encoding="utf-8"))
    return doc


def read_dataset(root: Path) -> Dataset:
    path = root / META_FILE
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
    path = split_path(dataset.root, split)
    if not path.is_file():
        raise InvalidRequestError(f"the dataset has no {split!r} split", param="split")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def first_records(dataset: Dataset, split: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` records of a split, read no further (a preview of a large file)."""
    path = split_path(dataset.root, split)
    if not path.is_file():
        raise InvalidRequestError(
            f"the dataset has no {split!r} split (it has: "
            f"{', '.join(sorted(p.stem for p in dataset.root.glob('*.jsonl')))})",
            param="split",
        )
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(records) >= limit:
                break
            if line.strip():
                records.append(json.loads(line))
    return records


def split_size(dataset: Dataset, split: str) -> int:
    """Records in a split, counted (datasets made by maas also state it in dataset.json)."""
    with split_path(dataset.root, split).open("rb") as f:
        return sum(1 for line in f if line.strip())


def has_split(dataset: Dataset, split: str) -> bool:
    return split_path(dataset.root, split).is_file()


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
