"""Splitting a `BlockModel` at a block boundary into a device part and a server part.

Owns `BlockPart`, `split` and `load_part_state`. Parts share the model's block modules (no
copy): training a part trains the model, and the two parts' parameters are exactly the model's,
each once. A part's state-dict keys are the model's keys ("blocks.conv1.0.weight"), so a part's
state loads into the full model (`load_part_state`) and the full model's state loads into a
part with `part.load_state_dict(state, strict=False)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from partitions.errors import PartitionError
from partitions.zoo import BlockModel


class BlockPart(nn.Module):
    """Blocks [start, stop) of a `BlockModel`, shared with it; empty parts are the identity."""

    def __init__(self, model: BlockModel, start: int, stop: int):
        super().__init__()
        names = model.block_names[start:stop]
        self.model_name = model.name
        self.first_block_index = start
        self.blocks = nn.ModuleDict((name, model.blocks[name]) for name in names)
        self.training = model.training  # the shared blocks keep their own modes

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def stop_block_index(self) -> int:
        """One past the index of this part's last block (== first_block_index when empty)."""
        return self.first_block_index + len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x

    def extra_repr(self) -> str:
        span = f"{self.first_block_index}..{self.stop_block_index}"
        return f"model={self.model_name}, blocks=[{span})"


def split(model: BlockModel, p: int) -> tuple[BlockPart, BlockPart]:
    """Split `model` before block `p`: the device runs blocks [0, p), the server [p, L)."""
    last = model.num_blocks
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= last:
        raise PartitionError(f"split point {p!r} out of range for {model.name}: choose 0..{last}")
    return BlockPart(model, 0, p), BlockPart(model, p, last)


def load_part_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load a part's state dict into `model` (or a part); returns the keys left untouched.

    Every key of `state` must belong to `model`: a key it does not have means the state
    came from a different model or configuration.
    """
    own_keys = model.state_dict().keys()
    unknown = [key for key in state if key not in own_keys]
    if unknown:
        raise PartitionError(
            f"state key {unknown[0]!r} is not in {_describe(model)}; "
            "was it saved from a different model or configuration?")
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as error:
        raise PartitionError(
            f"state does not fit {_describe(model)}: {_first_mismatch(error)}") from error
    return list(result.missing_keys)


def _describe(model: nn.Module) -> str:
    return getattr(model, "name", None) or getattr(model, "model_name", type(model).__name__)


def _first_mismatch(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0] if lines else "size mismatch"
