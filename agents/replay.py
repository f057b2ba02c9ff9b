"""The server's replay buffer: a device's activations, kept to train on between uploads.

With a frozen device part and no data augmentation a sample's activation never changes, so
EcoFed's devices upload fresh activations only every K-th round and the server trains its
part on the ones it kept in the rounds between. A `ReplayBuffer` holds one device's
activations of its last upload round as they arrived (8-bit codes and their parameters
when quantized: a quarter of float32), with their labels and loss weights; a replay round
trains on every kept mini-batch once, in an order shuffled per round.

Its memory is known before training: `buffer_bytes` of each device's mini-batches per
round. The server refuses a run whose buffers would not fit `--replay-buffer-mb` before
round 1 (agents.strategies.ecofed), and so does the coordinator where it can tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LABEL_BYTES = 8   # int64 labels travel and are kept with the activations

MB = 1_000_000


@dataclass(frozen=True)
class Kept:
    """One micro-batch as it arrived: its codes (or floats), "quant" metadata, labels."""

    batch: int
    mb: int
    codes: torch.Tensor
    quant: dict | None
    labels: torch.Tensor
    weight: float

    @property
    def nbytes(self) -> int:
        return (self.codes.numel() * self.codes.element_size()
                + self.labels.numel() * self.labels.element_size())


@dataclass
class ReplayBuffer:
    entries: list[Kept] = field(default_factory=list)
    nbytes: int = 0

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0

    def keep(self, entry: Kept) -> None:
        """Keep a received micro-batch; its tensors are copied out of the receive buffer."""
        entry = Kept(entry.batch, entry.mb, entry.codes.clone(), entry.quant,
                     entry.labels.clone(), entry.weight)
        self.entries.append(entry)
        self.nbytes += entry.nbytes

    def batches(self, seed: int, round_: int) -> list[list[Kept]]:
        """The kept mini-batches (each its micro-batches in order), shuffled by round."""
        import torch

        grouped: dict[int, list[Kept]] = {}
        for e in self.entries:
            grouped.setdefault(e.batch, []).append(e)
        keys = sorted(grouped)
        order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(
            seed * 1_000_003 + round_))
        return [sorted(grouped[keys[i]], key=lambda e: e.mb) for i in order.tolist()]


def buffer_bytes(values_per_sample: int, bytes_per_value: int, samples: int) -> int:
    """What a buffer holding `samples` activations (and their labels) takes."""
    return samples * (values_per_sample * bytes_per_value + LABEL_BYTES)


def budget_error(needed: int, budget_mb: float, detail: str) -> str | None:
    """The one-line refusal when `needed` bytes exceed the budget, else None."""
    if needed <= budget_mb * MB:
        return None
    return (f"the replay buffer needs {needed / MB:.1f} MB ({detail}) but "
            f"--replay-buffer-mb is {budget_mb:g}; raise it to at least "
            f"{needed / MB:.1f}, or lower --max-batches, or upload every round (--replay-period 1)")
