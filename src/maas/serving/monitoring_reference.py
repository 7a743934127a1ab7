"""The training data of a version, as a drift reference (read on a worker thread).

The train job writes ``params["dataset"]``: the dataset reference it trained on.
An unpinned reference (``reviews`` or ``reviews@latest``) names whatever version
was newest *then*, so the version is the newest one created no later than the
model version itself. Datasets are read as stored by ``maas.jobs.datasets``
(``train.jsonl``, one ``{"text": ...}`` record a line); serving may not import
the jobs package, and this one file layout is all it needs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from maas.errors import MaasError
from maas.registry.formats import DATASET_TASK
from maas.registry.refs import ModelRef
from maas.registry.schemas import VersionInfo
from maas.registry.store import Registry


def training_texts(
    registry: Registry,
) -> Callable[[VersionInfo, int], tuple[str, list[str]] | None]:
    """``(dataset ref, up to n texts of its train split)`` of a version, or None."""

    def find(version: VersionInfo, n: int) -> tuple[str, list[str]] | None:
        named = version.params.get("dataset")
        if not isinstance(named, str) or not named:
            return None
        try:
            dataset = _dataset_version(registry, ModelRef.parse(named), version)
        except MaasError:
            return None
        if dataset is None or dataset.task != DATASET_TASK:
            return None
        root = registry.materialize(dataset.ref)
        train = root / "train.jsonl"
        if not train.is_file():
            return None
        texts = []
        with train.open(encoding="utf-8") as f:
            for line in f:
                text = json.loads(line).get("text") if line.strip() else None
                if isinstance(text, str) and text:
                    texts.append(text)
        if len(texts) < 2:
            return None
        if len(texts) > n:  # a seeded sample: the same reference after every restart
            texts = random.Random(0).sample(texts, n)  # noqa: S311 (a sample, not a secret)
        return dataset.ref, texts

    return find


def _dataset_version(registry: Registry, ref: ModelRef, model: VersionInfo) -> VersionInfo | None:
    if ref.version is not None or ref.alias is not None:
        return registry.get_version(ref)
    candidates = [
        v
        for v in registry.list_versions(ref.name)
        if v.status == "ready" and v.created_at <= model.created_at
    ]
    return max(candidates, key=lambda v: v.version) if candidates else None
