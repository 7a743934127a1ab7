"""Any ONNX graph served as raw named tensors through ONNX Runtime.

Requests that share a signature are concatenated along the batch axis (when
every input's first dimension is dynamic) so one session run serves many
requests; outputs are split back by row counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maas.errors import InvalidRequestError
from maas.runtimes.base import Runtime, TensorSpec
from maas.runtimes.dtypes import v2_name

_ORT_TO_V2 = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
_V2_TO_NUMPY = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}

TensorDict = dict[str, np.ndarray]


def _dims(shape: Sequence[Any]) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


class OnnxTensorRuntime(Runtime):
    task = "tensor"
    formats = ("onnx",)

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._session: Any = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._bytes = 0

    async def load(self) -> None:
        await self.run(self._load_sync)

    def _graph_path(self) -> str:
        graph = self.version.metadata.get("graph")
        if graph:
            return str(self.context.model_dir / graph)
        found = sorted(self.context.model_dir.rglob("*.onnx"))
        if not found:
            raise FileNotFoundError("no .onnx file in the version")
        return str(found[0])

    def _load_sync(self) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        if self.context.torch_threads:
            options.intra_op_num_threads = self.context.torch_threads
        path = self._graph_path()
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [
            TensorSpec(i.name, _ORT_TO_V2.get(i.type, "BYTES"), _dims(i.shape))
            for i in self._session.get_inputs()
        ]
        self._outputs = [
            TensorSpec(o.name, _ORT_TO_V2.get(o.type, "BYTES"), _dims(o.shape))
            for o in self._session.get_outputs()
        ]
        self._bytes = sum(
            p.stat().st_size for p in self.context.model_dir.rglob("*") if p.is_file()
        )

    async def unload(self) -> None:
        self._session = None

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def memory_bytes(self) -> int:
        return self._bytes

    def validate(self, item: TensorDict) -> TensorDict:
        """Check names, datatypes and shapes against the graph; 400s name the tensor."""
        expected = {spec.name: spec for spec in self._inputs}
        takes = ", ".join(repr(name) for name in expected)
        unknown = sorted(set(item) - set(expected))
        if unknown:
            raise InvalidRequestError(
                f"unknown input tensor(s) {', '.join(map(repr, unknown))}; the model takes {takes}"
            )
        missing = sorted(set(expected) - set(item))
        if missing:
            raise InvalidRequestError(
                f"missing input tensor(s) {', '.join(map(repr, missing))}; the model takes {takes}"
            )
        out: TensorDict = {}
        for name, array in item.items():
            spec = expected[name]
            want = _V2_TO_NUMPY[spec.datatype]
            if array.dtype != np.dtype(want):
                raise InvalidRequestError(
                    f"input '{name}': expected datatype {spec.datatype}, got {v2_name(array.dtype)}"
                )
            if len(array.shape) != len(spec.shape) or any(
                want_dim not in (-1, got)
                for want_dim, got in zip(spec.shape, array.shape, strict=False)
            ):
                raise InvalidRequestError(
                    f"input '{name}': expected shape {spec.shape}, got {list(array.shape)}"
                )
            out[name] = array
        return out

    async def predict(self, batch: Sequence[Any]) -> Sequence[TensorDict | BaseException]:
        # Tensor graphs can be tiny (microseconds): no thread hand-off for those.
        return await self.run_compute(self._predict_sync, list(batch))

    def _batchable(self) -> bool:
        return all(spec.shape and spec.shape[0] == -1 for spec in self._inputs + self._outputs)

    def _predict_sync(self, batch: list[TensorDict]) -> list[TensorDict | BaseException]:
        results: list[TensorDict | BaseException] = [InvalidRequestError("unset")] * len(batch)
        groups: dict[tuple[Any, ...], list[int]] = {}
        checked: dict[int, TensorDict] = {}
        for i, item in enumerate(batch):
            try:
                checked[i] = self.validate(item)
            except InvalidRequestError as exc:
                results[i] = exc
                continue
            key = tuple(sorted((n, a.shape[1:]) for n, a in checked[i].items()))
            groups.setdefault(key if self._batchable() else (i,), []).append(i)
        names = [o.name for o in self._outputs]
        for members in groups.values():
            try:
                if len(members) == 1:
                    outs = self._session.run(names, checked[members[0]])
                    results[members[0]] = dict(zip(names, outs, strict=True))
                    continue
                rows = [len(next(iter(checked[i].values()))) for i in members]
                feed = {
                    name: np.concatenate([checked[i][name] for i in members], axis=0)
                    for name in checked[members[0]]
                }
                outs = self._session.run(names, feed)
                offsets = np.cumsum([0, *rows])
                for k, i in enumerate(members):
                    results[i] = {
                        name: out[offsets[k] : offsets[k + 1]]
                        for name, out in zip(names, outs, strict=True)
                    }
            except Exception as exc:  # onnxruntime raises its own error types
                err = InvalidRequestError(f"model execution failed: {exc}")
                for i in members:
                    results[i] = err
        return results
