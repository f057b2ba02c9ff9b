"""Sequential split learning: per mini-batch forward, send, wait for the gradient, backward.

Blocks [0, p) train on the device and [p, L) on the server, which keeps one copy of its
part per device; both parts are averaged (weighted by samples) at the end of a round.
"""

from __future__ import annotations

from agents.config import DeviceSpec
from agents.schedule import Action
from agents.strategies.base import Placement, Strategy, checked_split_point, split_schedule


class SplitLearning(Strategy):
    name = "split"
    summary = "device computes, then the link, then the server: one step at a time"

    def place(self, spec: DeviceSpec, num_blocks: int, batch_size: int) -> Placement:
        return Placement(split_point=checked_split_point(spec, num_blocks), microbatches=1)

    def device_schedule(self, placement: Placement, num_blocks: int) -> list[Action]:
        return split_schedule(placement, num_blocks)
