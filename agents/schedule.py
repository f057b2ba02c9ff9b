"""Device-side schedules as data: the ordered actions a device runs for one mini-batch.

A schedule is a list of `Action`s, so its order is visible and testable without a
network (`format_schedule(pipeline_schedule(3))` is "F0 F1 F2 B0 B1 B2 S"):

    F<i>  forward micro-batch i through the device part and queue its activation for
          the uplink (the send overlaps the next forward)
    B<i>  wait for micro-batch i's activation gradient, then run its backward
    S     one optimizer step for the whole mini-batch
    L     local training step (forward, loss, backward on the device, no server)

Sequential split learning is the pipeline of one micro-batch ("F0 B0 S"); PiPar runs all
N forwards back to back, so the server and both links work while the device computes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Op(enum.Enum):
    FORWARD = "F"
    BACKWARD = "B"
    STEP = "S"
    LOCAL = "L"


@dataclass(frozen=True)
class Action:
    op: Op
    mb: int = 0

    def __str__(self) -> str:
        return self.op.value if self.op in (Op.STEP, Op.LOCAL) else f"{self.op.value}{self.mb}"


def pipeline_schedule(microbatches: int, *, backward: bool = True) -> list[Action]:
    """All forwards, then (if the device part has parameters) all backwards, then a step."""
    forwards = [Action(Op.FORWARD, i) for i in range(microbatches)]
    backwards = [Action(Op.BACKWARD, i) for i in range(microbatches)] if backward else []
    return [*forwards, *backwards, Action(Op.STEP)]


def local_schedule() -> list[Action]:
    return [Action(Op.LOCAL), Action(Op.STEP)]


def format_schedule(actions: list[Action]) -> str:
    return " ".join(str(a) for a in actions)


def microbatch_slices(batch_size: int, microbatches: int) -> list[slice]:
    """Near-even contiguous slices: sizes differ by at most one, larger ones first."""
    base, extra = divmod(batch_size, microbatches)
    slices, start = [], 0
    for i in range(microbatches):
        size = base + (1 if i < extra else 0)
        slices.append(slice(start, start + size))
        start += size
    return slices
