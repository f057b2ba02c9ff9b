"""What a training strategy decides: where each device splits, how it schedules a batch,
and what its device and server sides do with each message.

The machinery (stages, transport, aggregation, events) is shared. A strategy chooses the
split point p and micro-batch count N for a device and the device's schedule; the server
side follows from p: blocks [p, L) of each device run on the server in arrival order.
Where a strategy's sides differ from the split family's (fl, split, pipar: weights down
and up every round, the activation's gradient back, whole models averaged), it returns its
own `ServerSide` and `DeviceSide`, whose hooks the agents call at fixed points
(agents/server.py, agents/device.py); the defaults here are the split family's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agents.config import DeviceSpec, OptimizerSettings, RunConfig
from agents.errors import AgentError
from agents.schedule import Action, local_schedule, pipeline_schedule

if TYPE_CHECKING:
    import torch
    from torch import nn

    from agents.events import EventSink
    from agents.stage import DeviceStage
    from agents.wire import Frame


@dataclass(frozen=True)
class Placement:
    """A device's resolved place: split point p in 0..L and micro-batch count N."""

    split_point: int
    microbatches: int


class Strategy:
    name: str = ""
    summary: str = ""
    decentralized: bool = False   # no server part: nodes aggregate among themselves

    def place(self, spec: DeviceSpec, num_blocks: int, batch_size: int) -> Placement:
        raise NotImplementedError

    def device_schedule(self, placement: Placement, num_blocks: int) -> list[Action]:
        raise NotImplementedError

    def server_side(self, run: RunConfig) -> ServerSide:
        """The server's hooks for one run (state a run needs lives there)."""
        return ServerSide(self, run)

    def device_side(self, run: RunConfig) -> DeviceSide:
        """A device's hooks for one run."""
        return DeviceSide(self, run)


class ServerSide:
    """What the server agent does for a strategy, hook by hook, in one run. The defaults
    are the split family's; `session` is the server's DeviceSession of that device.
    Hooks given a device run on that device's server worker (agents.workers): one
    device's calls never overlap, different devices' may."""

    def __init__(self, strategy: Strategy, run: RunConfig):
        self.strategy, self.run = strategy, run

    def prepare(self, model: nn.Module) -> None:
        """The global model was just built (before any device joined)."""

    def check_fleet(self, model: nn.Module, samples: dict[str, int]) -> None:
        """Every device joined, with this many samples each; raise to refuse the run
        before round 1."""

    def device_joined(self, device: str) -> None:
        """A device agent joined from scratch: at the start, or back after it was lost (a
        restarted agent, or a resumed run's) holding nothing of the run yet."""

    def placement(self, r: int, placement: Placement, num_blocks: int) -> Placement:
        """The placement a device runs in round r (the strategy's, for every round)."""
        return placement

    def round_start(self, r: int, device: str, placement: Placement,
                    device_part: nn.Module) -> tuple[dict, dict]:
        """Extra ROUND_START metadata and the tensors it carries: the device blocks."""
        return {}, device_part.state_dict()

    def wants_gradient(self, r: int, placement: Placement) -> bool:
        """Whether the server sends each activation's gradient back (and so computes it)."""
        return placement.split_point > 0

    def activation(self, r: int, device: str, frame: Frame) -> torch.Tensor:
        """The activation an ACTIVATION frame carries, as the server part's input."""
        return frame.tensors["x"]

    def upload(self, r: int, device: str, frame: Frame) -> dict:
        """The device's trained blocks from its ROUND_END, averaged with the rest."""
        return frame.tensors

    def after_round_end(self, r: int, session, sink: EventSink) -> None:
        """The device ended round r; runs on its server worker, before aggregation."""

    def frozen_keys(self, r: int) -> set[str]:
        """State keys FedAvg leaves as they are in the global model after round r."""
        return set()

    def round_fields(self, r: int) -> dict:
        """Extra fields of round r's event."""
        return {}


class DeviceSide:
    """What a device agent does for a strategy in one run; the split family's defaults."""

    def __init__(self, strategy: Strategy, run: RunConfig):
        self.strategy, self.run = strategy, run

    def stage(self, meta: dict, device_part: nn.Module,
              optimizer: OptimizerSettings) -> DeviceStage:
        """The stage of a round that ROUND_START `meta` opens."""
        from agents.stage import DeviceStage  # torch: not for the CLI's fast paths

        return DeviceStage(device_part, optimizer)

    def schedule(self, meta: dict, placement: Placement, num_blocks: int) -> list[Action]:
        """The actions for each mini-batch; an empty list: the device trains nothing."""
        return self.strategy.device_schedule(placement, num_blocks)

    def encode(self, activation: torch.Tensor) -> tuple[dict, dict]:
        """The tensors (besides the labels "y") and extra metadata an activation travels as."""
        return {"x": activation}, {}

    def round_end(self, device_part: nn.Module) -> tuple[dict, dict]:
        """The tensors and extra metadata of ROUND_END: the trained device blocks."""
        return dict(device_part.state_dict()), {}


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
