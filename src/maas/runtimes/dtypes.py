"""numpy dtype <-> Open Inference Protocol V2 datatype names."""

from __future__ import annotations

import numpy as np

_NAMES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


def v2_name(dtype: np.dtype) -> str:
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    return _NAMES.get(np.dtype(dtype), str(dtype))
