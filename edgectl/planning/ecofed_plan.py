"""EcoFed's plan: the one split point of the fleet, chosen for the shortest mean round.

The iteration model (edgectl/planning/iteration.py) with a frozen device part: each device
forwards blocks [0, p) and streams the activations up, `uplink_ratio` of float32's bytes (a
quarter for 8-bit codes), with no device backward, no gradient down and no weights either
way (the frozen blocks go down once, which this leaves out); the server trains blocks
[p, L) on its workers as activations arrive. That is an upload round: batches_per_round
times the fleet's streaming iteration. In the K - 1 replay rounds between uploads the
devices do nothing and each server worker trains its devices' kept mini-batches, so a
replay round is batches_per_round times the busiest worker's server tasks (or the shared
machine's cores, where the server shares them). The plan's round time is the mean over K
rounds; every device gets the same p (agents.strategies.ecofed), the smallest among equals
(the most blocks left to train).

fl's and split's predicted rounds, for the speedups, are the planner's (N = 1).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from edgectl.planning.iteration import (
    DeviceTasks,
    device_tasks,
    server_binding,
    shared_cpu_s,
    simulate_steady,
    with_shared_cpu,
)
from edgectl.planning.planner import memory_fits, plan
from edgectl.planning.plans import Constraints, DevicePlan, Placement, Plan, PlanError
from profiles.records import ComputeProfile, LinkProfile


@dataclass(frozen=True)
class EcoFedPlan(Plan):
    replay_period: int = 1
    uplink_ratio: float = 1.0
    upload_round_s: float = 0.0
    replay_round_s: float = 0.0

    def describe(self) -> str:
        p = self.devices[0].split_point
        every = "every round" if self.replay_period == 1 else \
            f"every {self.replay_period} rounds, replaying in between"
        fl = "fl does not fit in memory" if math.isinf(self.fl_round_s) else \
            f"{self.speedup_vs_fl:.1f}x faster than fl"
        return (f"ecofed at p={p} (uploads {every}) predicted {self.speedup_vs_split:.1f}x "
                f"faster than split and {fl} per round")

    def to_json(self) -> dict:
        return super().to_json() | {"strategy": "ecofed", "replay_period": self.replay_period,
                                    "uplink_ratio": self.uplink_ratio,
                                    "upload_round_s": self.upload_round_s,
                                    "replay_round_s": self.replay_round_s}


def plan_ecofed(devices: dict[str, ComputeProfile], server: ComputeProfile,
                links: dict[str, LinkProfile], batch_size: int, batches_per_round: int, *,
                constraints: Constraints = Constraints(), replay_period: int = 1,
                uplink_ratio: float = 0.25) -> EcoFedPlan:
    """The split point with the least predicted mean round (see the module docstring)."""
    base = plan(devices, server, links, batch_size, batches_per_round,
                constraints=Constraints(allow_raw_upload=constraints.allow_raw_upload,
                                        max_microbatches=1))
    best = None
    for p in _split_points(devices, server.num_blocks, batch_size, constraints):
        rounds = _rounds(devices, server, links, p, batch_size, batches_per_round,
                         replay_period, uplink_ratio)
        if best is None or rounds[0] < best[1][0]:
            best = (p, rounds)
    p, (round_s, upload_s, replay_s, plans) = best
    with_links = tuple(dataclasses.replace(d, uplink_bps=links[d.device].uplink_bps,
                                           downlink_bps=links[d.device].downlink_bps)
                       for d in plans.values())
    return EcoFedPlan(
        server.model, server.num_blocks, batch_size, batches_per_round, with_links,
        round_s / max(batches_per_round, 1), round_s, base.fl_round_s, base.split_round_s,
        _ratio(base.fl_round_s, round_s), _ratio(base.split_round_s, round_s),
        sum(d.busy_s["server.compute"] for d in plans.values()), base.split_bottleneck,
        constraints.allow_raw_upload, replay_period, uplink_ratio, upload_s, replay_s)


def _split_points(devices: dict[str, ComputeProfile], num_blocks: int, batch_size: int,
                  constraints: Constraints) -> list[int]:
    """The split points every device may take: one for the fleet, below L."""
    pinned = {constraints.for_device(name)[0] for name in devices} - {None}
    if len(pinned) > 1:
        raise PlanError(f"ecofed runs every device at one split point, but the devices are "
                        f"pinned to {sorted(pinned)}; pin them alike")
    lowest = constraints.lowest_split_point()
    points = sorted(pinned) or list(range(lowest, num_blocks))
    fits = [p for p in points if lowest <= p < num_blocks
            and all(memory_fits(d, p, batch_size) for d in devices.values())]
    if not fits:
        raise PlanError(f"no split point {lowest}..{num_blocks - 1} fits every device for "
                        "ecofed" + (f" (pinned to {sorted(pinned)})" if pinned else ""))
    return fits


def _rounds(devices, server, links, p: int, batch_size: int, batches: int, period: int,
            ratio: float) -> tuple[float, float, float, dict[str, DevicePlan]]:
    """(mean round, upload round, replay round, each device's upload-round iteration)."""
    def make(name: str, level: float | None) -> DeviceTasks:
        return device_tasks(devices[name], server, links[name], Placement(p, 1), batch_size,
                            frozen=True, uplink_ratio=ratio, budget_level=level)

    bound = server_binding(server, list(devices))
    tasks, plans = simulate_steady(make, list(devices), bound)
    plans = with_shared_cpu(plans, devices, server)
    upload_s = batches * max(d.iteration_s for d in plans.values())
    per_worker: dict[int, float] = {}
    for name, t in tasks.items():
        per_worker[bound[name]] = (per_worker.get(bound[name], 0.0) + sum(t.server_s)
                                   + sum(t.server_bytes_s))
    replay_only = {name: dataclasses.replace(d, busy_s={**d.busy_s, "device.compute": 0.0})
                   for name, d in plans.items()}
    shared = max(shared_cpu_s(replay_only, devices, server).values(), default=0.0)
    replay_s = batches * max(max(per_worker.values()), shared)
    return (upload_s + (period - 1) * replay_s) / period, upload_s, replay_s, plans


def _ratio(slower: float, faster: float) -> float:
    if faster > 0:
        return slower / faster
    return 1.0 if slower <= 0 else math.inf
