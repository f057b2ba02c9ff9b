"""Classic federated learning: the whole model trains on each device; FedAvg per round."""

from __future__ import annotations

from agents.config import DeviceSpec
from agents.schedule import Action, local_schedule
from agents.strategies.base import Placement, Strategy


class FederatedLearning(Strategy):
    name = "fl"
    summary = "whole model on every device, FedAvg each round"

    def place(self, spec: DeviceSpec, num_blocks: int, batch_size: int) -> Placement:
        return Placement(split_point=num_blocks, microbatches=1)

    def device_schedule(self, placement: Placement, num_blocks: int) -> list[Action]:
        return local_schedule()
