"""The V2 (Open Inference Protocol) codec: JSON and binary tensors, validation, interop."""

from __future__ import annotations

import json
import struct
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from maas.api.v2codec import (
    V2_TO_NUMPY,
    InferRequest,
    RequestedOutput,
    decode_request,
    encode_response,
    numpy_to_v2_datatype,
    select_outputs,
)
from maas.errors import InvalidRequestError

# One (2, 3) tensor per datatype, with each type's extremes where they are interesting.
SAMPLES: dict[str, npt.NDArray[Any]] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [-1, 2, -3]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1], [-1, 2, -3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [-1, 2, -3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [-1, 2, -3]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [0.0, 1e-3, -2.0]], dtype=np.float16),
    "FP32": np.array([[1.5, -2.25, 3.4e38], [1e-30, 0.0, 1 / 3]], dtype=np.float32),
    "FP64": np.array([[0.1, 1e308, -5e-324], [1 / 3, 0.0, -2.5]], dtype=np.float64),
    "BYTES": np.array(
        [[b"", b"a", "h\u00e9llo".encode()], [b"x\x00y", b"tab\t", b"end"]], dtype=np.object_
    ),
}


def _body(document: dict[str, Any], *chunks: bytes) -> tuple[bytes, int | None]:
    header = json.dumps(document).encode()
    return header + b"".join(chunks), (len(header) if chunks else None)


def _decode(document: dict[str, Any], *chunks: bytes) -> InferRequest:
    return decode_request(*_body(document, *chunks))


def _request_from_response(body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
    """A response's outputs are valid request inputs: reuse them to round-trip through both."""
    end = len(body) if header_length is None else header_length
    outputs = json.loads(body[:end])["outputs"]
    header = json.dumps({"inputs": outputs}).encode()
    return header + body[end:], (None if header_length is None else len(header))


def _assert_same(actual: npt.NDArray[Any], expected: npt.NDArray[Any]) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert actual.tolist() == expected.tolist()


def _x(**fields: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", **fields}]}


def _errors(document: dict[str, Any], *chunks: bytes) -> str:
    with pytest.raises(InvalidRequestError) as info:
        _decode(document, *chunks)
    return info.value.message


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_every_datatype_round_trips(datatype: str, binary: bool) -> None:
    array = SAMPLES[datatype]
    body, header_length = encode_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=[("t", array)],
        binary={"t"} if binary else set(),
    )
    assert (header_length is not None) is binary
    request = decode_request(*_request_from_response(body, header_length))
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("t", datatype, [2, 3])
    _assert_same(tensor.data, array)
    assert tensor.data.dtype == V2_TO_NUMPY[datatype]


def test_binary_bytes_that_are_not_utf8_round_trip() -> None:
    array = np.array([b"\xff\xfe", b"\x80"], dtype=np.object_)
    body, header_length = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=[("t", array)], binary={"t"}
    )
    _assert_same(decode_request(*_request_from_response(body, header_length)).inputs[0].data, array)


def test_empty_tensor_round_trips_in_both_forms() -> None:
    array = np.zeros((0, 4), dtype=np.float32)
    for binary in (set(), {"t"}):
        body, header_length = encode_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs=[("t", array)],
            binary=binary,
        )
        request = decode_request(*_request_from_response(body, header_length))
        _assert_same(request.inputs[0].data, array)


# --- wire format --------------------------------------------------------------------------


def test_binary_fixed_width_data_is_little_endian_row_major() -> None:
    raw = struct.pack("<4I", 1, 2, 3, 0x01020304)
    document = _x(shape=[2, 2], datatype="UINT32", parameters={"binary_data_size": 16})
    _assert_same(_decode(document, raw).inputs[0].data, np.array([[1, 2], [3, 0x01020304]], "u4"))

    column_major = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    body, header_length = encode_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[("y", column_major)],
        binary={"y"},
    )
    assert body[header_length:] == struct.pack("<6f", 0, 1, 2, 3, 4, 5)


def test_binary_bytes_elements_are_four_byte_little_endian_length_prefixed() -> None:
    expected = b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00xyz"
    array = np.array([b"ab", b"", "xyz"], dtype=np.object_)
    body, header_length = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", array)], binary={"y"}
    )
    assert header_length is not None
    assert body[header_length:] == expected
    output = json.loads(body[:header_length])["outputs"][0]
    assert output == {
        "name": "y",
        "datatype": "BYTES",
        "shape": [3],
        "parameters": {"binary_data_size": len(expected)},
    }
    document = _x(shape=[3], datatype="BYTES", parameters={"binary_data_size": len(expected)})
    assert _decode(document, expected).inputs[0].data.tolist() == [b"ab", b"", b"xyz"]


def test_binary_bool_is_one_byte_per_element() -> None:
    document = _x(shape=[3], datatype="BOOL", parameters={"binary_data_size": 3})
    assert _decode(document, b"\x01\x00\x01").inputs[0].data.tolist() == [True, False, True]
    body, header_length = encode_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[("y", np.array([True, False]))],
        binary={"y"},
    )
    assert body[header_length:] == b"\x01\x00"


def test_mixed_json_and_binary_inputs_read_binary_in_input_order() -> None:
    document = {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT16", "parameters": {"binary_data_size": 4}},
            {"name": "b", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]},
            {"name": "c", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
        ]
    }
    request = _decode(document, struct.pack("<2h", -7, 9), b"\x02\x00\x00\x00hi")
    assert [t.data.tolist() for t in request.inputs] == [[-7, 9], [0.5, 1.5], [b"hi"]]


def test_nested_json_data_is_read_row_major() -> None:
    data = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    tensor = _decode(_x(shape=[2, 2, 2], datatype="INT32", data=data)).inputs[0]
    _assert_same(tensor.data, np.arange(1, 9, dtype=np.int32).reshape(2, 2, 2))


def test_json_bytes_strings_are_utf8_encoded() -> None:
    tensor = _decode(_x(shape=[2], datatype="BYTES", data=["h\u00e9", ""])).inputs[0]
    assert tensor.data.tolist() == ["h\u00e9".encode(), b""]


def test_request_fields_and_parameters_are_kept() -> None:
    document = {
        "id": "42",
        "model_name": "ignored",  # Triton's own examples send it; the URL names the model
        "parameters": {"binary_data_output": True, "priority": 1},
        "inputs": [
            {"name": "x", "shape": [1], "datatype": "FP64", "data": [2], "parameters": {"k": 1}}
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}],
    }
    request = _decode(document)
    assert request.id == "42"
    assert request.parameters == {"binary_data_output": True, "priority": 1}
    assert request.binary_output_default is True
    assert request.inputs[0].parameters == {"k": 1}
    assert request.outputs == [
        RequestedOutput("y", False, {"binary_data": False}),
        RequestedOutput("z", None, {}),
    ]


def test_request_without_outputs_or_parameters_has_defaults() -> None:
    request = _decode(_x(shape=[1], datatype="INT8", data=[1]))
    assert (request.id, request.outputs, request.parameters) == (None, None, {})
    assert request.binary_output_default is False


def test_decoded_arrays_are_writable() -> None:
    document = _x(shape=[2], datatype="FP32", parameters={"binary_data_size": 8})
    tensor = _decode(document, struct.pack("<2f", 1, 2)).inputs[0]
    tensor.data[0] = 5  # torch.from_numpy warns on read-only arrays
    assert tensor.data.flags.writeable and tensor.data.flags.aligned


# --- request errors name the tensor -------------------------------------------------------


def test_element_count_mismatch_names_tensor() -> None:
    message = _errors(_x(shape=[3, 4], datatype="FP32", data=list(range(10))))
    assert message == "input 'x': expected 12 elements for shape [3, 4], got 10"


def test_unknown_datatype_names_tensor() -> None:
    assert _errors(_x(shape=[1], datatype="FP99", data=[1])) == "input 'x': unknown datatype 'FP99'"


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("UINT8", 300),
        ("UINT8", -1),
        ("INT8", -129),
        ("UINT64", 2**64),
        ("INT64", -(2**63) - 1),
        ("INT32", 1.5),
        ("INT32", 2.0),
        ("INT32", True),
        ("FP16", 70000.0),
        ("FP32", 1e39),
        ("FP64", 10**400),
        ("FP32", "1.0"),
        ("FP32", False),
        ("BOOL", 1),
        ("BYTES", 5),
        ("BYTES", "\ud800"),
        ("INT8", [1, {"a": 1}]),
    ],
)
def test_value_that_does_not_fit_the_datatype_names_tensor(datatype: str, value: Any) -> None:
    data = value if isinstance(value, list) else [value, value]
    assert _errors(_x(shape=[2], datatype=datatype, data=data)).startswith("input 'x': ")


def test_out_of_range_message_states_the_range() -> None:
    message = _errors(_x(shape=[1], datatype="UINT8", data=[300]))
    assert message == "input 'x': value 300 is out of range for UINT8 [0, 255]"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"datatype": "FP32", "data": [1.0]}, "missing 'shape'"),
        ({"shape": [1], "data": [1.0]}, "missing 'datatype'"),
        ({"shape": [1], "datatype": "FP32"}, "needs 'data' or parameters.binary_data_size"),
        ({"shape": [-1], "datatype": "FP32", "data": []}, "'shape' must be"),
        ({"shape": [1.0], "datatype": "FP32", "data": [1.0]}, "'shape' must be"),
        ({"shape": [True], "datatype": "FP32", "data": [1.0]}, "'shape' must be"),
        ({"shape": 1, "datatype": "FP32", "data": [1.0]}, "'shape' must be"),
        ({"shape": [1], "datatype": "FP32", "data": 1.0}, "'data' must be an array"),
        ({"shape": [1], "datatype": "FP32", "data": [1.0], "parameters": []}, "must be an object"),
        (
            {"shape": [1], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}},
            "shared-memory",
        ),
    ],
)
def test_missing_or_malformed_field_names_tensor(fields: dict[str, Any], expected: str) -> None:
    message = _errors(_x(**fields))
    assert message.startswith("input 'x': ")
    assert expected in message


def test_input_without_name_is_named_by_index() -> None:
    message = _errors({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1.0]}]})
    assert message == "inputs[0]: missing 'name'"


@pytest.mark.parametrize("document", [{}, {"inputs": []}, {"inputs": {"name": "x"}}])
def test_request_without_inputs_is_rejected(document: dict[str, Any]) -> None:
    assert "'inputs'" in _errors(document)


def test_binary_size_mismatch_names_tensor() -> None:
    document = _x(shape=[3], datatype="FP32", parameters={"binary_data_size": 8})
    message = _errors(document, b"\x00" * 8)
    assert message == "input 'x': expected 12 bytes of FP32 binary data for shape [3], got 8"


@pytest.mark.parametrize("size", [-1, 1.5, "4"])
def test_malformed_binary_size_names_tensor(size: Any) -> None:
    message = _errors(_x(shape=[1], datatype="FP32", parameters={"binary_data_size": size}), b"x")
    assert message.startswith("input 'x': binary_data_size must be")


def test_binary_size_beyond_the_body_names_tensor() -> None:
    document = _x(shape=[4], datatype="FP32", parameters={"binary_data_size": 16})
    message = _errors(document, b"\x00" * 12)
    assert message.startswith("input 'x': binary_data_size 16 exceeds the 12 bytes")


def test_binary_input_without_header_length_names_tensor() -> None:
    document = _x(shape=[1], datatype="FP32", parameters={"binary_data_size": 4})
    with pytest.raises(InvalidRequestError, match="input 'x': binary_data_size 4 exceeds the 0"):
        decode_request(json.dumps(document).encode(), None)


@pytest.mark.parametrize("shape", [[0, 2**63], [0] * 65], ids=["huge-dim", "65-dims"])
def test_shape_beyond_numpy_limits_names_tensor(shape: list[int]) -> None:
    assert _errors(_x(shape=shape, datatype="INT8", data=[])).startswith("input 'x': shape")


def test_data_and_binary_size_together_name_tensor() -> None:
    document = _x(shape=[1], datatype="FP32", data=[1.0], parameters={"binary_data_size": 4})
    assert _errors(document, b"\x00" * 4) == "input 'x': has both 'data' and binary_data_size"


@pytest.mark.parametrize(
    ("raw", "shape"),
    [
        (b"\x05\x00\x00\x00abc", [1]),  # element longer than the data
        (b"\x01\x00\x00\x00a\x01\x00", [2]),  # cut-off length prefix
    ],
)
def test_truncated_binary_bytes_names_tensor(raw: bytes, shape: list[int]) -> None:
    document = _x(shape=shape, datatype="BYTES", parameters={"binary_data_size": len(raw)})
    assert "input 'x': BYTES element" in _errors(document, raw)


def test_binary_bytes_element_count_mismatch_names_tensor() -> None:
    raw = b"\x01\x00\x00\x00a" * 3
    document = _x(shape=[2], datatype="BYTES", parameters={"binary_data_size": len(raw)})
    assert _errors(document, raw) == "input 'x': expected 2 elements for shape [2], got 3"


def test_binary_bool_other_than_0_or_1_names_tensor() -> None:
    document = _x(shape=[2], datatype="BOOL", parameters={"binary_data_size": 2})
    assert _errors(document, b"\x01\x02").startswith("input 'x': BOOL binary data")


def test_duplicate_input_names_tensor() -> None:
    one = {"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}
    assert _errors({"inputs": [one, one]}) == "input 'x': given more than once"


def test_bytes_no_input_claims_are_rejected() -> None:
    document = _x(shape=[1], datatype="INT8", parameters={"binary_data_size": 1})
    assert "2 bytes after the JSON belong to no input" in _errors(document, b"\x01\x02\x03")


@pytest.mark.parametrize("header_length", [1000, -1])
def test_header_length_outside_the_body_is_rejected(header_length: int) -> None:
    body = json.dumps(_x(shape=[1], datatype="INT8", data=[1])).encode()
    with pytest.raises(InvalidRequestError, match="Inference-Header-Content-Length"):
        decode_request(body, header_length)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe\x00", b""])
def test_invalid_json_is_rejected(body: bytes) -> None:
    with pytest.raises(InvalidRequestError, match=r"request body is not valid JSON|request JSON"):
        decode_request(body, None)


def test_invalid_json_names_the_line_and_column() -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_request(b'{"inputs": [\n  {"name": "x"}\n  {"name": "y"}]}', None)
    assert info.value.message == (
        "the request body is not valid JSON (line 3, column 3: Expecting ',' delimiter)"
    )


def test_binary_tail_without_header_length_hints_at_the_header() -> None:
    body = json.dumps(_x(shape=[1], datatype="INT8", data=[1])).encode() + b"\x00"
    with pytest.raises(InvalidRequestError, match="Inference-Header-Content-Length missing"):
        decode_request(body, None)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"id": 7}, "request 'id' must be a string"),
        ({"parameters": {"binary_data_output": 1}}, "binary_data_output must be a boolean"),
        ({"outputs": {"name": "y"}}, "request 'outputs' must be an array"),
        ({"outputs": [{}]}, "outputs[0]: missing 'name'"),
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
            "output 'y': parameters.binary_data must be a boolean",
        ),
        ({"outputs": [{"name": "y"}, {"name": "y"}]}, "output 'y': requested more than once"),
    ],
)
def test_malformed_request_fields_are_rejected(document: dict[str, Any], expected: str) -> None:
    full = {**_x(shape=[1], datatype="INT8", data=[1]), **document}
    assert expected in _errors(full)


# --- output selection ---------------------------------------------------------------------


def _request(outputs: list[RequestedOutput] | None, binary_default: bool) -> InferRequest:
    return InferRequest(None, [], outputs, {}, binary_default)


@pytest.mark.parametrize("binary_default", [False, True])
def test_all_outputs_follow_the_request_default_when_none_are_named(binary_default: bool) -> None:
    names, binary = select_outputs(_request(None, binary_default), ["a", "b"])
    assert names == ["a", "b"]
    assert binary == ({"a", "b"} if binary_default else set())


def test_named_outputs_keep_their_order_and_override_the_default() -> None:
    outputs = [
        RequestedOutput("b", None, {}),
        RequestedOutput("a", False, {"binary_data": False}),
        RequestedOutput("c", True, {"binary_data": True}),
    ]
    assert select_outputs(_request(outputs, True), ["a", "b", "c", "d"]) == (
        ["b", "a", "c"],
        {"b", "c"},
    )
    assert select_outputs(_request(outputs, False), ["a", "b", "c"]) == (["b", "a", "c"], {"c"})


def test_unknown_requested_output_is_named() -> None:
    with pytest.raises(InvalidRequestError, match="output 'nope': the model has no such output"):
        select_outputs(_request([RequestedOutput("nope", None, {})], False), ["a"])


# --- response encoding --------------------------------------------------------------------


def test_json_response_has_flat_data_and_no_header_length() -> None:
    body, header_length = encode_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=[("y", np.arange(6, dtype=np.int64).reshape(2, 3).T)],
        binary=set(),
        parameters={"k": "v"},
    )
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "m",
        "parameters": {"k": "v"},
        "outputs": [
            {"name": "y", "datatype": "INT64", "shape": [3, 2], "data": [0, 3, 1, 4, 2, 5]}
        ],
    }


def test_binary_response_puts_json_first_then_binary_in_output_order() -> None:
    body, header_length = encode_response(
        model_name="m",
        model_version="3",
        request_id="r",
        outputs=[
            ("a", np.array([1, 2], dtype=np.uint8)),
            ("b", np.array([0.5])),
            ("c", np.array([7], dtype=np.int16)),
        ],
        binary={"a", "c"},
    )
    assert header_length is not None
    header = json.loads(body[:header_length])
    assert (header["model_version"], header["id"]) == ("3", "r")
    a, b, c = header["outputs"]
    assert a["parameters"] == {"binary_data_size": 2} and "data" not in a
    assert b["data"] == [0.5] and "parameters" not in b
    assert c["parameters"] == {"binary_data_size": 2}
    assert body[header_length:] == b"\x01\x02\x07\x00"


def test_string_arrays_are_bytes_outputs_sent_as_utf8_text() -> None:
    outputs = [
        ("s", np.array(["h\u00e9", "x"])),
        ("o", np.array(["h\u00e9", b"x"], dtype=np.object_)),
    ]
    body, _ = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=outputs, binary=set()
    )
    for output in json.loads(body)["outputs"]:
        assert (output["datatype"], output["data"]) == ("BYTES", ["h\u00e9", "x"])


def test_non_utf8_bytes_in_a_json_output_name_it() -> None:
    with pytest.raises(InvalidRequestError, match="output 'y': holds bytes that are not UTF-8"):
        encode_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs=[("y", np.array([b"\xff"], dtype=np.object_))],
            binary=set(),
        )


def test_encoding_rejects_binary_names_that_are_not_outputs() -> None:
    with pytest.raises(ValueError, match="nope"):
        encode_response(
            model_name="m", model_version=None, request_id=None, outputs=[], binary={"nope"}
        )


@pytest.mark.parametrize("datatype", sorted(V2_TO_NUMPY))
def test_numpy_dtype_maps_back_to_its_v2_datatype(datatype: str) -> None:
    assert numpy_to_v2_datatype(V2_TO_NUMPY[datatype]) == datatype


@pytest.mark.parametrize(
    ("dtype", "expected"), [(">f4", "FP32"), ("<U3", "BYTES"), ("S2", "BYTES"), (bool, "BOOL")]
)
def test_byte_order_and_string_dtypes_map_to_v2(dtype: str, expected: str) -> None:
    assert numpy_to_v2_datatype(dtype) == expected


@pytest.mark.parametrize("dtype", [np.complex64, "datetime64[s]", np.longdouble])
def test_dtype_without_a_v2_datatype_is_rejected(dtype: Any) -> None:
    with pytest.raises(ValueError, match="has no V2 datatype"):
        numpy_to_v2_datatype(dtype)


# --- interoperability with NVIDIA's tritonclient -------------------------------------------


@pytest.fixture
def triton_http() -> ModuleType:
    return pytest.importorskip("tritonclient.http")


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_request_body_decodes_exactly(triton_http: ModuleType, binary: bool) -> None:
    inputs = []
    for index, (datatype, array) in enumerate(sorted(SAMPLES.items())):
        tensor = triton_http.InferInput(f"in_{datatype}", list(array.shape), datatype)
        # alternate forms within one request so JSON and binary inputs interleave
        inputs.append(tensor.set_data_from_numpy(array, binary_data=binary == bool(index % 2)))
    outputs = [
        triton_http.InferRequestedOutput("y", binary_data=True),
        triton_http.InferRequestedOutput("z", binary_data=False),
    ]
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="r1", parameters={"custom": 1}
    )
    request = decode_request(body, json_size)
    assert request.id == "r1"
    assert request.parameters == {"custom": 1}
    assert [(o.name, o.binary_data) for o in request.outputs or []] == [("y", True), ("z", False)]
    assert [t.name for t in request.inputs] == [f"in_{d}" for d in sorted(SAMPLES)]
    for tensor in request.inputs:
        _assert_same(tensor.data, SAMPLES[tensor.datatype])
    assert select_outputs(request, ["z", "y"]) == (["y", "z"], {"y"})


def test_tritonclient_without_outputs_asks_for_all_in_binary(triton_http: ModuleType) -> None:
    tensor = triton_http.InferInput("x", [2], "FP32").set_data_from_numpy(
        np.array([1, 2], dtype=np.float32), binary_data=False
    )
    body, json_size = triton_http.InferenceServerClient.generate_request_body([tensor])
    request = decode_request(body, json_size)
    assert json_size is None and request.outputs is None
    assert select_outputs(request, ["a", "b"]) == (["a", "b"], {"a", "b"})


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_reads_encoded_response(triton_http: ModuleType, binary: bool) -> None:
    outputs = [(f"out_{d}", array) for d, array in sorted(SAMPLES.items())]
    chosen = {name for index, (name, _) in enumerate(outputs) if binary == bool(index % 2)}
    body, header_length = encode_response(
        # non-ASCII text in the header: its length must count bytes, not characters
        model_name="mod\u00e8le",
        model_version="1",
        request_id="r1",
        outputs=outputs,
        binary=chosen,
    )
    result = triton_http.InferenceServerClient.parse_response_body(
        body, header_length=header_length
    )
    assert result.get_response()["id"] == "r1"
    for name, array in outputs:
        expected = array
        if array.dtype == np.object_ and name not in chosen:  # JSON BYTES come back as str
            expected = np.array([b.decode() for b in array.ravel()], np.object_).reshape(2, 3)
        _assert_same(result.as_numpy(name), expected)


def test_tritonclient_reads_non_finite_json_floats(triton_http: ModuleType) -> None:
    array = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)
    body, header_length = encode_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", array)], binary=set()
    )
    got = triton_http.InferenceServerClient.parse_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(got.as_numpy("y"), array)
