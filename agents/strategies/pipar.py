"""PiPar: pipeline-parallel split learning.

Each mini-batch of B samples splits into N micro-batches; the device runs all N forwards
back to back and streams each activation as soon as it exists; the server trains on each
micro-batch as it arrives (loss weighted by its share of B) and streams the gradient back;
the device then runs the N backwards and steps once. Device compute, server compute,
uplink and downlink overlap, so an iteration costs roughly its busiest resource.
"""

from __future__ import annotations

from agents.config import DeviceSpec
from agents.schedule import Action
from agents.strategies.base import Placement, Strategy, checked_split_point, split_schedule

DEFAULT_MICROBATCHES = 4


class PiPar(Strategy):
    name = "pipar"
    summary = "split learning with N micro-batches in flight, compute and links overlapped"

    def place(self, spec: DeviceSpec, num_blocks: int, batch_size: int) -> Placement:
        n = spec.microbatches or min(DEFAULT_MICROBATCHES, batch_size)
        return Placement(split_point=checked_split_point(spec, num_blocks), microbatches=n)

    def device_schedule(self, placement: Placement, num_blocks: int) -> list[Action]:
        return split_schedule(placement, num_blocks)
