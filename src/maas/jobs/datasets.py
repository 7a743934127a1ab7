"""Datasets: import text tables or labelled images as versioned, content-addressed data.

A dataset is stored as a registry model of task ``dataset`` (format
``dataset``): each import is an immutable version whose files are blobs in the
same store as model weights, so digests, materialization, lineage, aliases and
gc all apply unchanged. The layout of a version::

    dataset.json        name, version, kind, label_names, columns, slice_columns,
                        splits (sizes), seed, preprocessing (what was applied), source
    train.jsonl         one record per line:
    validation.jsonl      text:  {"text": ..., "label": ..., <slice columns>...}
    test.jsonl            image: {"image": "images/<sha256>.png", "label": ...}
    images/<sha256>.png image datasets only

Sources: CSV, JSONL, Parquet (when ``pyarrow`` is installed), an image folder
``root/<label>/*.png|jpg`` (or a tar/zip of one), and ``sklearn:digits``
(scikit-learn's bundled 8x8 handwritten digits: real data, no network). Reading
and preparing them (cleaning, sampling, splitting) is :mod:`maas.jobs.dataset_prep`;
this module stores the result as a version and reads versions back.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from maas.errors import ConflictError, InvalidRequestError, NotFoundError

# BUILTIN_SOURCES and DatasetOptions are re-exported: maas.api.jobs imports them from here.
from maas.jobs.dataset_files import (
    first_records,
    read_dataset,
    split_size,
    write_meta,
    write_split,
)
from maas.jobs.dataset_prep import BUILTIN_SOURCES as BUILTIN_SOURCES
from maas.jobs.dataset_prep import SPLITS, read_source, sample, split_indices
from maas.jobs.dataset_prep import DatasetOptions as DatasetOptions
from maas.registry.formats import DATASET_TASK
from maas.registry.models import ModelRow
from maas.registry.refs import ModelRef, validate_model_name
from maas.registry.schemas import ModelInfo, UtcDatetime, VersionInfo
from maas.registry.store import Registry


class DatasetInfo(BaseModel):
    """A dataset version as the API and CLI show it."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: int
    ref: str
    kind: str
    label_names: list[str]
    columns: list[str]
    slice_columns: list[str]
    splits: dict[str, int]
    seed: int
    preprocessing: dict[str, Any]
    source: dict[str, Any]
    digest: str
    size_bytes: int
    description: str
    aliases: list[str]
    created_at: UtcDatetime
    created_by: str | None


def dataset_info(version: VersionInfo) -> DatasetInfo:
    if version.task != DATASET_TASK:
        raise InvalidRequestError(
            f"{version.ref} is a model (task {version.task}), not a dataset", param="name"
        )
    doc = version.metadata.get("dataset") or {}
    return DatasetInfo(
        name=version.model,
        version=version.version,
        ref=version.ref,
        kind=str(doc.get("kind", "")),
        label_names=list(doc.get("label_names", [])),
        columns=list(doc.get("columns", [])),
        slice_columns=list(doc.get("slice_columns", [])),
        splits=dict(doc.get("splits", {})),
        seed=int(doc.get("seed", 0)),
        preprocessing=dict(doc.get("preprocessing", {})),
        source=dict(doc.get("source", {})),
        digest=version.digest,
        size_bytes=version.size_bytes,
        description=version.description,
        aliases=version.aliases,
        created_at=version.created_at,
        created_by=version.created_by,
    )


def list_datasets(registry: Registry) -> list[DatasetInfo]:
    """The newest ready version of every dataset."""
    found = []
    for model in registry.list_models(task=DATASET_TASK):
        if model.version_count:
            try:
                found.append(dataset_info(registry.get_version(model.name)))
            except NotFoundError:  # every version archived
                continue
    return found


def get_dataset(registry: Registry, ref: str) -> DatasetInfo:
    return dataset_info(registry.get_version(ModelRef.parse(ref)))


def preview_dataset(registry: Registry, ref: str, split: str, limit: int) -> dict[str, Any]:
    """The first ``limit`` records of one split of a dataset version, as stored."""
    info = get_dataset(registry, ref)
    dataset = read_dataset(registry.materialize(f"{info.name}:{info.version}"))
    rows = first_records(dataset, split, limit)
    return {
        "dataset": f"{info.name}:{info.version}",
        "split": split,
        "columns": info.columns or sorted({k for row in rows for k in row}),
        "rows": rows,
        "total": info.splits.get(split) or split_size(dataset, split),
    }


# ----------------------------------------------------------------- import


def _next_version(registry: Registry, name: str) -> int:
    with registry.db.read() as s:
        last = s.scalar(select(ModelRow.last_version).where(ModelRow.name == name))
    return (last or 0) + 1


def import_dataset(
    registry: Registry,
    source: str | Path,
    name: str,
    *,
    options: DatasetOptions | None = None,
    filename: str | None = None,
    description: str = "",
    created_by: str | None = None,
    parent: str | None = None,
    origin: dict[str, Any] | None = None,
) -> DatasetInfo:
    """Read ``source``, prepare it, and store it as the next version of dataset ``name``.

    ``filename`` names an uploaded file whose own path says nothing (a temp file).
    ``parent`` and ``origin`` record lineage: the version the data came from (a
    feedback export names the model version) and what made it, kept in
    dataset.json's ``source``.
    """
    validate_model_name(name)
    options = options or DatasetOptions()
    try:
        existing: ModelInfo | None = registry.get_model(name)
    except NotFoundError:
        existing = None
    if existing is not None and existing.task != DATASET_TASK:
        raise ConflictError(
            f"{name!r} is a model (task {existing.task}), not a dataset", param="name"
        )
    settings = registry.settings
    staging = Path(tempfile.mkdtemp(dir=settings.tmp_dir, prefix="dataset-"))
    try:
        out = staging / "dataset"
        out.mkdir()
        records, stats, kind, source_doc = read_source(
            registry, source, filename, options, out, staging
        )
        if origin:
            source_doc = {**source_doc, "origin": origin}
        records, sampled_out = sample(records, options)
        if sampled_out:
            stats["sampled_out"] = sampled_out
        if kind == "image":
            (out / "images").mkdir()
            for record in records:
                image = out / record["image"]
                if not image.exists():
                    (staging / "pool" / image.name).rename(image)
        labels = [str(r["label"]) for r in records]
        assignment = split_indices(
            labels, options.splits, seed=options.seed, stratify=options.stratify
        )
        for split in SPLITS:
            write_split(out, split, (records[i] for i in assignment[split]))
        split_sizes = {split: len(assignment[split]) for split in SPLITS}
        columns = (
            ["text", "label", *options.slice_columns] if kind == "text" else ["image", "label"]
        )
        image_size = stats.pop("image_size", None)
        removed = {k: v for k, v in stats.items() if k != "rows_read"}
        preprocessing = {
            "rows_read": stats["rows_read"],
            "rows_kept": len(records),
            "removed": removed,
            "dedup": options.dedup,
            "min_chars": options.min_chars,
            "max_chars": options.max_chars,
            "label_map": dict(options.label_map),
            "text_column": options.text_column if kind == "text" else None,
            "label_column": options.label_column if kind == "text" else None,
            "split_fractions": list(options.splits),
            "stratified": options.stratify,
            "seed": options.seed,
            "max_records": options.max_records,
            "split_sizes": split_sizes,
        }
        doc: dict[str, Any] = {
            "name": name,
            "version": None,
            "kind": kind,
            "label_names": sorted(set(labels)),
            "columns": columns,
            "slice_columns": list(options.slice_columns) if kind == "text" else [],
            "splits": split_sizes,
            "seed": options.seed,
            "preprocessing": preprocessing,
            "source": source_doc,
        }
        if image_size is not None:
            doc["image_size"] = image_size  # [height, width] of the first image
        # dataset.json names its own version; numbers are handed out at push time,
        # so predict it, and retry in the rare race with a concurrent push.
        for _attempt in range(3):
            doc["version"] = _next_version(registry, name)
            write_meta(out, doc)
            version = registry.push(
                out,
                name,
                task=DATASET_TASK,
                description=description,
                params=preprocessing,
                created_by=created_by,
                parent=parent,
            )
            if version.version == doc["version"]:
                return dataset_info(version)
            registry.delete_version(version.ref)
        raise ConflictError(f"dataset {name!r} is being written concurrently; try again")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
