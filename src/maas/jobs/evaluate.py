"""The ``evaluate`` job: quality, calibration, slices, latency and size of one version.

Spec keys: ``model`` (the version to evaluate), ``dataset`` (a dataset ref),
``split`` (default ``test``), ``slice_column`` (a column name or a list; default:
the dataset's ``slice_columns``), ``slice_gap_threshold`` (default 0.1),
``min_slice_size`` (slices with fewer examples are reported but left out of
the gap; default 5), ``batch_size`` (default 32), ``latency_runs`` (default 10).

The job does not create a version (``new_version=False``): the worker stores
the flat metrics on the evaluated version, where promotion gates read them
(``accuracy``, ``macro_f1``, ``ece``, ``latency_ms_bs1``, ``latency_ms_bs32``,
``size_bytes``, ``slice_gap``, ``slice_gap_flagged``).

This module also holds what the other jobs share for measuring a model: the
dataset reader, the predictors (Hugging Face text, ONNX text, Hugging Face
image) and the metric functions. Metrics are computed with numpy from the
confusion matrix (the tests check them against scikit-learn).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maas.errors import InvalidRequestError
from maas.jobs.base import JobCancelled, JobContext, JobOutput
from maas.jobs.reports import BarChart, Heatmap, Paragraph, Section, Table, render_report
from maas.registry.formats import detect_format

ECE_BINS = 15
LATENCY_BATCH_SIZES = (1, 32)

# --------------------------------------------------------------------------- datasets


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


# ------------------------------------------------------------------------- predictors


class Predictor(Protocol):
    labels: list[str]

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        """(len(items), len(labels)) float32 probabilities, rows summing to 1."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (batch, labels)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


def config_labels(config: Any) -> list[str]:
    return [str(config.id2label[i]) for i in range(int(config.num_labels))]


def text_max_length(config: Any, tokenizer: Any) -> int:
    limits = [512, int(getattr(config, "max_position_embeddings", 512))]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and tok_max < 100_000:
        limits.append(tok_max)
    return min(limits)


class HFTextPredictor:
    """A transformers sequence classifier in eager PyTorch (what the hf runtime serves)."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = config_labels(model.config)
        self.max_length = max_length or text_max_length(model.config, tokenizer)

    @classmethod
    def from_dir(cls, path: Path) -> HFTextPredictor:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        return cls(model, tokenizer)

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        import torch

        enc = self.tokenizer(
            [str(t) for t in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            logits = self.model(**enc).logits  # (batch, labels)
        return softmax(logits.float().numpy())


class OnnxTextPredictor:
    """An ONNX text classifier directory (model.onnx + tokenizer + config.json) on ONNX Runtime.

    Feeds the graph the int64 tokenizer outputs it declares (``input_ids``,
    ``attention_mask``, and ``token_type_ids`` if present) and reads ``logits``.
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]
        import torch
        from transformers import AutoConfig, AutoTokenizer

        graphs = sorted(path.glob("*.onnx"))
        if len(graphs) != 1:
            raise InvalidRequestError(f"expected one .onnx graph in the version, found {graphs}")
        config = AutoConfig.from_pretrained(str(path))
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.labels = config_labels(config)
        self.max_length = text_max_length(config, self.tokenizer)
        options = ort.SessionOptions()
        # Same thread count as torch in this process, so latency comparisons are fair.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(
            str(graphs[0]), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        enc = self.tokenizer(
            [str(t) for t in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        feed = {}
        for name in self.input_names:
            value = enc.get(name)
            if value is None and name == "token_type_ids":
                value = np.zeros_like(enc["input_ids"])
            if value is None:
                raise InvalidRequestError(f"the ONNX graph wants input {name!r}")
            feed[name] = np.asarray(value, dtype=np.int64)  # (batch, seq)
        (logits,) = self.session.run(["logits"], feed)  # (batch, labels)
        return softmax(np.asarray(logits, dtype=np.float32))


class HFImagePredictor:
    """A transformers image classifier, preprocessed exactly as the serving runtime does."""

    def __init__(self, model: Any, preprocess: Any) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.labels = config_labels(model.config)

    @classmethod
    def from_dir(cls, path: Path) -> HFImagePredictor:
        from transformers import AutoModelForImageClassification

        config_path = path / "preprocessor_config.json"
        doc = json.loads(config_path.read_text()) if config_path.is_file() else {}
        model = AutoModelForImageClassification.from_pretrained(str(path))
        return cls.from_config_doc(model, doc)

    @classmethod
    def from_config_doc(cls, model: Any, doc: dict[str, Any]) -> HFImagePredictor:
        """A predictor for an in-memory model and a ``preprocessor_config.json`` document."""
        from maas.runtimes.image_classification import ImagePreprocessing

        return cls(model, ImagePreprocessing.from_config(doc))

    def pixels(self, items: Sequence[Any]) -> np.ndarray:
        from PIL import Image

        from maas.runtimes.image_classification import to_rgb

        arrays = []
        for item in items:
            with Image.open(item) as image:
                arrays.append(self.preprocess(to_rgb(image)))  # (3, H, W)
        return np.stack(arrays)  # (batch, 3, H, W)

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(self.pixels(items))
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits  # (batch, labels)
        return softmax(logits.float().numpy())


def load_predictor(model_dir: Path, dataset: Dataset) -> tuple[Predictor, str]:
    """The predictor for a version directory, and the version's format (hf | onnx)."""
    fmt = detect_format(model_dir).format
    if fmt == "onnx":
        if dataset.kind != "text":
            raise InvalidRequestError("ONNX versions can be evaluated on text datasets only")
        return OnnxTextPredictor(model_dir), fmt
    if fmt != "hf":
        raise InvalidRequestError(f"cannot evaluate a {fmt!r} version; expected hf or onnx")
    if dataset.kind == "image":
        return HFImagePredictor.from_dir(model_dir), fmt
    return HFTextPredictor.from_dir(model_dir), fmt


def label_mapping(model_labels: Sequence[str], dataset_labels: Sequence[str]) -> np.ndarray:
    """Column j of the model's output -> index of the same label in the dataset.

    By name when both name the same labels; by position when the model's labels
    are the generic ``LABEL_<i>`` or otherwise differ but count the same.
    """
    if sorted(model_labels) == sorted(dataset_labels):
        return np.array([list(dataset_labels).index(label) for label in model_labels])
    if len(model_labels) == len(dataset_labels):
        return np.arange(len(model_labels))
    raise InvalidRequestError(
        f"the model predicts {len(model_labels)} labels {list(model_labels)}, "
        f"the dataset has {len(dataset_labels)} {list(dataset_labels)}"
    )


def predict_dataset_proba(
    predictor: Predictor,
    items: Sequence[Any],
    dataset_labels: Sequence[str],
    *,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(n, len(dataset_labels)) probabilities in the dataset's label order."""
    mapping = label_mapping(predictor.labels, dataset_labels)
    out = np.zeros((len(items), len(dataset_labels)), dtype=np.float32)
    total = max(1, -(-len(items) // batch_size))
    for b, start in enumerate(range(0, len(items), batch_size)):
        probs = predictor.predict_proba(items[start : start + batch_size])  # (batch, model labels)
        out[start : start + len(probs), mapping] = probs
        if on_batch is not None:
            on_batch(b + 1, total)
    return out


# ---------------------------------------------------------------------------- metrics


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """(n_labels, n_labels) counts: rows are true labels, columns predictions."""
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # 0/0 counts as 0 (scikit-learn's zero_division=0).
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by size.

    Confidence is the top probability; bin b holds confidences in (b/B, (b+1)/B]
    (the first bin also holds 0).
    """
    if len(y_true) == 0:
        return 0.0
    confidence = probs.max(axis=1)  # (n,)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)  # (n,)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = abs(correct[members].mean() - confidence[members].mean())
            ece += members.mean() * gap
    return float(ece)


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix, ECE."""
    n_labels = len(label_names)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    matrix = confusion_matrix(y_true, y_pred, n_labels)
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = matrix.sum()
    return {
        "n": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": matrix.tolist(),
        "ece": expected_calibration_error(probs, y_true) if total else 0.0,
    }


def slice_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    values: Sequence[Any],
    *,
    threshold: float,
    min_size: int,
) -> dict[str, Any]:
    """Accuracy per value of one column, and the best-worst gap among large-enough slices."""
    groups: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(str(value), []).append(i)
    slices = {}
    for value, rows in sorted(groups.items()):
        idx = np.array(rows)
        slices[value] = {
            "n": len(rows),
            "accuracy": float((y_true[idx] == y_pred[idx]).mean()),
        }
    eligible = {k: v["accuracy"] for k, v in slices.items() if v["n"] >= min_size}
    gap = max(eligible.values()) - min(eligible.values()) if len(eligible) >= 2 else 0.0
    return {
        "slices": slices,
        "gap": float(gap),
        "flagged": bool(gap > threshold),
        "best": max(eligible, key=lambda k: eligible[k]) if eligible else None,
        "worst": min(eligible, key=lambda k: eligible[k]) if eligible else None,
    }


def measure_latency_ms(
    predictor: Predictor, items: Sequence[Any], batch_size: int, runs: int
) -> float:
    """Median wall time (ms) of one ``predict_proba`` of ``batch_size`` items, end to end.

    End to end means tokenisation (or image decoding) plus the forward pass:
    what a served request pays. Items are cycled when there are fewer than the batch.
    """
    if not items:
        return 0.0
    batch = [items[i % len(items)] for i in range(batch_size)]
    predictor.predict_proba(batch)  # warm-up: first calls allocate
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        predictor.predict_proba(batch)
        times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -------------------------------------------------------------------------------- job


def run(ctx: JobContext) -> JobOutput:
    spec = ctx.spec
    ref = str(spec.get("model") or "")
    if not ref:
        raise InvalidRequestError("evaluate needs 'model' (the version to evaluate)", param="model")
    if not spec.get("dataset"):
        raise InvalidRequestError("evaluate needs 'dataset'", param="dataset")
    dataset = read_dataset(ctx.dataset_path(str(spec["dataset"])))
    split = str(spec.get("split", "test"))
    records = read_split(dataset, split)
    if not records:
        raise InvalidRequestError(f"the {split!r} split is empty", param="split")
    threshold = float(spec.get("slice_gap_threshold", 0.1))
    min_slice = int(spec.get("min_slice_size", 5))
    batch_size = int(spec.get("batch_size", 32))
    runs = int(spec.get("latency_runs", 10))
    columns = _slice_columns(spec.get("slice_column"), dataset)

    model_dir = ctx.model_path(ref)
    predictor, fmt = load_predictor(model_dir, dataset)
    ctx.log(f"evaluating {ref} ({fmt}) on {len(records)} {split} examples")

    def on_batch(step: int, total: int) -> None:
        if ctx.cancelled():
            raise JobCancelled()
        ctx.progress(step, total)

    y_true = targets(records, dataset)
    items = inputs(records, dataset)
    probs = predict_dataset_proba(
        predictor, items, dataset.label_names, batch_size=batch_size, on_batch=on_batch
    )
    quality = classification_metrics(y_true, probs, dataset.label_names)
    y_pred = probs.argmax(axis=1)
    slices = {
        column: slice_metrics(
            y_true,
            y_pred,
            [r.get(column) for r in records],
            threshold=threshold,
            min_size=min_slice,
        )
        for column in columns
    }
    latency = {
        f"bs{bs}": measure_latency_ms(predictor, items, bs, runs) for bs in LATENCY_BATCH_SIZES
    }
    size = dir_size(model_dir)
    gap = max((s["gap"] for s in slices.values()), default=0.0)
    flagged = any(s["flagged"] for s in slices.values())
    metrics: dict[str, Any] = {
        "accuracy": quality["accuracy"],
        "macro_f1": quality["macro_f1"],
        "ece": quality["ece"],
        "latency_ms_bs1": latency["bs1"],
        "latency_ms_bs32": latency["bs32"],
        "size_bytes": size,
        "slice_gap": gap,
        "slice_gap_flagged": flagged,
    }
    report = {
        "model": ref,
        "format": fmt,
        "dataset": str(spec["dataset"]),
        "split": split,
        "metrics": metrics,
        "quality": quality,
        "slices": slices,
        "slice_gap_threshold": threshold,
        "latency_ms": latency,
        "size_bytes": size,
    }
    if flagged:
        ctx.log(f"slice gap {gap:.3f} is above the threshold {threshold}")
    return JobOutput(
        task=dataset.task,
        format=fmt,
        metrics=metrics,
        params={"dataset": str(spec["dataset"]), "split": split, "slice_columns": columns},
        report=report,
        report_html=render_report(f"Evaluation of {ref}", evaluation_sections(report, dataset)),
        parent=ref,
        description=f"evaluation on {spec['dataset']} ({split})",
        new_version=False,
    )


def _slice_columns(value: Any, dataset: Dataset) -> list[str]:
    if value is None:
        return list(dataset.slice_columns)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidRequestError("slice_column must be a column name or a list of names")


def evaluation_sections(report: dict[str, Any], dataset: Dataset) -> list[Section]:
    """Report sections for one evaluation (also used by train for its test split)."""
    quality = report["quality"]
    metrics = report["metrics"]
    sections = [
        Section(
            "Summary",
            [
                Paragraph(
                    f"{report['model']} ({report['format']}) on {report['dataset']}, "
                    f"split {report['split']}, {quality['n']} examples."
                ),
                Table(["metric", "value"], [[k, v] for k, v in metrics.items()]),
            ],
        ),
        Section(
            "Per class",
            [
                Table(
                    ["label", "precision", "recall", "f1", "support"],
                    [
                        [name, c["precision"], c["recall"], c["f1"], c["support"]]
                        for name, c in quality["per_class"].items()
                    ],
                )
            ],
        ),
        Section("Confusion matrix", [Heatmap(dataset.label_names, quality["confusion_matrix"])]),
        Section(
            "Calibration",
            [Paragraph(f"Expected calibration error over {ECE_BINS} bins: {quality['ece']:.4f}.")],
        ),
    ]
    for column, result in report.get("slices", {}).items():
        accuracies = {value: s["accuracy"] for value, s in result["slices"].items()}
        blocks: list[Any] = [
            BarChart(
                accuracies,
                value_label="accuracy",
                highlight=[result["worst"]] if result["flagged"] and result["worst"] else [],
            ),
            Table(
                ["value", "n", "accuracy"],
                [[v, s["n"], s["accuracy"]] for v, s in result["slices"].items()],
            ),
            Paragraph(
                f"Best-worst accuracy gap {result['gap']:.3f} "
                f"(threshold {report['slice_gap_threshold']}).",
                flagged=result["flagged"],
            ),
        ]
        sections.append(Section(f"Slices by {column}", blocks))
    if "latency_ms" in report:
        sections.append(
            Section(
                "Latency and size",
                [
                    Table(
                        ["measure", "value"],
                        [
                            *[
                                [f"p50 latency ms ({k})", v]
                                for k, v in report["latency_ms"].items()
                            ],
                            ["size bytes", report["size_bytes"]],
                        ],
                    )
                ],
            )
        )
    return sections
