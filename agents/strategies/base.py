"""What a training strategy decides: where each device splits and how it schedules a batch.

The machinery (stages, transport, aggregation) is shared; a strategy only chooses the
split point p and micro-batch count N for a device and the device's schedule. The server
side follows from p: blocks [p, L) of each device run on the server in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.config import DeviceSpec
from agents.errors import AgentError
from agents.schedule import Action, local_schedule, pipeline_schedule


@dataclass(frozen=True)
class Placement:
    """A device's resolved place: split point p in 0..L and micro-batch count N."""

    split_point: int
    microbatches: int


class Strategy:
    name: str = ""
    summary: str = ""

    def place(self, spec: DeviceSpec, num_blocks: int, batch_size: int) -> Placement:
        raise NotImplementedError

    def device_schedule(self, placement: Placement, num_blocks: int) -> list[Action]:
        raise NotImplementedError


def split_schedule(placement: Placement, num_blocks: int) -> list[Action]:
    """A split device's schedule; a device holding every block (p = L, as a plan may
    choose) trains locally like fl, and one holding none (p = 0) waits for no gradient."""
    if placement.split_point == num_blocks:
        return local_schedule()
    return pipeline_schedule(placement.microbatches, backward=placement.split_point > 0)


def default_split_point(num_blocks: int) -> int:
    """The documented default when no split point is given: the middle block boundary."""
    return num_blocks // 2


def checked_split_point(spec: DeviceSpec, num_blocks: int) -> int:
    p = default_split_point(num_blocks) if spec.split_point is None else spec.split_point
    if not 0 <= p <= num_blocks:
        raise AgentError(f"device {spec.name}: split point {p} out of range, "
                         f"choose 0..{num_blocks}")
    return p
