"""Open Inference Protocol V2 REST bodies <-> numpy, with Triton's binary tensor data extension.

A body is one JSON object, optionally followed by raw tensor bytes; when bytes follow, the
``Inference-Header-Content-Length`` HTTP header gives the JSON part's length in bytes (absent:
all JSON). Callers pass that number in and get it back; this module never sees HTTP.

* JSON tensors carry ``data``: row-major, flat or nested (only the element count is checked, as
  Triton does); BOOL as ``true``/``false``, BYTES as UTF-8 strings, integers for integer types.
* Binary tensors carry ``parameters.binary_data_size`` instead; their bytes follow the JSON back
  to back in the order the tensors appear: little-endian, row-major, unpadded; BOOL is one byte
  (0 or 1); a BYTES element is a 4-byte little-endian unsigned length, then its bytes.
* An output is returned in binary when its request entry sets ``parameters.binary_data``, else
  when the request sets ``parameters.binary_data_output``; in JSON otherwise.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from maas.errors import InvalidRequestError

V2_TO_NUMPY: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),  # elements are Python ``bytes``
}

_LENGTH_PREFIX: Final = struct.Struct("<I")  # BYTES element length in binary form


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any]  # shaped as ``shape``, dtype ``V2_TO_NUMPY[datatype]``, writable
    parameters: dict[str, Any]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary_data: bool | None  # parameters.binary_data; None = use the request default
    parameters: dict[str, Any]


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None  # None when the request names no outputs
    parameters: dict[str, Any]
    binary_output_default: bool  # parameters.binary_data_output


def _loads(raw: bytes) -> Any:
    """orjson for the common case (several times faster); ``json`` for what it refuses.

    ``json`` accepts what tritonclient may send and orjson does not (NaN and
    Infinity tokens, integers past 64 bits, lone surrogates), so those keep their
    precise per-tensor errors or values.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _finite(array: np.ndarray) -> bool:
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def _dumps(document: dict[str, Any], *, finite: bool) -> bytes:
    """Compact UTF-8 JSON; orjson unless a float is non-finite (orjson would write null,
    while tritonclient reads Python's NaN / Infinity tokens back as the values they were)."""
    if finite:
        return orjson.dumps(document)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse and validate an inference request body; every problem is an InvalidRequestError."""
    json_end = len(body) if header_length is None else header_length
    if not 0 <= json_end <= len(body):
        raise InvalidRequestError(
            f"Inference-Header-Content-Length {json_end} does not fit the {len(body)}-byte body"
        )
    try:
        document = _loads(body[:json_end])
    except json.JSONDecodeError as exc:
        missing = header_length is None and exc.msg == "Extra data"
        hint = "; is Inference-Header-Content-Length missing?" if missing else ""
        raise InvalidRequestError(
            f"the request body is not valid JSON "
            f"(line {exc.lineno}, column {exc.colno}: {exc.msg}{hint})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: not UTF-8 ({exc})") from exc
    if not isinstance(document, dict):
        raise InvalidRequestError("request JSON must be an object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequestError("request 'id' must be a string")
    parameters = _object(document.get("parameters"), "request 'parameters'")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidRequestError("request parameters.binary_data_output must be a boolean")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequestError("request must have a non-empty 'inputs' array")

    tail = memoryview(body)[json_end:]  # binary tensors, back to back in input order
    offset = 0
    inputs: list[InferInput] = []
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, index, tail, offset)
        if any(seen.name == tensor.name for seen in inputs):
            raise InvalidRequestError(f"input {tensor.name!r}: given more than once")
        inputs.append(tensor)
    if offset != len(tail):
        raise InvalidRequestError(f"{len(tail) - offset} bytes after the JSON belong to no input")
    outputs = _decode_outputs(document["outputs"]) if "outputs" in document else None
    return InferRequest(request_id, inputs, outputs, parameters, binary_default)


def select_outputs(request: InferRequest, available: list[str]) -> tuple[list[str], set[str]]:
    """The outputs to return, in order, and which of them go back in binary form."""
    default = request.binary_output_default
    if not request.outputs:  # none named: every output, with the request-level default
        return list(available), set(available) if default else set()
    names: list[str] = []
    binary: set[str] = set()
    for output in request.outputs:
        if output.name not in available:
            raise InvalidRequestError(
                f"output {output.name!r}: the model has no such output "
                f"(it has {', '.join(map(repr, available)) or 'none'})"
            )
        names.append(output.name)
        if output.binary_data if output.binary_data is not None else default:
            binary.add(output.name)
    return names, binary


def encode_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: list[tuple[str, npt.NDArray[Any]]],
    binary: Collection[str],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode a response: ``(body, Inference-Header-Content-Length or None if all JSON)``."""
    if not set(binary) <= {name for name, _ in outputs}:
        raise ValueError(f"binary={sorted(binary)} names outputs that are not returned")
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs:
        try:
            datatype = numpy_to_v2_datatype(array.dtype)
        except ValueError as exc:
            raise ValueError(f"output {name!r}: {exc}") from exc
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            chunk = _to_binary(array, datatype, name)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _to_json_data(array, datatype, name)
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    document["outputs"] = entries
    header = _dumps(document, finite=all(_finite(array) for _, array in outputs))
    if not binary:
        return header, None
    return b"".join([header, *chunks]), len(header)


def numpy_to_v2_datatype(dtype: npt.DTypeLike) -> str:
    """The V2 datatype for a numpy dtype; object and string dtypes are BYTES."""
    resolved = np.dtype(dtype)
    bits = resolved.itemsize * 8
    by_kind = {"b": "BOOL", "i": f"INT{bits}", "u": f"UINT{bits}", "f": f"FP{bits}"}
    name = "BYTES" if resolved.kind in "OSUT" else by_kind.get(resolved.kind, "")
    if name not in V2_TO_NUMPY:
        raise ValueError(f"numpy dtype {resolved} has no V2 datatype")
    return name


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be an object")
    return value


def _decode_outputs(raw: Any) -> list[RequestedOutput]:
    if not isinstance(raw, list):
        raise InvalidRequestError("request 'outputs' must be an array")
    outputs: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"outputs[{index}]: missing 'name'")
        label = f"output {name!r}"
        parameters = _object(item.get("parameters"), f"{label}: 'parameters'")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidRequestError(f"{label}: parameters.binary_data must be a boolean")
        if any(seen.name == name for seen in outputs):
            raise InvalidRequestError(f"{label}: requested more than once")
        outputs.append(RequestedOutput(name, binary, parameters))
    return outputs


def _decode_input(raw: Any, index: int, tail: memoryview, offset: int) -> tuple[InferInput, int]:
    """One input, and the offset in ``tail`` where the next binary tensor starts."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"inputs[{index}]: missing 'name'")
    label = f"input {name!r}"
    for key in ("datatype", "shape"):
        if key not in raw:
            raise InvalidRequestError(f"{label}: missing {key!r}")
    datatype, shape = raw["datatype"], raw["shape"]
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise InvalidRequestError(f"{label}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidRequestError(f"{label}: 'shape' must be a list of non-negative integers")
    parameters = _object(raw.get("parameters"), f"{label}: 'parameters'")
    if "shared_memory_region" in parameters:
        raise InvalidRequestError(f"{label}: shared-memory tensors are not supported")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise InvalidRequestError(f"{label}: has both 'data' and binary_data_size")
        if type(size) is not int or size < 0:
            raise InvalidRequestError(f"{label}: binary_data_size must be a non-negative integer")
        if size > len(tail) - offset:
            raise InvalidRequestError(
                f"{label}: binary_data_size {size} exceeds the {len(tail) - offset} bytes "
                "of binary data left in the body"
            )
        flat = _from_binary(tail[offset : offset + size], datatype, shape, label)
        offset += size
    elif "data" in raw:
        flat = _from_json(raw["data"], datatype, label)
    else:
        raise InvalidRequestError(f"{label}: needs 'data' or parameters.binary_data_size")
    if flat.size != math.prod(shape):
        raise InvalidRequestError(
            f"{label}: expected {math.prod(shape)} elements for shape {shape}, got {flat.size}"
        )
    try:
        data = flat.reshape(shape)
    except ValueError as exc:  # over numpy's limits: more than 64 dims, a dim past int64
        raise InvalidRequestError(f"{label}: shape {shape} is too large") from exc
    return InferInput(name, datatype, shape, data, parameters), offset


def _from_binary(
    chunk: memoryview, datatype: str, shape: list[int], label: str
) -> npt.NDArray[Any]:
    if datatype == "BYTES":
        return _unpack_bytes(chunk, label)
    dtype = V2_TO_NUMPY[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidRequestError(
            f"{label}: expected {expected} bytes of {datatype} binary data for shape {shape}, "
            f"got {len(chunk)}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise InvalidRequestError(f"{label}: BOOL binary data must be bytes 0 or 1")
        return raw.astype(np.bool_)
    # astype copies: the result is writable (torch.from_numpy warns otherwise), aligned
    # (the chunk may start at any offset) and in native byte order.
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)


def _unpack_bytes(chunk: memoryview, label: str) -> npt.NDArray[Any]:
    items: list[bytes] = []
    offset, end = 0, len(chunk)
    while offset < end:
        start = offset + _LENGTH_PREFIX.size
        length = _LENGTH_PREFIX.unpack_from(chunk, offset)[0] if start <= end else 0
        if start + length > end:
            raise InvalidRequestError(
                f"{label}: BYTES element {len(items)} runs past the end of the binary data"
            )
        items.append(bytes(chunk[start : start + length]))
        offset = start + length
    return np.array(items, dtype=np.object_)


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_types(flat: list[Any], allowed: tuple[type, ...], what: str, label: str) -> None:
    # type() rather than isinstance(): bool is an int subclass and must not pass as one.
    for value in flat:
        if type(value) not in allowed:
            raise InvalidRequestError(f"{label}: expected {what}, got {json.dumps(value)[:80]}")


def _from_json(data: Any, datatype: str, label: str) -> npt.NDArray[Any]:
    if not isinstance(data, list):
        raise InvalidRequestError(f"{label}: 'data' must be an array")
    flat = _flatten(data)
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BOOL":
        _check_types(flat, (bool,), "true or false", label)
        return np.array(flat, dtype=np.bool_)
    if datatype == "BYTES":
        _check_types(flat, (str,), "strings", label)
        try:
            return np.array([text.encode("utf-8") for text in flat], dtype=np.object_)
        except UnicodeEncodeError as exc:  # lone surrogates such as "\ud800"
            raise InvalidRequestError(f"{label}: string is not valid Unicode") from exc
    if dtype.kind in "iu":
        _check_types(flat, (int,), f"integers for {datatype}", label)
        info = np.iinfo(dtype)
        for value in (min(flat), max(flat)) if flat else ():
            if not info.min <= value <= info.max:
                raise InvalidRequestError(
                    f"{label}: value {value} is out of range for {datatype} "
                    f"[{info.min}, {info.max}]"
                )
        return np.array(flat, dtype=dtype)
    _check_types(flat, (int, float), "numbers", label)
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError as exc:  # an integer literal beyond float64
        raise InvalidRequestError(f"{label}: value is out of range for {datatype}") from exc
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype)
    overflowed = np.isinf(narrow) & np.isfinite(wide)
    if overflowed.any():
        raise InvalidRequestError(
            f"{label}: value {wide[overflowed][0]} is out of range for {datatype}"
        )
    return narrow


def _bytes_element(item: Any, name: str) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if not isinstance(item, bytes):
        raise ValueError(f"output {name!r}: BYTES elements must be bytes or str, got {item!r}")
    return item


def _to_binary(array: npt.NDArray[Any], datatype: str, name: str) -> bytes:
    if datatype != "BYTES":
        # tobytes() is row-major whatever the memory layout; '<' fixes the byte order.
        return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    parts: list[bytes] = []
    for item in array.ravel().tolist():
        raw = _bytes_element(item, name)
        parts += (_LENGTH_PREFIX.pack(len(raw)), raw)
    return b"".join(parts)


def _to_json_data(array: npt.NDArray[Any], datatype: str, name: str) -> list[Any]:
    flat: list[Any] = array.ravel().tolist()  # row-major; numpy scalars become Python ones
    if datatype != "BYTES":
        return flat
    try:
        return [_bytes_element(item, name).decode("utf-8") for item in flat]
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"output {name!r}: holds bytes that are not UTF-8; "
            "request it with parameters.binary_data true"
        ) from exc
