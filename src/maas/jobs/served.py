"""ServedPredictor: a version's predictions made by the very runtime the server loads.

An evaluation that scores its own copy of the model code can score a behaviour
users never get (another truncation, another preprocessing). The jobs that score
a stored version (``evaluate``, the comparisons of ``quantize`` and ``export``)
therefore build the runtime class the server would pick for the version's task
and format (``runtimes.registry.runtime_class``), load it in this process, and
call its ``predict`` on batches of the dataset, exactly as the server's batcher
does: same tokenization and truncation (``runtimes.base.sequence_limit``), same
image preprocessing, same ONNX feeds. Only the answers' shape changes: the
runtime's ranked ``(label, probability)`` pairs become a probability matrix in
the model's label order, which :func:`maas.jobs.predictors.predict_dataset_proba`
maps to the dataset's.

The runtime is async (the server awaits it); a job is a plain process, so the
predictor drives it on its own event loop (``asyncio.Runner``) with a
one-thread executor, as a serving process gives each runtime.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError
from maas.registry.formats import detect_format
from maas.registry.schemas import VersionInfo
from maas.runtimes.base import Runtime, RuntimeContext
from maas.runtimes.registry import runtime_class

TASKS = {"text": "text-classification", "image": "image-classification"}


class ServedPredictor:
    """The module docstring's predictor for one version directory (a context manager)."""

    def __init__(
        self, model_dir: Path, task: str, *, version: VersionInfo | None = None, threads: int = 0
    ) -> None:
        fmt = detect_format(model_dir).format
        self.format = fmt
        self.task = task
        info = version or _local_version(model_dir, task, fmt)
        self.labels = _labels(model_dir)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="maas-evaluate")
        self._loop = asyncio.Runner()
        context = RuntimeContext(model_dir, info, self._executor, torch_threads=threads)
        self.runtime: Runtime = runtime_class(task, fmt)(context)
        self._loop.run(self.runtime.load())

    def predict_proba(self, items: Sequence[Any]) -> np.ndarray:
        """(len(items), len(labels)) float32 probabilities in the model's label order."""
        batch = [Path(i).read_bytes() for i in items] if self.task == TASKS["image"] else items
        answers = self._loop.run(self.runtime.predict(list(batch)))
        index = {label: i for i, label in enumerate(self.labels)}
        out = np.zeros((len(items), len(self.labels)), dtype=np.float32)
        for row, answer in enumerate(answers):
            if isinstance(answer, BaseException):  # the runtime's answer for one bad item
                raise InvalidRequestError(f"item {row} of the batch failed: {answer}")
            for label, probability in answer.labels:
                out[row, index[label]] = probability
        return out

    def close(self) -> None:
        try:
            self._loop.run(self.runtime.unload())
        finally:
            self._loop.close()
            self._executor.shutdown(wait=True)

    def __enter__(self) -> ServedPredictor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _labels(model_dir: Path) -> list[str]:
    """The model's labels in output order, from ``config.json`` (hf and onnx versions)."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise InvalidRequestError("the version has no config.json naming its labels")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        count = int(config.get("num_labels", 2))
        return [f"LABEL_{i}" for i in range(count)]
    return [str(id2label[key]) for key in sorted(id2label, key=int)]


def _local_version(model_dir: Path, task: str, fmt: str) -> VersionInfo:
    """A stand-in record for a directory that is not (yet) a registry version."""
    return VersionInfo(
        model=model_dir.name.lower()[:64] or "local",
        version=0,
        task=task,
        format=fmt,
        digest="",
        size_bytes=0,
        status="ready",
        description="",
        metadata={},
        metrics={},
        params={},
        tags={},
        parent=None,
        job_id=None,
        aliases=[],
        created_at=datetime.now(UTC),
        created_by=None,
    )
