"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) on the wire: request and
response bodies, with the binary tensor data extension.

A request body is JSON, or (binary extension) JSON whose length the ``Inference-Header-Content-
Length`` header gives, followed by the tensors' raw bytes in input order: an input with
``parameters.binary_data_size`` has no ``data`` in the JSON; its bytes follow. BYTES elements in
binary are each a 4-byte little-endian length and the bytes; FP32 is little-endian row-major.
In JSON, BYTES elements of an image input are base64 text (an image is not UTF-8). A response
puts an output in binary when the request asks (``outputs[].parameters.binary_data`` or the
request's ``parameters.binary_data_output``), the same way round.

Nothing here knows about models: ``vitkit.serve.routes_v2`` maps tensors to a runner's
operations.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vitkit.serve.errors import BadInput

HEADER_LENGTH = "inference-header-content-length"
MAX_JSON_BYTES = 16 * 1024 * 1024  # the JSON part of a request (base64 images count here)
Datatype = Literal["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


class TensorInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64)
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    """The JSON part of ``POST /v2/models/{name}/infer``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorInput] = Field(min_length=1, max_length=4)
    outputs: list[RequestedOutput] | None = Field(None, max_length=8)


class TensorOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[TensorOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


@dataclass
class Tensor:
    """One input as received: ``data`` is a list of bytes (BYTES) or a float32 array."""

    name: str
    shape: list[int]
    datatype: str
    data: list[bytes] | np.ndarray


@dataclass
class Output:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[list[str]] | list[str]
    binary: bool = False


@dataclass
class Parsed:
    request: InferRequest
    inputs: dict[str, Tensor] = field(default_factory=dict)


# ---- requests -------------------------------------------------------------------------------
def parse_request(body: IO[bytes], size: int, header_length: str | None) -> Parsed:
    """The request in ``body`` (its ``size`` bytes), split at ``header_length`` if given."""
    json_size = _json_size(size, header_length)
    body.seek(0)
    try:
        document = json.loads(body.read(json_size))
        request = InferRequest.model_validate(document)
    except (ValueError, UnicodeDecodeError) as error:
        message = _first_error(error) if isinstance(error, ValidationError) else str(error)
        raise BadInput(f"not an inference request: {message}") from None
    parsed = Parsed(request)
    offset = json_size
    for item in request.inputs:
        if item.name in parsed.inputs:
            raise BadInput(f"input {item.name!r} given twice")
        binary_size = item.parameters.get("binary_data_size")
        if binary_size is not None:
            raw = _binary_part(body, offset, binary_size, size, item.name)
            offset += len(raw)
            parsed.inputs[item.name] = _tensor_from_binary(item, raw)
        else:
            parsed.inputs[item.name] = _tensor_from_json(item)
    if offset != size:
        raise BadInput(
            f"{size - offset} bytes after the last binary input: binary_data_size and "
            "Inference-Header-Content-Length do not add up to the body"
        )
    return parsed


def _first_error(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem.get("loc", ()))
    return f"{where}: {problem.get('msg', '')}"


def _json_size(size: int, header_length: str | None) -> int:
    if header_length is None:
        json_size = size
    elif header_length.strip().isdigit():
        json_size = int(header_length)
    else:
        raise BadInput(f"Inference-Header-Content-Length {header_length!r}: not a byte count")
    if json_size > size:
        raise BadInput(
            f"Inference-Header-Content-Length {json_size} is more than the body's {size} bytes"
        )
    if json_size > MAX_JSON_BYTES:
        raise BadInput(
            f"the JSON part is {json_size:,} bytes, over {MAX_JSON_BYTES:,}: send images as "
            "binary data (the binary tensor data extension)"
        )
    return json_size


def _binary_part(body: IO[bytes], offset: int, length: Any, size: int, name: str) -> bytes:
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise BadInput(f"input {name!r}: binary_data_size must be a byte count")
    if offset + length > size:
        raise BadInput(f"input {name!r}: binary_data_size {length} runs past the body's end")
    body.seek(offset)
    return body.read(length)


def element_count(shape: list[int], name: str) -> int:
    if any(dim < 0 for dim in shape):
        raise BadInput(f"input {name!r}: shape {shape} has a negative dimension")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _tensor_from_binary(item: TensorInput, raw: bytes) -> Tensor:
    if item.data is not None:
        raise BadInput(f"input {item.name!r}: both binary_data_size and data given")
    count = element_count(item.shape, item.name)
    if item.datatype == "BYTES":
        return Tensor(item.name, item.shape, "BYTES", _split_bytes(raw, count, item.name))
    if item.datatype == "FP32":
        if len(raw) != 4 * count:
            raise BadInput(
                f"input {item.name!r}: {len(raw)} bytes of FP32 data for shape {item.shape} "
                f"({4 * count} expected)"
            )
        return Tensor(item.name, item.shape, "FP32", np.frombuffer(raw, dtype="<f4").copy())
    raise BadInput(f"input {item.name!r}: datatype {item.datatype} is not taken here")


def _split_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES elements in binary: each a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadInput(f"input {name!r}: a BYTES element's 4-byte length is cut short")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise BadInput(f"input {name!r}: a BYTES element runs past its binary data")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(elements) != count:
        raise BadInput(f"input {name!r}: {len(elements)} BYTES elements for {count} in its shape")
    return elements


def _tensor_from_json(item: TensorInput) -> Tensor:
    if item.data is None:
        raise BadInput(f"input {item.name!r}: no data (give data, or binary_data_size)")
    values = list(_flatten(item.data))
    count = element_count(item.shape, item.name)
    if len(values) != count:
        raise BadInput(
            f"input {item.name!r}: {len(values)} values for shape {item.shape} ({count})"
        )
    if item.datatype == "BYTES":
        return Tensor(item.name, item.shape, "BYTES", [_base64(v, item.name) for v in values])
    if item.datatype == "FP32":
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise BadInput(f"input {item.name!r}: FP32 data must be numbers")
        return Tensor(item.name, item.shape, "FP32", np.asarray(values, dtype=np.float32))
    raise BadInput(f"input {item.name!r}: datatype {item.datatype} is not taken here")


def _flatten(data: list[Any]) -> Iterator[Any]:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _base64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadInput(f"input {name!r}: BYTES data in JSON must be base64 strings")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(
            f"input {name!r}: not base64 (in JSON an image is base64 text; or send its raw "
            "bytes with the binary data extension)"
        ) from None


# ---- responses ------------------------------------------------------------------------------
def wants_binary(request: InferRequest, name: str) -> bool:
    for output in request.outputs or []:
        if output.name == name and "binary_data" in output.parameters:
            return bool(output.parameters["binary_data"])
    return bool(request.parameters.get("binary_data_output", False))


def encode_response(
    model_name: str, request: InferRequest, outputs: list[Output]
) -> tuple[bytes, int | None]:
    """(body, JSON length when binary data follows it, else None)."""
    described, binary = [], []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if output.binary:
            raw = _to_binary(output)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = _to_json(output)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": "1"}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = described
    head = json.dumps(document).encode()
    if not binary:
        return head, None
    return head + b"".join(binary), len(head)


def _to_binary(output: Output) -> bytes:
    if output.datatype == "BYTES":
        flat = list(_flatten(list(output.values)))
        return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in flat)
    return np.ascontiguousarray(output.values, dtype="<f4").tobytes()


def _to_json(output: Output) -> list[Any]:
    if output.datatype == "BYTES":
        return list(_flatten(list(output.values)))
    return np.asarray(output.values, dtype=np.float32).reshape(-1).tolist()
