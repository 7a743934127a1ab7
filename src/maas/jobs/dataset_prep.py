"""Reading a dataset source and preparing its records: the formats (CSV, JSONL, Parquet
when ``pyarrow`` is installed, an image folder ``root/<label>/*.png|jpg`` or a tar/zip of
one, ``sklearn:digits``), cleaning (label map, dedup, length filters), a seeded sample,
and the seeded, optionally stratified, split.

Every choice is a field of :class:`DatasetOptions` and is recorded in ``dataset.json`` by
:func:`maas.jobs.datasets.import_dataset`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maas.errors import InvalidRequestError
from maas.registry.sources import extract_archive

if TYPE_CHECKING:
    from maas.registry.store import Registry

SPLITS = ("train", "validation", "test")
SKLEARN_DIGITS = "sklearn:digits"
BUILTIN_SOURCES = (SKLEARN_DIGITS,)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
TEXT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_MAX_SEED = 2**31 - 1


class DatasetOptions(BaseModel):
    """How to read and prepare a source. Every choice is recorded in dataset.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text_column: str = Field(default="text", description="Column holding the text.")
    label_column: str = Field(default="label", description="Column holding the label.")
    label_map: dict[str, str] = Field(
        default_factory=dict, description='Rename labels, e.g. {"0": "neg", "1": "pos"}.'
    )
    dedup: bool = Field(default=True, description="Drop exact duplicate texts (or images).")
    min_chars: int | None = Field(default=None, ge=0, description="Drop shorter texts.")
    max_chars: int | None = Field(default=None, ge=1, description="Drop longer texts.")
    splits: tuple[float, float, float] = Field(
        default=(0.8, 0.1, 0.1), description="Fractions for train, validation, test."
    )
    seed: int = Field(default=0, ge=0, le=_MAX_SEED, description="Seed of the split shuffle.")
    stratify: bool = Field(default=True, description="Keep label proportions in every split.")
    slice_columns: list[str] = Field(
        default_factory=list, description="Extra columns kept per record (for slice metrics)."
    )
    max_records: int | None = Field(
        default=None,
        ge=1,
        description="Keep a seeded random sample of at most this many records (after "
        "dedup and filters): quick experiments on a slice of a large source.",
    )

    @model_validator(mode="after")
    def _check(self) -> DatasetOptions:
        if any(f < 0 for f in self.splits) or not math.isclose(sum(self.splits), 1.0, abs_tol=1e-6):
            raise ValueError("splits must be three non-negative fractions summing to 1")
        if self.splits[0] <= 0:
            raise ValueError("the train split must not be empty")
        if (
            self.min_chars is not None
            and self.max_chars is not None
            and self.min_chars > self.max_chars
        ):
            raise ValueError("min_chars must not exceed max_chars")
        reserved = {"text", "label", "image"}
        clash = reserved & set(self.slice_columns)
        if clash:
            raise ValueError(f"slice columns may not be named {', '.join(sorted(clash))}")
        return self


# ----------------------------------------------------------------- reading


def _source_format(name: str) -> str:
    lower = name.lower()
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    for suffix, fmt in TEXT_FORMATS.items():
        if lower.endswith(suffix):
            return fmt
    raise InvalidRequestError(
        f"cannot tell the format of {name!r}: expected .csv, .jsonl, .parquet, an image folder "
        f"(or a .tar/.zip of one), or {', '.join(BUILTIN_SOURCES)}",
        param="source",
    )


def _read_csv(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        yield from csv.DictReader(f)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequestError(
                    f"line {number} is not valid JSON: {exc.msg}", param="source"
                ) from exc
            if not isinstance(record, dict):
                raise InvalidRequestError(f"line {number} is not a JSON object", param="source")
            yield record


def _read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise InvalidRequestError(
            "reading Parquet needs pyarrow, which is not installed: `pip install pyarrow`, "
            "or convert the file to CSV or JSONL",
            param="source",
        ) from exc
    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    yield from rows


def _label_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 read from a table is the label "1"
    text = str(value).strip()
    return text or None


# ------------------------------------------------------------ preparation


def _allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``n`` items by ``fractions``: floors, then the rest by largest remainder."""
    exact = [n * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(fractions)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def split_indices(
    labels: list[str], fractions: tuple[float, float, float], *, seed: int, stratify: bool
) -> dict[str, list[int]]:
    """Seeded (and by default label-stratified) assignment of record indices to splits.

    Split sizes follow the fractions over the whole dataset (largest remainder),
    so many small classes cannot starve the test split. Stratification orders
    the records so that every prefix holds each label in its overall proportion:
    each record's key is its (shuffled) rank within its label divided by the
    label's size; cutting that order at the split sizes gives each label about
    the same fraction in every split.
    """
    rng = random.Random(seed)  # noqa: S311 - a reproducible shuffle, not a secret
    groups: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        groups[label if stratify else ""].append(index)
    keyed: list[tuple[float, float, int]] = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for rank, index in enumerate(members):
            # The random second key breaks ties between labels without favouring one.
            keyed.append(((rank + 0.5) / len(members), rng.random(), index))
    order = [index for _, _, index in sorted(keyed)]
    out: dict[str, list[int]] = {}
    start = 0
    for name, count in zip(SPLITS, _allocate(len(order), fractions), strict=True):
        out[name] = order[start : start + count]
        start += count
        rng.shuffle(out[name])  # labels interleaved within a split
    return out


def prepare_text(
    rows: Iterable[dict[str, Any]], options: DatasetOptions
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows -> records, with the count of every row each rule removed."""
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    stats = {"rows_read": 0, "empty_text": 0, "missing_label": 0, "length": 0, "duplicates": 0}
    checked_columns = False
    for row in rows:
        if not checked_columns:
            wanted = [options.text_column, options.label_column, *options.slice_columns]
            missing = [c for c in wanted if c not in row]
            if missing:
                raise InvalidRequestError(
                    f"column(s) {', '.join(missing)} not found; the source has: "
                    f"{', '.join(map(str, row))}",
                    param="text_column" if options.text_column in missing else "label_column",
                )
            checked_columns = True
        stats["rows_read"] += 1
        raw_text = row.get(options.text_column)
        text = "" if raw_text is None else str(raw_text)
        if not text.strip():
            stats["empty_text"] += 1
            continue
        label = _label_text(row.get(options.label_column))
        if label is None:
            stats["missing_label"] += 1
            continue
        label = options.label_map.get(label, label)
        if (options.min_chars is not None and len(text) < options.min_chars) or (
            options.max_chars is not None and len(text) > options.max_chars
        ):
            stats["length"] += 1
            continue
        if options.dedup:
            if text in seen:
                stats["duplicates"] += 1
                continue
            seen.add(text)
        record: dict[str, Any] = {"text": text, "label": label}
        for column in options.slice_columns:
            value = row.get(column)
            record[column] = value if isinstance(value, (str, int, float, bool)) else str(value)
        records.append(record)
    if stats["rows_read"] == 0:
        raise InvalidRequestError("the source holds no rows", param="source")
    return records, stats


def _png(image: Any) -> bytes:
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _png_size(data: bytes) -> list[int]:
    """[height, width] from a PNG's IHDR chunk."""
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return [height, width]


def _image_folder(root: Path) -> Iterator[tuple[str, bytes, str]]:
    """(label, PNG bytes, original name) for root/<label>/*.png|jpg."""
    from PIL import Image, UnidentifiedImageError

    # A tar of "digits/" holds one folder that holds the labels.
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        subdirs = [p for p in entries[0].iterdir() if p.is_dir()]
        if subdirs:
            root = entries[0]
    labels = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not labels:
        raise InvalidRequestError(
            "an image folder must hold one sub-folder per label (root/<label>/*.png)",
            param="source",
        )
    for label_dir in labels:
        for path in sorted(label_dir.rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            try:
                with Image.open(path) as image:
                    image.load()
                    data = _png(image)
            except (UnidentifiedImageError, OSError) as exc:
                raise InvalidRequestError(
                    f"{path.relative_to(root)} is not a readable image: {exc}", param="source"
                ) from exc
            yield label_dir.name, data, path.relative_to(root).as_posix()


def _sklearn_digits() -> Iterator[tuple[str, bytes, str]]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    digits = load_digits()
    # (1797, 8, 8) intensities 0..16 -> 8-bit grayscale.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, target) in enumerate(zip(pixels, digits.target, strict=True)):
        yield str(int(target)), _png(Image.fromarray(image, mode="L")), f"digits[{index}]"


def prepare_images(
    items: Iterable[tuple[str, bytes, str]], options: DatasetOptions, pool: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Images -> records; each distinct image is written once as ``pool/<sha256>.png``."""
    pool.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    stats: dict[str, Any] = {"rows_read": 0, "duplicates": 0}
    for raw_label, data, _name in items:
        stats["rows_read"] += 1
        sha = hashlib.sha256(data).hexdigest()
        if "image_size" not in stats:
            stats["image_size"] = _png_size(data)
        if options.dedup and sha in seen:
            stats["duplicates"] += 1
            continue
        if sha not in seen:
            (pool / f"{sha}.png").write_bytes(data)
        seen.add(sha)
        label = options.label_map.get(raw_label, raw_label)
        records.append({"image": f"images/{sha}.png", "label": label})
    if not records:
        raise InvalidRequestError("the source holds no images", param="source")
    return records, stats


def sample(
    records: list[dict[str, Any]], options: DatasetOptions
) -> tuple[list[dict[str, Any]], int]:
    """At most ``max_records`` records, a seeded sample in source order."""
    if options.max_records is None or len(records) <= options.max_records:
        return records, 0
    rng = random.Random(options.seed)  # noqa: S311 - a reproducible sample, not a secret
    keep = sorted(rng.sample(range(len(records)), options.max_records))
    return [records[i] for i in keep], len(records) - len(keep)


def read_source(
    registry: Registry,
    source: str | Path,
    filename: str | None,
    options: DatasetOptions,
    out: Path,
    staging: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any], str, dict[str, Any]]:
    if isinstance(source, str) and source in BUILTIN_SOURCES:
        records, stats = prepare_images(_sklearn_digits(), options, staging / "pool")
        return records, stats, "image", {"type": source, "loader": "sklearn.datasets.load_digits"}
    path = Path(source)
    if not path.exists():
        raise InvalidRequestError(f"{path} does not exist", param="source")
    display = filename or path.name
    if path.is_dir():
        records, stats = prepare_images(_image_folder(path), options, staging / "pool")
        return records, stats, "image", {"type": "image-folder", "name": display}
    digest = _file_sha256(path)
    fmt = _source_format(display)
    source_doc = {"type": fmt, "name": display, "sha256": digest}
    if fmt == "archive":
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        settings = registry.settings
        extract_archive(
            path,
            unpacked,
            allow_unsafe=settings.allow_unsafe_formats,
            max_bytes=settings.max_upload_bytes,
        )
        records, stats = prepare_images(_image_folder(unpacked), options, staging / "pool")
        return records, stats, "image", {**source_doc, "type": "image-folder"}
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}
    try:
        records, stats = prepare_text(readers[fmt](path), options)
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{display} is not UTF-8 text: {exc}", param="source") from exc
    except csv.Error as exc:
        raise InvalidRequestError(f"{display} is not valid CSV: {exc}", param="source") from exc
    return records, stats, "text", source_doc


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
