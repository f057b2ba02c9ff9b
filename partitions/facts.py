"""Per-block and per-split-point facts of a `BlockModel`, computed from the model itself.

Owns `BlockFacts`, `SplitPointFacts`, `block_facts` and `split_points`. Output shapes and
activation sizes come from a forward pass on one zero sample in eval mode; FLOPs from
`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2; only matmuls and
convolutions are counted, so norms, activations and pooling add nothing). Nothing here is
typed by hand, so the facts stay true when a model changes. Sizes and FLOPs are per sample.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from partitions.zoo import BlockModel, eval_mode


@dataclass(frozen=True)
class BlockFacts:
    """One block: its output per sample, its parameter count and its forward FLOPs per sample."""

    index: int
    name: str
    output_shape: tuple[int, ...]
    activation_bytes: int
    params: int
    flops: int

    def as_dict(self) -> dict:
        return _json_ready(self)


@dataclass(frozen=True)
class SplitPointFacts:
    """Split point p: the device runs blocks [0, p), the server [p, L); per-sample figures.

    `after_block` names the last device block ("input" for p=0); `output_shape` and
    `activation_bytes` describe the tensor crossing the boundary (the input for p=0, the
    logits for p=L).
    """

    p: int
    after_block: str
    output_shape: tuple[int, ...]
    activation_bytes: int
    device_params: int
    server_params: int
    device_flops: int
    server_flops: int

    def as_dict(self) -> dict:
        return _json_ready(self)


def _json_ready(facts: BlockFacts | SplitPointFacts) -> dict:
    """`dataclasses.asdict` with tuples as lists, ready for `json.dumps`."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(facts).items()}


def _activation_bytes(tensor: torch.Tensor) -> int:
    return math.prod(tensor.shape[1:]) * tensor.element_size()


def block_facts(model: BlockModel) -> list[BlockFacts]:
    """Facts of each block of `model`, in order, from one forward pass of a batch of 1."""
    facts = []
    x = torch.zeros(1, *model.input_shape)
    with eval_mode(model):
        for index, (name, block) in enumerate(model.blocks.items()):
            with FlopCounterMode(display=False) as counter:
                x = block(x)
            facts.append(BlockFacts(
                index=index,
                name=name,
                output_shape=tuple(x.shape[1:]),
                activation_bytes=_activation_bytes(x),
                params=sum(param.numel() for param in block.parameters()),
                flops=int(counter.get_total_flops()),
            ))
    return facts


def split_points(model: BlockModel) -> list[SplitPointFacts]:
    """Facts of every split point p in 0..L of `model` (see `SplitPointFacts`)."""
    blocks = block_facts(model)
    total_params = sum(block.params for block in blocks)
    total_flops = sum(block.flops for block in blocks)
    input_bytes = math.prod(model.input_shape) * torch.zeros(()).element_size()
    points = [SplitPointFacts(0, "input", tuple(model.input_shape), input_bytes,
                              0, total_params, 0, total_flops)]
    device_params = device_flops = 0
    for block in blocks:
        device_params += block.params
        device_flops += block.flops
        points.append(SplitPointFacts(
            p=block.index + 1,
            after_block=block.name,
            output_shape=block.output_shape,
            activation_bytes=block.activation_bytes,
            device_params=device_params,
            server_params=total_params - device_params,
            device_flops=device_flops,
            server_flops=total_flops - device_flops,
        ))
    return points
