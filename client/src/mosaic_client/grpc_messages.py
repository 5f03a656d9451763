"""A Call as Triton's gRPC request message, and a response message's outputs as plain values.

Built and read directly on the protobuf messages, without tritonclient's per-tensor objects
(InferInput, InferResult): a stream's responses are read one per generated piece, and that
wrapping cost about as much client CPU as the gRPC call itself.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from mosaic_client.calls import Call, plain


def stream_request(call: Call) -> service_pb2.ModelInferRequest:
    """The request message of `call` for ModelStreamInfer, asking for an empty final response
    (so that a stream always ends with a response flagged final)."""
    request = service_pb2.ModelInferRequest(model_name=call.model)
    for name, array, datatype in call.arrays():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(_raw(array, datatype))
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def _raw(array: np.ndarray, datatype: str) -> bytes:
    """Triton's raw tensor bytes (BYTES elements each after its length)."""
    return serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()


def outputs(response: service_pb2.ModelInferResponse) -> dict[str, Any]:
    """Each output tensor as a JSON-like value: one element as a scalar, bytes decoded as UTF-8
    (as `calls.plain` does for arrays)."""
    if len(response.raw_output_contents) != len(response.outputs):  # tensors sent as typed `contents`
        result = InferResult(response)
        return {output.name: plain(result.as_numpy(output.name)) for output in response.outputs}
    return {output.name: _value(output.datatype, raw)
            for output, raw in zip(response.outputs, response.raw_output_contents)}


def _value(datatype: str, raw: bytes) -> Any:
    """One output's value, read straight into Python values: tritonclient's
    `deserialize_bytes_tensor` and `calls.plain` build and walk a numpy array of objects for
    every output of every piece, which cost ~0.15 ms of client CPU per 16-piece stream
    (three alternating runs, 1.35 against 1.18 ms)."""
    if datatype == "BYTES":
        values: list[Any] = []
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            values.append(raw[offset + 4:offset + 4 + length].decode("utf-8"))
            offset += 4 + length
    else:
        values = np.frombuffer(raw, dtype=triton_to_np_dtype(datatype)).tolist()
    return values[0] if len(values) == 1 else values
