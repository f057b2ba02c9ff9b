"""Tensors to and from safetensors bytes without copying their data.

The wire protocol's payload is the safetensors format (https://github.com/huggingface/
safetensors): an unsigned 64-bit little-endian header length N, N bytes of a JSON object
{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}} padded with spaces
to a multiple of 8, then the tensors' bytes, contiguous and in offset order. The
`safetensors` package reads and writes it too, but copies every tensor on the way out and
on the way in (about 0.8 ms for a 800 KB activation here, per frame and side); this module
writes the same bytes as a list of buffers for one gathered `sendmsg` (a tensor's own
memory, no copy) and reads tensors as views of the receive buffer.

Decoding trusts nothing: the header must be a JSON object whose every entry has a known
dtype, a shape of non-negative integers and offsets that tile the data exactly, in order,
each the size its dtype and shape need; anything else is a `ValueError`. Nothing is
unpickled or evaluated.
"""

from __future__ import annotations

import json
import math
import struct

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
LENGTH = struct.Struct("<Q")


def tensor_buffers(tensors: dict[str, torch.Tensor]) -> list:
    """The safetensors bytes of `tensors` as buffers: the header, then each tensor's data
    (a view of the tensor's memory, or of a contiguous copy when it has none)."""
    ordered = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header, views, offset = {}, [], 0
    for name, tensor in ordered:
        if tensor.dtype not in NAMES:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which is not sent")
        data = _bytes_view(tensor)
        header[name] = {"dtype": NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
        views.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [LENGTH.pack(len(text)) + text, *views]


def _bytes_view(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def encode_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return b"".join(tensor_buffers(tensors))


def decode_tensors(payload: bytearray | bytes) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes; views of `payload` (a bytearray nobody else
    writes) where their data is aligned for their dtype, copies otherwise."""
    if len(payload) < LENGTH.size:
        raise ValueError("safetensors payload shorter than its header length")
    (n,) = LENGTH.unpack_from(payload)
    if n > len(payload) - LENGTH.size:
        raise ValueError(f"safetensors header of {n} bytes, payload of {len(payload)}")
    header = json.loads(bytes(payload[LENGTH.size:LENGTH.size + n]))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    start, end = LENGTH.size + n, len(payload)
    tensors, offset = {}, 0
    for name, entry in sorted(header.items(), key=lambda kv: _begin(kv[1])):
        dtype, shape, (begin, stop) = _checked_entry(name, entry)
        if begin != offset or stop > end - start:
            raise ValueError(f"tensor {name!r}: offsets {begin}..{stop} do not tile the data")
        tensors[name] = _tensor(payload, start + begin, dtype, shape)
        offset = stop
    if offset != end - start:
        raise ValueError(f"safetensors data of {end - start} bytes, tensors cover {offset}")
    return tensors


def _begin(entry: object) -> int:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return offsets[0] if isinstance(offsets, list) and offsets and isinstance(offsets[0], int) \
        else -1


def _checked_entry(name: str, entry: object) -> tuple[torch.dtype, list[int], list[int]]:
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        raise ValueError(f"tensor {name!r}: missing or unknown dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and
            all(type(o) is int and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} are malformed")
    dtype = DTYPES[entry["dtype"]]
    size = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != size:
        raise ValueError(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape}")
    return dtype, shape, offsets


def _tensor(payload, offset: int, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    if isinstance(payload, bytes) or offset % dtype.itemsize:
        data = bytearray(payload[offset:offset + count * dtype.itemsize])
        return torch.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    return torch.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)
