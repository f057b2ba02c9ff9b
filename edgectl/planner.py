"""The planner: each device's split point p and micro-batch count N, chosen from profiles.

Pure functions over profile records (`profiles.records`): no I/O, no torch. `simulate`
predicts one mini-batch iteration of a fleet for given placements; `plan` searches the
placements and returns a `Plan`, data to print (`describe`), save (`to_json`) and diff.

Note: the iteration model, which `simulate` implements. Every device starts an iteration
at t = 0. Device d with split point p of L blocks and N micro-batches of the near-even
sizes b_i of `agents.schedule.microbatch_slices` (larger first, as the device runs them):

    F_i  device forward of blocks [0, p) at b_i; starts when F_(i-1) ends.
    U_i  uplink of b_i * (activation_bytes(p) + 8) bytes (activation plus int64 labels);
         starts at max(end F_i, end U_(i-1)).
    S_i  server forward+backward of blocks [p, L) at b_i; after the last micro-batch also
         the server's optimizer step over blocks [p, L) (the server steps before it sends
         that gradient). The server has W compute workers (agents.workers: one per core
         of the server profile's `usable_cores`, at most one per device); device k's S
         tasks all run on worker k mod W, and a worker runs its devices' S tasks one at a
         time in order of ready time (end U_i), ties by device order then i, like the
         real server's arrival-ordered inbox.
    D_i  downlink of the activation gradient, b_i * activation_bytes(p) bytes (p > 0 only);
         starts at max(end S_i, end D_(i-1)).
    B_i  device backward of blocks [0, p) at b_i; starts at max(end F_(N-1), end D_i,
         end B_(i-1)): every forward runs before any backward.

The iteration ends with the device's optimizer step over blocks [0, p) after B_(N-1).
At p = 0 no gradient comes back and the device has nothing to wait for: it streams its
mini-batches back to back, and its iteration is that of a steady stream, its busiest
resource: its uplink, or its server worker's work for the fleet's iteration. p = L is
federated learning: forward and backward of all blocks at the whole batch, then a step; no
link or server use. Uplink ends do not depend on the server, so they come first; one sort
of all S tasks gives the server's order; a pass per device then finishes D and B: linear in
the tasks plus one sort.
A round is batches_per_round times the fleet iteration (its slowest device) plus the
weight exchange: the device part, params of blocks [0, p) * 4 bytes, down and up each link
(the slowest device counts).

Every compute task (F_i, S_i, B_i, the local training of p = L) takes its profiled time
plus its host's `task_overhead_s`, and S_i also `byte_overhead_s` per byte of its
activation, labels and gradient: zero for a plain profile; what calibration runs measured
(`edgectl.calibration`) once there are some.

What the model leaves out: links are independent (no contention between devices on a
shared access point or uplink); iterations of all devices start together, so a fast device
never runs ahead into its next mini-batch (but at p = 0, above); a transfer holds its link
for the whole transfer_time, half round trip included (pessimistic for many small frames);
times are the profiled medians plus the calibrated overheads (no jitter, and throttling
only as the profile averaged it); the server's FedAvg and evaluation and the device's data
loading (prefetched) are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.events import RESOURCES
from agents.schedule import microbatch_slices
from agents.workers import worker_count, worker_of
from edgectl.plan_record import DevicePlan, Placement, Plan, PlanError
from profiles.records import ComputeProfile, LinkProfile

__all__ = ["DevicePlan", "Placement", "Plan", "PlanError", "candidate_microbatches",
           "memory_fits", "plan", "server_task_bytes", "simulate"]

LABEL_BYTES = 8            # one int64 label per sample travels with each activation
PARAM_BYTES = 4            # float32 weights
MAX_PASSES = 10            # coordinate-descent passes over the devices
MICROBATCH_TOLERANCE = 0.05  # more micro-batches must be predicted this much faster


def candidate_microbatches(batch_size: int, max_microbatches: int = 16) -> list[int]:
    """1 and every N in 2..min(batch_size, max_microbatches). Every N is a candidate, not
    only divisors of the batch: near-even micro-batches differ by at most one sample."""
    return list(range(1, max(1, min(batch_size, max_microbatches)) + 1))


def memory_fits(device: ComputeProfile, p: int, batch_size: int) -> bool:
    """Whether training blocks [0, p) fits in the device's memory_available_bytes.

    Activations stay alive until the backward: all B samples' outputs of blocks [0, p)
    (whatever N is, since every forward runs before any backward), counted twice because
    autograd saves the inputs as well as the outputs of the layers inside a block. Weights,
    gradients and momentum take 3 float32 copies of the parameters of blocks [0, p).
    """
    blocks = device.blocks[:p]
    activations = batch_size * sum(b.activation_bytes for b in blocks) * 2
    parameters = sum(b.params for b in blocks) * PARAM_BYTES * 3
    return activations + parameters <= device.memory_available_bytes


@dataclass(frozen=True)
class _Tasks:
    """One device's tasks of an iteration, all but the server's timing (which depends on
    the other devices): forward and uplink end times and the other tasks' durations."""

    placement: Placement
    local: bool                          # p = L: no link or server use
    forward_end: tuple[float, ...]
    uplink_s: tuple[float, ...]
    uplink_end: tuple[float, ...]
    server_s: tuple[float, ...]          # the last one includes the server's step
    downlink_s: tuple[float, ...]        # empty when p = 0
    backward_s: tuple[float, ...]
    step_s: float
    local_s: float = 0.0                 # p = L: forward + backward of all blocks at B


def _device_tasks(dev: ComputeProfile, server: ComputeProfile, link: LinkProfile,
                  pl: Placement, batch_size: int) -> _Tasks:
    num_blocks, p = dev.num_blocks, pl.split_point
    step_s = dev.step_s_per_param * sum(b.params for b in dev.blocks[:p])
    if p == num_blocks:
        local_s = _task(sum(dev.forward_time(k, batch_size) + dev.backward_time(k, batch_size)
                            for k in range(num_blocks)), dev)
        return _Tasks(pl, True, (), (), (), (), (), (), step_s, local_s)
    sizes = [s.stop - s.start for s in microbatch_slices(batch_size, pl.microbatches)]
    forward_end, uplink_s, uplink_end, f_end, u_end = [], [], [], 0.0, 0.0
    for b in sizes:
        f_end += _task(sum(dev.forward_time(k, b) for k in range(p)), dev) if p else 0.0
        uplink_s.append(link.transfer_time(b * (dev.activation_bytes(p) + LABEL_BYTES), True))
        u_end = max(f_end, u_end) + uplink_s[-1]
        forward_end.append(f_end)
        uplink_end.append(u_end)
    server_s = [_task(sum(server.forward_time(k, b) + server.backward_time(k, b)
                          for k in range(p, num_blocks)), server,
                      server_task_bytes(dev.activation_bytes(p), p, b)) for b in sizes]
    server_s[-1] += server.step_s_per_param * sum(b.params for b in server.blocks[p:])
    downlink_s = [link.transfer_time(b * dev.activation_bytes(p), False)
                  for b in sizes] if p else []
    backward_s = [_task(sum(dev.backward_time(k, b) for k in range(p)), dev) if p else 0.0
                  for b in sizes]
    return _Tasks(pl, False, tuple(forward_end), tuple(uplink_s), tuple(uplink_end),
                  tuple(server_s), tuple(downlink_s), tuple(backward_s), step_s)


def server_task_bytes(activation_bytes: int, p: int, samples: int) -> int:
    """What the server agent moves for one task: the activation and labels in, the
    activation gradient out (none at p = 0)."""
    return samples * (activation_bytes + LABEL_BYTES + (activation_bytes if p else 0))


def _task(seconds: float, host: ComputeProfile, nbytes: int = 0) -> float:
    """A compute task's predicted time: its profiled time plus the host's calibrated
    overheads (`edgectl.calibration`), per task and per byte the agent moves for it,
    never below zero."""
    return max(seconds + host.task_overhead_s + host.byte_overhead_s * nbytes, 0.0)


def server_binding(server: ComputeProfile, devices: list[str]) -> dict[str, int]:
    """Each device's server worker, as the server agent binds them (agents.workers)."""
    workers = worker_count(server.usable_cores, len(devices))
    return {name: worker_of(k, workers) for k, name in enumerate(devices)}


def _run_server(tasks: dict[str, _Tasks], bound: dict[str, int]) -> dict[str, list[float]]:
    """End time of every S task: per worker one at a time, in order of ready time, device
    order, i."""
    queue = sorted((t.uplink_end[i], order, i, name)
                   for order, (name, t) in enumerate(tasks.items())
                   for i in range(len(t.uplink_end)))
    ends = {name: [0.0] * len(t.uplink_end) for name, t in tasks.items()}
    clocks = dict.fromkeys(bound.values(), 0.0)
    for ready, _, i, name in queue:
        w = bound[name]
        clocks[w] = max(clocks[w], ready) + tasks[name].server_s[i]
        ends[name][i] = clocks[w]
    return ends


def _finish(name: str, t: _Tasks, server_end: list[float], server_total: float) -> DevicePlan:
    """Downlinks, backwards and the step, once the server's end times are known."""
    if t.local:
        end = t.local_s + t.step_s
        busy = {"device.compute": end, "uplink": 0.0, "server.compute": 0.0, "downlink": 0.0}
    else:
        # p = 0: no gradient comes back, so the device streams (see the module docstring)
        end = max(sum(t.uplink_s), server_total) + t.step_s
        if t.downlink_s:
            end, d_end = t.forward_end[-1], 0.0
            for s_end, d_s, b_s in zip(server_end, t.downlink_s, t.backward_s, strict=True):
                d_end = max(s_end, d_end) + d_s
                end = max(end, d_end) + b_s
            end += t.step_s
        busy = {"device.compute": t.forward_end[-1] + sum(t.backward_s) + t.step_s,
                "uplink": sum(t.uplink_s), "server.compute": sum(t.server_s),
                "downlink": sum(t.downlink_s)}
    shared = busy if t.local else {**busy, "server.compute": server_total}
    pl = t.placement
    return DevicePlan(name, pl.split_point, pl.microbatches, end, busy,
                      max(RESOURCES, key=shared.__getitem__))


def _simulate_tasks(tasks: dict[str, _Tasks], bound: dict[str, int]) -> dict[str, DevicePlan]:
    server_end = _run_server(tasks, bound)
    worker_total = dict.fromkeys(bound.values(), 0.0)
    for name, t in tasks.items():
        worker_total[bound[name]] += sum(t.server_s)
    return {name: _finish(name, t, server_end[name], worker_total[bound[name]])
            for name, t in tasks.items()}


def simulate(devices: dict[str, ComputeProfile], server: ComputeProfile,
             links: dict[str, LinkProfile], placements: dict[str, Placement],
             batch_size: int) -> dict[str, DevicePlan]:
    """Predict one mini-batch iteration of every device, the placements given (the model is
    the module docstring's). Device order, for the server's ties, is that of `devices`."""
    _check_inputs(devices, server, links, batch_size)
    if set(placements) != set(devices):
        raise PlanError(f"placements for {sorted(placements)}, devices {sorted(devices)}: "
                        f"give one placement per device")
    for name, pl in placements.items():
        _check_placement(name, pl, server.num_blocks, batch_size)
    return _simulate_tasks({name: _device_tasks(dev, server, links[name], placements[name],
                                                batch_size) for name, dev in devices.items()},
                           server_binding(server, list(devices)))


def plan(devices: dict[str, ComputeProfile], server: ComputeProfile,
         links: dict[str, LinkProfile], batch_size: int, batches_per_round: int, *,
         max_microbatches: int = 16, fixed: dict[str, Placement] | None = None,
         tolerance: float = MICROBATCH_TOLERANCE) -> Plan:
    """Choose every device's placement for the shortest predicted round.

    Candidates per device: every p in 0..L that `memory_fits`, with every N of
    `candidate_microbatches` (N = 1 at p = L); `fixed` pins a device to one placement. As
    devices share the server, each starts at its best candidate alone, then coordinate
    descent: each device in turn takes its best candidate, the others kept, until a pass
    changes nothing (at most MAX_PASSES). Best: the fewest micro-batches among the
    candidates whose fleet round time is within `tolerance` of the least, then the least
    (round time, own iteration, -p). More micro-batches must be predicted to pay more than
    the model's error: each costs a frame each way, a server task and the agents' work
    around them, which the model counts only as calibrated, and its gain is often a few
    percent of interpolated profile. tolerance 0 is the plain minimum.
    The alternatives: fl (all p = L; inf if that does not fit everywhere) and split (all
    N = 1, p < L, searched the same way, `fixed` not applied).
    """
    _check_inputs(devices, server, links, batch_size)
    if batches_per_round < 1 or max_microbatches < 1:
        raise PlanError(f"batches per round {batches_per_round}, max micro-batches "
                        f"{max_microbatches}: both must be at least 1")
    fixed = fixed or {}
    for name, pl in fixed.items():
        if name not in devices:
            raise PlanError(f"fixed placement for {name!r}, not a profiled device "
                            f"({', '.join(devices)})")
        _check_placement(name, pl, server.num_blocks, batch_size)
    if tolerance < 0:
        raise PlanError(f"tolerance {tolerance}: must be at least 0")
    fleet = _Fleet(devices, server, links, batch_size, batches_per_round, tolerance)
    num_blocks = server.num_blocks
    options = {n: [fixed[n]] if n in fixed else _candidates(n, d, batch_size, max_microbatches)
               for n, d in devices.items()}
    round_s, plans = fleet.round(_search(fleet, options))
    fl_s = (fleet.round({n: Placement(num_blocks, 1) for n in devices})[0]
            if all(memory_fits(d, num_blocks, batch_size) for d in devices.values())
            else math.inf)
    split_options = {n: [pl for pl in _candidates(n, d, batch_size, 1)
                         if pl.split_point < num_blocks] for n, d in devices.items()}
    split_s, split_plans = fleet.round(_search(fleet, split_options))
    return Plan(server.model, num_blocks, batch_size, batches_per_round,
                tuple(plans.values()), max(d.iteration_s for d in plans.values()), round_s,
                fl_s, split_s, _ratio(fl_s, round_s), _ratio(split_s, round_s),
                sum(d.busy_s["server.compute"] for d in plans.values()),
                max(split_plans.values(), key=lambda d: d.iteration_s).bottleneck)


class _Fleet:
    """The profiles of one planning problem and each (device, placement)'s tasks, cached:
    the search simulates the same placements many times."""

    def __init__(self, devices: dict[str, ComputeProfile], server: ComputeProfile,
                 links: dict[str, LinkProfile], batch_size: int, batches_per_round: int,
                 tolerance: float = 0.0):
        self.devices, self.server, self.links = devices, server, links
        self.tolerance = tolerance
        self.batch_size, self.batches_per_round = batch_size, batches_per_round
        self.tasks: dict[tuple[str, Placement], _Tasks] = {}
        self.bound = server_binding(server, list(devices))

    def round(self, placements: dict[str, Placement]) -> tuple[float, dict[str, DevicePlan]]:
        """The predicted round time and each device's iteration, in placement order."""
        for key in placements.items():
            if key not in self.tasks:
                name, pl = key
                self.tasks[key] = _device_tasks(self.devices[name], self.server,
                                                self.links[name], pl, self.batch_size)
        plans = _simulate_tasks({n: self.tasks[n, pl] for n, pl in placements.items()},
                                self.bound)
        exchange = max(_exchange_s(self.devices[n], self.links[n], pl.split_point)
                       for n, pl in placements.items())
        iteration = max(d.iteration_s for d in plans.values())
        return self.batches_per_round * iteration + exchange, plans


def _exchange_s(device: ComputeProfile, link: LinkProfile, p: int) -> float:
    """Weights of blocks [0, p) down at the start of a round and up at its end."""
    nbytes = sum(b.params for b in device.blocks[:p]) * PARAM_BYTES
    return link.transfer_time(nbytes, False) + link.transfer_time(nbytes, True)


def _search(fleet: _Fleet, options: dict[str, list[Placement]]) -> dict[str, Placement]:
    current = {n: _best(fleet, {}, n, opts) for n, opts in options.items()}
    for _ in range(MAX_PASSES):
        changed = False
        for name, opts in options.items():
            best = _best(fleet, current, name, opts)
            changed |= best != current[name]
            current[name] = best
        if not changed:
            break
    return current


def _best(fleet: _Fleet, others: dict[str, Placement], name: str,
          options: list[Placement]) -> Placement:
    """Of the options whose round time is within `fleet.tolerance` of the least, the one
    with the fewest micro-batches, then minimizing (round time, own iteration, -p); times
    compare to 9 significant digits, so float noise never decides a tie."""
    def key(pl: Placement) -> tuple:
        round_s, plans = fleet.round({**others, name: pl})
        return (_sig(round_s), _sig(plans[name].iteration_s), -pl.split_point)
    keyed = [(key(pl), pl) for pl in options]
    least = min(k[0] for k, _ in keyed)
    eligible = [(pl.microbatches, k, pl) for k, pl in keyed
                if k[0] <= _sig(least * (1 + fleet.tolerance))]
    return min(eligible, key=lambda e: e[:2])[2]


def _candidates(name: str, device: ComputeProfile, batch_size: int,
                max_microbatches: int) -> list[Placement]:
    num_blocks = device.num_blocks
    found = [Placement(p, n) for p in range(num_blocks + 1) if memory_fits(device, p, batch_size)
             for n in (candidate_microbatches(batch_size, max_microbatches)
                       if p < num_blocks else [1])]
    if not found:
        raise PlanError(f"device {name}: memory_available_bytes "
                        f"{device.memory_available_bytes} fits no split point")
    return found


def _check_inputs(devices: dict[str, ComputeProfile], server: ComputeProfile,
                  links: dict[str, LinkProfile], batch_size: int) -> None:
    if not devices:
        raise PlanError("no devices to plan for")
    if batch_size < 1:
        raise PlanError(f"batch size {batch_size}: must be at least 1")
    for name, dev in devices.items():
        if (dev.model, dev.num_blocks) != (server.model, server.num_blocks):
            raise PlanError(f"device {name} profiled {dev.model} ({dev.num_blocks} blocks), "
                            f"the server {server.model} ({server.num_blocks} blocks): "
                            f"profile both with the same model")
        if name not in links:
            raise PlanError(f"device {name}: no link profile; run edgectl profile")


def _check_placement(name: str, pl: Placement, num_blocks: int, batch_size: int) -> None:
    if not 0 <= pl.split_point <= num_blocks:
        raise PlanError(f"device {name}: split point {pl.split_point} out of range, "
                        f"choose 0..{num_blocks}")
    most = 1 if pl.split_point == num_blocks else batch_size
    if not 1 <= pl.microbatches <= most:
        raise PlanError(f"device {name}: {pl.microbatches} micro-batches at split point "
                        f"{pl.split_point}, choose 1..{most}")


def _sig(x: float) -> float:
    return float(f"{x:.9g}")


def _ratio(slower: float, faster: float) -> float:
    if faster > 0:
        return slower / faster
    return 1.0 if slower <= 0 else math.inf
