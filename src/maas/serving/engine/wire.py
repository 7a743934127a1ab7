"""The engine's wire format: msgpack with a few extension types, never pickle.

What crosses between an HTTP worker and the engine process is plain data:

* numpy arrays (ext 1): dtype string, shape and the raw bytes; BYTES tensors
  (object arrays of ``bytes``) go as ext 2, a shape and a list of byte strings;
* dataclass instances of an allow-list (ext 3): the class name and its field
  values in order; an unknown name is refused when decoding;
* ``VersionInfo`` (ext 4): its JSON form, validated again on the way in. Every
  inference call carries one, always one of a few: both directions keep the
  last few encodings (the model is frozen, so a decoded one can be shared), which
  takes pydantic off the per-request path;
* ``MaasError`` and its subclasses (ext 5): class name, message, param and
  headers, so a 404 or 429 raised in the engine is the same error in the worker.

Only names listed here can be built from the wire, so a message can never make
the receiver construct an arbitrary object.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np

from maas import errors
from maas.registry.schemas import VersionInfo
from maas.runtimes.base import TensorSpec
from maas.runtimes.embeddings import Embedding
from maas.runtimes.explain import Explanation
from maas.runtimes.image_classification import ImageClassification
from maas.runtimes.speech_recognition import Segment, SpeechChunk, Transcribed
from maas.runtimes.text_classification import Classification
from maas.runtimes.text_to_image import GeneratedImage, ImagePrompt
from maas.runtimes.text_to_speech import SpeechInput, Waveform
from maas.security.limits import WindowState
from maas.serving.generation import (
    Chunk,
    GenerationRequest,
    Message,
    Prepared,
    SamplingParams,
    TokenLogprob,
    Tool,
)
from maas.serving.hosts import HostStatus, LoadedView

_ARRAY, _BYTES_ARRAY, _DATACLASS, _VERSION, _ERROR = 1, 2, 3, 4, 5

# Dataclasses that may cross the wire, by name. Hosts add theirs with ``register``.
_CLASSES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Embedding,
        Classification,
        ImageClassification,
        Explanation,
        TensorSpec,
        LoadedView,
        HostStatus,
        SamplingParams,
        Message,
        Tool,
        GenerationRequest,
        TokenLogprob,
        Prepared,
        Chunk,
        WindowState,
        SpeechChunk,
        Segment,
        Transcribed,
        SpeechInput,
        Waveform,
        ImagePrompt,
        GeneratedImage,
    )
}
_ERRORS: dict[str, type[errors.MaasError]] = {
    name: obj
    for name, obj in vars(errors).items()
    if isinstance(obj, type) and issubclass(obj, errors.MaasError)
}


# Bounded caches of VersionInfo encodings: by identity (holding the object, so its
# id cannot be reused while cached) for sending, by bytes for receiving.
_CACHE_SIZE = 64
_packed_versions: dict[int, tuple[VersionInfo, msgpack.ExtType]] = {}
_decoded_versions: dict[bytes, VersionInfo] = {}


def _pack_version(value: VersionInfo) -> msgpack.ExtType:
    cached = _packed_versions.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    ext = msgpack.ExtType(_VERSION, packb(value.model_dump(mode="json")))
    if len(_packed_versions) >= _CACHE_SIZE:
        _packed_versions.clear()
    _packed_versions[id(value)] = (value, ext)
    return ext


def _unpack_version(data: bytes) -> VersionInfo:
    version = _decoded_versions.get(data)
    if version is None:
        version = VersionInfo.model_validate(unpackb(data))
        if len(_decoded_versions) >= _CACHE_SIZE:
            _decoded_versions.clear()
        _decoded_versions[bytes(data)] = version
    return version


def register(cls: type[Any]) -> type[Any]:
    """Allow a dataclass on the wire (usable as a class decorator)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    _CLASSES[cls.__name__] = cls
    return cls


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == np.object_:
            items = [bytes(v) for v in value.reshape(-1).tolist()]
            return msgpack.ExtType(_BYTES_ARRAY, packb([list(value.shape), items]))
        contiguous = np.ascontiguousarray(value)
        header = [contiguous.dtype.str, list(contiguous.shape), contiguous.tobytes()]
        return msgpack.ExtType(_ARRAY, packb(header))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, VersionInfo):
        return _pack_version(value)
    if isinstance(value, errors.MaasError):
        headers = getattr(value, "headers", None)
        payload = [type(value).__name__, value.message, value.param, headers]
        return msgpack.ExtType(_ERROR, packb(payload))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _CLASSES.get(name) is not type(value):
            raise TypeError(f"{name} is not allowed on the engine wire")
        fields = [getattr(value, f.name) for f in dataclasses.fields(value)]
        return msgpack.ExtType(_DATACLASS, packb([name, fields]))
    raise TypeError(f"cannot send {type(value).__name__} to the engine")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _ARRAY:
        dtype, shape, raw = unpackb(data)
        # A copy: the message buffer is not ours to keep, and arrays must be writable.
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if code == _BYTES_ARRAY:
        shape, items = unpackb(data)
        array = np.empty(len(items), dtype=np.object_)
        array[:] = items
        return array.reshape(shape)
    if code == _DATACLASS:
        name, fields = unpackb(data)
        cls = _CLASSES.get(name)
        if cls is None:
            raise ValueError(f"engine wire: unknown type {name!r}")
        return cls(*fields)
    if code == _VERSION:
        return _unpack_version(data)
    if code == _ERROR:
        name, message, param, headers = unpackb(data)
        cls = _ERRORS.get(name, errors.MaasError)
        error = cls(message, param=param)
        if headers:
            error.headers = dict(headers)  # type: ignore[attr-defined]
        return error
    return msgpack.ExtType(code, data)


def packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    return packed


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
