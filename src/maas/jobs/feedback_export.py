"""Labelled feedback -> a dataset version, for retraining (``maas feedback export``).

The rows are the predictions of a model that received a label and whose input
was captured (``maas.serving.feedback``: capture on, PII already redacted), as
a CSV of ``text,label`` imported like any other source (``jobs.datasets``:
split, stratified, content-addressed). Duplicates are kept (``dedup`` off):
the same text labelled twice is two observations of what callers said, and the
export should hold exactly the rows it reports. Lineage: the dataset version's
parent is the newest model version the feedback came from, and its
``source.origin`` records the model, the versions, the row count and the
window (``since``).
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from maas.errors import InvalidRequestError
from maas.jobs.dataset_prep import DatasetOptions
from maas.jobs.datasets import DatasetInfo, import_dataset
from maas.registry.feedback import labelled_examples
from maas.registry.store import Registry


def export_feedback(
    registry: Registry,
    model: str,
    dataset: str,
    *,
    versions: Sequence[int] | None = None,
    since: datetime | None = None,
    description: str = "",
    created_by: str | None = None,
) -> tuple[DatasetInfo, int]:
    """Write the labelled feedback of ``model`` as the next version of ``dataset``;
    returns it and the number of rows exported."""
    registry.get_model(model)  # 404 for an unknown model
    rows = labelled_examples(registry.db, model, versions=versions, since=since)
    if len(rows) < 2:
        raise InvalidRequestError(
            f"model {model!r} has {len(rows)} labelled prediction(s) with a captured input; "
            "an export needs at least 2 (capture inputs with MAAS_FEEDBACK_CAPTURE_INPUTS=true "
            "or the model tag feedback_capture=true)",
            param="model",
        )
    used = sorted({version for _, _, version in rows})
    # Few labels per class cannot be stratified into three splits: keep every row in train.
    labels = [label for _, label, _ in rows]
    smallest = min(labels.count(label) for label in set(labels))
    splits = (0.8, 0.1, 0.1) if smallest >= 10 else (1.0, 0.0, 0.0)
    with tempfile.TemporaryDirectory(dir=registry.settings.tmp_dir) as tmp:
        path = Path(tmp) / f"feedback-{model}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows((text, label) for text, label, _ in rows)
        info = import_dataset(
            registry,
            path,
            dataset,
            options=DatasetOptions(dedup=False, splits=splits),
            filename=path.name,
            description=description
            or f"labelled feedback on {model} (versions {', '.join(map(str, used))})",
            created_by=created_by,
            parent=f"{model}:{used[-1]}",
            origin={
                "kind": "feedback",
                "model": model,
                "versions": used,
                "rows": len(rows),
                "since": since.isoformat() if since else None,
            },
        )
    return info, len(rows)
