"""The payload codec: the safetensors format both ways, uncopied, and nothing malformed let in."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from agents.tensor_codec import decode_tensors, encode_tensors, tensor_buffers

TENSORS = {
    "act": torch.randn(2, 3, 4),
    "labels": torch.tensor([3, -1, 2**40], dtype=torch.int64),
    "mask": torch.tensor([[0, 255]], dtype=torch.uint8),
    "half": torch.randn(5).to(torch.bfloat16),
    "flags": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 3),
    "transposed": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
}


def assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def test_the_safetensors_package_reads_what_is_written():
    assert_same(st_load(encode_tensors(TENSORS)), TENSORS)


def test_what_the_safetensors_package_writes_is_read():
    assert_same(decode_tensors(bytearray(st_save({k: v.contiguous()
                                                  for k, v in TENSORS.items()}))), TENSORS)


def test_a_contiguous_tensor_is_sent_from_its_own_memory():
    x = torch.randn(25, 32, 16, 16)
    view = tensor_buffers({"x": x})[1]
    x[0, 0, 0, 0] = 42.0
    assert memoryview(view).cast("f")[0] == 42.0


def test_decoded_tensors_are_views_of_the_receive_buffer():
    payload = bytearray(encode_tensors({"x": torch.zeros(4)}))
    x = decode_tensors(payload)["x"]
    payload[-4:] = struct.pack("<f", 7.0)
    assert x[3].item() == 7.0


def payload(header: dict, data: bytes) -> bytearray:
    text = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(text)) + text + data)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED = {
    "shorter than the length": bytearray(b"\x01\x00"),
    "length past the end": bytearray(struct.pack("<Q", 100) + b"{}"),
    "header a list": payload([1], b""),
    "unknown dtype": payload({"x": entry(dtype="F8_E8M0", offsets=(0, 2))}, b"\0\0"),
    "negative size": payload({"x": entry(shape=(-2,))}, b"\0" * 8),
    "shape not a list": payload({"x": entry(shape="2")}, b"\0" * 8),
    "size disagrees with shape": payload({"x": entry(offsets=(0, 4))}, b"\0" * 4),
    "offsets past the data": payload({"x": entry()}, b"\0" * 4),
    "a gap": payload({"x": entry(offsets=(4, 12))}, b"\0" * 12),
    "overlapping": payload({"x": entry(), "y": entry(offsets=(4, 12))}, b"\0" * 12),
    "data left over": payload({"x": entry()}, b"\0" * 12),
    "offsets not integers": payload({"x": entry(offsets=(0.0, 8.0))}, b"\0" * 8),
    "entry not an object": payload({"x": 3}, b""),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_payloads_are_refused(data):
    with pytest.raises((ValueError, TypeError)):
        decode_tensors(data)


def test_metadata_is_allowed_and_ignored():
    x = torch.arange(2, dtype=torch.float32)
    got = decode_tensors(payload({"__metadata__": {"a": "b"}, "x": entry()}, x.numpy().tobytes()))
    assert_same(got, {"x": x})
