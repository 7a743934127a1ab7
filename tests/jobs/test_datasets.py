"""Dataset import: sources, preprocessing recorded, splits, storage as registry versions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maas.errors import ConflictError, InvalidRequestError
from maas.jobs.base import JobContext
from maas.jobs.dataset_prep import DatasetOptions, split_indices
from maas.jobs.datasets import get_dataset, import_dataset, list_datasets
from maas.registry.store import Registry


def read_split(root: Path, split: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


def test_jsonl_import_records_dedup_length_filter_label_map_and_splits(
    registry: Registry, tmp_path: Path
) -> None:
    source = tmp_path / "reviews.jsonl"
    lines = [
        {"body": f"a fine review {i}", "y": i % 2, "lang": "en" if i < 30 else "fr"}
        for i in range(60)
    ]
    lines += [
        {"body": "a fine review 3", "y": 1, "lang": "en"},  # exact duplicate text
        {"body": "meh", "y": 0, "lang": "en"},  # shorter than min_chars
        {"body": "x" * 500, "y": 0, "lang": "en"},  # longer than max_chars
        {"body": "no label", "y": None, "lang": "en"},
    ]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    options = DatasetOptions(
        text_column="body",
        label_column="y",
        label_map={"0": "neg", "1": "pos"},
        min_chars=5,
        max_chars=100,
        splits=(0.8, 0.1, 0.1),
        seed=3,
        slice_columns=["lang"],
    )
    info = import_dataset(registry, source, "reviews", options=options, created_by="me")
    assert info.ref == "reviews:1" and info.kind == "text"
    assert info.label_names == ["neg", "pos"]
    assert info.splits == {"train": 48, "validation": 6, "test": 6}
    assert info.preprocessing["rows_read"] == 64
    assert info.preprocessing["rows_kept"] == 60
    assert info.preprocessing["removed"] == {
        "empty_text": 0,
        "missing_label": 1,
        "length": 2,
        "duplicates": 1,
    }
    assert info.source["type"] == "jsonl" and len(info.source["sha256"]) == 64

    version = registry.get_version("reviews:1")
    assert version.task == "dataset" and version.format == "dataset"
    assert version.metadata["dataset"]["preprocessing"] == info.preprocessing
    assert version.params["split_sizes"] == info.splits

    ctx = JobContext("j", "train", tmp_path, tmp_path / "out", {}, 0, registry=registry)
    root = ctx.dataset_path("reviews")
    doc = json.loads((root / "dataset.json").read_text())
    assert doc["version"] == 1 and doc["columns"] == ["text", "label", "lang"]
    train = read_split(root, "train")
    assert set(train[0]) == {"text", "label", "lang"}
    texts = [
        r["text"] for split in ("train", "validation", "test") for r in read_split(root, split)
    ]
    assert len(texts) == len(set(texts)) == 60
    # Stratified: each split holds both labels in the source's 50/50 proportion.
    for split in ("train", "validation", "test"):
        counts = Counter(r["label"] for r in read_split(root, split))
        assert counts["neg"] == counts["pos"]


def test_csv_import_is_reproducible_and_each_import_is_a_new_version(
    registry: Registry, tmp_path: Path
) -> None:
    source = tmp_path / "data.csv"
    source.write_text("text,label\n" + "".join(f"sample {i},{i % 3}\n" for i in range(30)))
    first = import_dataset(registry, source, "d", options=DatasetOptions(seed=5))
    second = import_dataset(registry, source, "d", options=DatasetOptions(seed=5))
    assert (first.version, second.version) == (1, 2)
    a, b = registry.materialize(first.ref), registry.materialize(second.ref)
    for split in ("train", "validation", "test"):
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
    assert [d.ref for d in list_datasets(registry)] == ["d:2"]
    assert get_dataset(registry, "d:1").digest == first.digest


def test_sklearn_digits_become_png_images_with_their_labels(
    registry: Registry, tmp_path: Path
) -> None:
    info = import_dataset(
        registry,
        "sklearn:digits",
        "digits",
        options=DatasetOptions(max_records=150, label_map={"0": "zero"}),
    )
    assert info.kind == "image"
    assert info.preprocessing["rows_read"] == 1797  # the real data set, sampled after
    assert info.preprocessing["removed"]["sampled_out"] == 1797 - 150
    assert sum(info.splits.values()) == 150
    assert set(info.label_names) == {"zero", *map(str, range(1, 10))}
    root = registry.materialize(info.ref)
    doc = json.loads((root / "dataset.json").read_text())
    assert doc["image_size"] == [8, 8] and doc["columns"] == ["image", "label"]
    record = read_split(root, "train")[0]
    with Image.open(root / str(record["image"])) as image:
        assert image.size == (8, 8) and image.mode == "L"
        assert np.asarray(image).max() > 0
    assert len(list((root / "images").iterdir())) == 150


def test_image_folder_import_converts_to_png_and_drops_duplicate_images(
    registry: Registry, tmp_path: Path
) -> None:
    root = tmp_path / "shapes"
    for label, value in (("dark", 20), ("light", 230)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((4, 5, 3), value + i, dtype=np.uint8)
            suffix = ".jpg" if i % 2 else ".png"
            Image.fromarray(pixels).save(root / label / f"{i}{suffix}")
    Image.fromarray(np.full((4, 5, 3), 20, dtype=np.uint8)).save(root / "dark" / "copy.png")
    info = import_dataset(registry, root, "shapes", options=DatasetOptions(splits=(0.5, 0.5, 0.0)))
    assert info.label_names == ["dark", "light"]
    assert info.preprocessing["removed"] == {"duplicates": 1}
    assert info.splits == {"train": 6, "validation": 6, "test": 0}
    stored = registry.materialize(info.ref)
    assert all(p.suffix == ".png" for p in (stored / "images").iterdir())


def test_bad_sources_and_options_are_clear_errors(
    registry: Registry, tmp_path: Path, hf_dir: Path
) -> None:
    csv_file = tmp_path / "x.csv"
    csv_file.write_text("sentence,label\nhello,1\n")
    with pytest.raises(InvalidRequestError, match=r"column.*text not found.*sentence, label"):
        import_dataset(registry, csv_file, "x")
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidRequestError, match="needs pyarrow"):
            import_dataset(registry, parquet, "x")
    with pytest.raises(InvalidRequestError, match="cannot tell the format"):
        import_dataset(registry, tmp_path / "x.csv", "x", filename="x.xlsx")
    with pytest.raises(ValueError, match="summing to 1"):
        DatasetOptions(splits=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="min_chars"):
        DatasetOptions(min_chars=10, max_chars=5)
    registry.push(hf_dir, "a-model", task="text-classification")
    with pytest.raises(ConflictError, match="not a dataset"):
        import_dataset(registry, "sklearn:digits", "a-model")
    ctx = JobContext("j", "train", tmp_path, tmp_path / "o", {}, 0, registry=registry)
    with pytest.raises(InvalidRequestError, match="not a dataset"):
        ctx.dataset_path("a-model")


def test_split_allocation_is_seeded_stratified_and_complete() -> None:
    labels = ["a"] * 7 + ["b"] * 3 + ["c"]
    one = split_indices(labels, (0.6, 0.2, 0.2), seed=1, stratify=True)
    two = split_indices(labels, (0.6, 0.2, 0.2), seed=1, stratify=True)
    other = split_indices(labels, (0.6, 0.2, 0.2), seed=2, stratify=True)
    assert one == two and one != other
    assert sorted(i for split in one.values() for i in split) == list(range(11))
    assert [labels[i] for i in one["train"]].count("a") == 4  # 7 * 0.6 = 4.2
    assert "c" in [labels[i] for i in one["train"]]  # a lone example goes to train
    # Many small classes: split sizes still follow the fractions over the whole set.
    small = [str(i % 10) for i in range(30)]
    sizes = split_indices(small, (0.8, 0.1, 0.1), seed=0, stratify=True)
    assert [len(sizes[s]) for s in ("train", "validation", "test")] == [24, 3, 3]
