"""The iteration model: one pipelined mini-batch of a fleet, predicted from profiles.

`simulate_tasks` predicts each device's iteration from its `device_tasks`; the planner
(edgectl/planning/planner.py, `simulate` and `plan`) searches placements with it. Pure
functions, no I/O.

Note: the iteration model. Every device starts an iteration
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
resource: its uplink, or its server worker's work for the fleet's iteration. A frozen
device part (EcoFed, `device_tasks(frozen=True)`) streams the same way, its forwards
counted too, with no backward, downlink or device step, and its activations' bytes times
`uplink_ratio` (1/4 for 8-bit codes); edgectl/planning/ecofed_plan.py adds the rounds in
which devices upload nothing and the server trains on what it kept. p = L is
federated learning: forward and backward of all blocks at the whole batch, then a step; no
link or server use. Uplink ends do not depend on the server, so they come first; one sort
of all S tasks gives the server's order; a pass per device then finishes D and B: linear in
the tasks plus one sort.
A round is batches_per_round times the fleet iteration (its slowest device) plus the
weight exchange: the device part, params of blocks [0, p) * 4 bytes, down and up each link
(the slowest device counts).

Every compute task (F_i, S_i, B_i, the local training of p = L) takes its profiled time
plus its host's overhead per task (`task_overhead`): what calibration runs measured
(`edgectl.planning.calibration`), else on a device what its task probe measured
(agents.taskprobe: the agent's CPU per task beyond its stage's, over the cores it computes
on), else nothing. The agents' work per byte they move
(`byte_overhead_s`: F_i's activation and labels sent, B_i's gradient received, S_i's all
three) is done by their receiving and sending threads beside the compute, so it is on no
task's path: it counts in the host's busy time, the server's worker is busy with it too
(every device's iteration is at least its worker's whole work), and a device spends it from
its CPU budget (below). On a server whose workers fill its CPU quota (one worker on a
1-core server) those threads have no core of their own: an S task gives up to every
transfer on a link while it runs that transfer's CPU in proportion to their overlap (the
reading of an activation spread over its uplink time, the sending of a gradient over its
downlink time). Measured on a 1-core server with two 0.25-core devices at 100 Mbit/s, the S
tasks of p = 1, N = 2-8 took 1.5-2x their profiled time.

Note: CPU quotas. A device under a CFS quota (`cpu.quota` cores of `cpu.period` seconds
in its profile; the testbed's devices) is profiled at its throttled average speed, but a
device that waited gets its period's budget back and runs unthrottled until that is spent:
a 0.25-core device with a 10 ms period that waited for a gradient runs its next 2.5 ms of
CPU at full speed, a quarter of the time its profile says. `CpuBudget` is that quota as a
token bucket: `quota * period` CPU seconds deep, refilled at `quota` cores; a task runs at
its compute's full speed (`threads` cores) while the bucket lasts, then at the quota's; the
agents' per-byte work takes from it when the frame is sent or arrives, a debt the next task
pays. Each iteration starts from the budget the previous one left (refilled while the
device waited for the fleet's slowest): `simulate_steady` simulates once from full budgets,
then from what that iteration leaves. A profile without the period (older ones) and a host
without a quota run at the profiled speed throughout, which is what that speed means there.

Hosts on one machine (the same `host_id`: the local fleet, a testbed's namespaces) also
share its cores: per iteration they need their compute busy time times the cores each
uses (its threads, or its CPU quota if smaller), and the machine gives at most `cores`
core-seconds per second. An iteration of such a fleet takes at least that demand over the
cores (`shared_cpu_s`), and every device on that machine waits for it: on the local fleet,
three one-thread agents on two cores. A testbed whose quotas add up to no more than the
machine's cores never meets this bound.

What the model leaves out: links are independent (no contention between devices on a
shared access point or uplink); iterations of all devices start together, so a fast device
never runs ahead into its next mini-batch (but at p = 0, above); a transfer holds its link
for the whole transfer_time, half round trip included (pessimistic for many small frames);
times are the profiled medians plus the calibrated overheads (no jitter; a quota as a
fluid bucket, not its real period boundaries); the server's FedAvg and evaluation and the
device's data loading (prefetched) are not counted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from agents.events import RESOURCES
from agents.schedule import microbatch_slices
from agents.workers import worker_count, worker_of
from edgectl.planning.plans import DevicePlan, Placement
from profiles.records import ComputeProfile, LinkProfile

LABEL_BYTES = 8            # one int64 label per sample travels with each activation


@dataclass
class CpuBudget:
    """A host's CFS CPU quota as a token bucket (the module's Note on CPU quotas): `rate`
    cores of quota, `speed` cores its compute runs on unthrottled, `depth` the CPU seconds
    one period grants; `level` CPU seconds left at time `clock` (below zero: owed)."""

    rate: float
    speed: float
    depth: float
    level: float
    clock: float = 0.0

    @classmethod
    def of(cls, host: ComputeProfile, level: float | None = None) -> CpuBudget | None:
        """The budget of a host whose quota holds its compute back, `level` (default full)
        at time 0; None for a host without one, or one whose profile does not know the
        quota's period (profiles older than periods): it runs at its profiled speed."""
        quota, period = host.cpu.get("quota"), host.cpu.get("period")
        speed = float(min(host.threads or 1, host.cpu.get("cores") or 1))
        if not quota or not period or quota >= speed:
            return None
        depth = quota * period
        return cls(quota, speed, depth, depth if level is None else min(level, depth))

    def refill(self, at: float) -> None:
        if at > self.clock:
            self.level = min(self.depth, self.level + (at - self.clock) * self.rate)
            self.clock = at

    def run(self, start: float, seconds: float) -> float:
        """The end of a task that takes `seconds` at the throttled speed (as profiled),
        started at `start`: unthrottled while the budget lasts, then at the quota's rate;
        a debt is paid first."""
        self.refill(start)
        cpu = seconds * self.rate
        burst = max(self.level, 0.0) * self.speed / (self.speed - self.rate)
        if cpu <= burst:
            took = cpu / self.speed
            self.level -= took * (self.speed - self.rate)
        else:
            took = burst / self.speed + (cpu - burst - min(self.level, 0.0)) / self.rate
            self.level = 0.0
        self.clock = max(start, self.clock) + took
        return self.clock

    def spend(self, at: float, seconds: float) -> None:
        """Work of other threads (framing, sending, receiving), `seconds` at the throttled
        speed, done at `at`: it takes from the budget, not from a task's path."""
        self.refill(at)
        self.level -= seconds * self.rate


def _run(budget: CpuBudget | None, start: float, seconds: float) -> float:
    return budget.run(start, seconds) if budget else start + seconds


@dataclass(frozen=True)
class DeviceTasks:
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
    forward_s: tuple[float, ...] = ()    # each forward's time (at the throttled speed)
    sent_s: tuple[float, ...] = ()       # the agent's per-byte work for each activation sent
    received_s: tuple[float, ...] = ()   # ... and for each gradient received
    server_bytes_s: tuple[float, ...] = ()   # the server agent's per-byte work, each task
    server_received_s: tuple[float, ...] = ()   # ... the part of it receiving the activation
    server_quota: float | None = None    # the server's CPU quota in cores (None: none)
    budget: CpuBudget | None = None      # the device's CPU budget after its forwards

    @property
    def device_compute_s(self) -> float:
        """The device's compute in an iteration at its throttled speed: its forwards, its
        backwards and its step, or its local training and step at p = L."""
        if self.local:
            return self.local_s + self.step_s
        return sum(self.forward_s) + sum(self.backward_s) + self.step_s

    @property
    def device_busy_s(self) -> float:
        """Its compute and its agent's per-byte work: what its CPU spends an iteration."""
        return self.device_compute_s + sum(self.sent_s) + sum(self.received_s)


def device_tasks(dev: ComputeProfile, server: ComputeProfile, link: LinkProfile,
                  pl: Placement, batch_size: int, *, frozen: bool = False,
                  uplink_ratio: float = 1.0, budget_level: float | None = None) -> DeviceTasks:
    """`frozen`: blocks [0, p) do not train (EcoFed): no device backward or step, no
    downlink; the device streams its forwards as at p = 0. `uplink_ratio`: the activation's
    bytes on the wire over float32's (1/4 for 8-bit codes). `budget_level`: the device's CPU
    budget at the iteration's start (a quota's; default full)."""
    num_blocks, p = dev.num_blocks, pl.split_point
    budget = CpuBudget.of(dev, budget_level)
    step_s = 0.0 if frozen else dev.step_s_per_param * sum(b.params for b in dev.blocks[:p])
    if p == num_blocks:
        local_s = _task(sum(dev.forward_time(k, batch_size) + dev.backward_time(k, batch_size)
                            for k in range(num_blocks)), dev)
        return DeviceTasks(pl, True, (), (), (), (), (), (), step_s, local_s, budget=budget)
    sizes = [s.stop - s.start for s in microbatch_slices(batch_size, pl.microbatches)]
    forward_s, sent_s, forward_end, uplink_s, uplink_end = [], [], [], [], []
    f_end = u_end = 0.0
    for b in sizes:
        sent = b * (dev.activation_bytes(p) * uplink_ratio + LABEL_BYTES)
        forward_s.append(_task(sum(dev.forward_time(k, b) for k in range(p)), dev)
                         if p else 0.0)
        f_end = _run(budget, f_end, forward_s[-1]) if p else 0.0
        sent_s.append(dev.byte_overhead_s * sent if p else 0.0)
        if budget and p:
            budget.spend(f_end, sent_s[-1])
        uplink_s.append(link.transfer_time(sent, True))
        u_end = max(f_end, u_end) + uplink_s[-1]
        forward_end.append(f_end)
        uplink_end.append(u_end)
    server_s = [_task(sum(server.forward_time(k, b) + server.backward_time(k, b)
                          for k in range(p, num_blocks)), server) for b in sizes]
    server_s[-1] += server.step_s_per_param * sum(b.params for b in server.blocks[p:])
    server_bytes_s = tuple(server.byte_overhead_s * server_task_bytes(dev.activation_bytes(p),
                                                                      p, b) for b in sizes)
    server_received_s = tuple(server.byte_overhead_s * b * (dev.activation_bytes(p) * uplink_ratio
                                                            + LABEL_BYTES) for b in sizes)
    trains = bool(p) and not frozen
    downlink_s = [link.transfer_time(b * dev.activation_bytes(p), False)
                  for b in sizes] if trains else []
    backward_s = [_task(sum(dev.backward_time(k, b) for k in range(p)), dev) if trains
                  else 0.0 for b in sizes]
    received_s = [dev.byte_overhead_s * b * dev.activation_bytes(p) for b in sizes] \
        if trains else []
    return DeviceTasks(pl, False, tuple(forward_end), tuple(uplink_s), tuple(uplink_end),
                       tuple(server_s), tuple(downlink_s), tuple(backward_s), step_s,
                       forward_s=tuple(forward_s), sent_s=tuple(sent_s),
                       received_s=tuple(received_s), server_bytes_s=server_bytes_s,
                       server_received_s=server_received_s,
                       server_quota=server.cpu.get("quota") or None, budget=budget)


def profiled_device_compute_s(dev: ComputeProfile, pl: Placement, batch_size: int) -> float:
    """A device's compute in an iteration as its profile has it, no overheads: forward and
    backward of blocks [0, p) at each micro-batch's size, then the step (all blocks at the
    whole batch at p = L)."""
    p = pl.split_point
    sizes = [s.stop - s.start for s in microbatch_slices(batch_size, pl.microbatches)]
    return (sum(dev.forward_time(k, b) + dev.backward_time(k, b) for b in sizes
                for k in range(p))
            + dev.step_s_per_param * sum(b.params for b in dev.blocks[:p]))


def server_task_bytes(activation_bytes: int, p: int, samples: int) -> int:
    """What the server agent moves for one task: the activation and labels in, the
    activation gradient out (none at p = 0)."""
    return samples * (activation_bytes + LABEL_BYTES + (activation_bytes if p else 0))


def _task(seconds: float, host: ComputeProfile) -> float:
    """A compute task's predicted time: its profiled time plus the host's overhead per task
    (`task_overhead`), never below zero."""
    return max(seconds + task_overhead(host), 0.0)


def task_overhead(host: ComputeProfile) -> float:
    """Seconds a host's agent adds to each compute task: calibration's fit where the host
    was calibrated (it measured the agents training for real), else its task probe's CPU
    per task over the cores it computes on, else none."""
    if host.task_overhead_s or host.byte_overhead_s:
        return host.task_overhead_s
    return (host.agent_task_cpu_s or 0.0) / cores_used(host)


def server_binding(server: ComputeProfile, devices: list[str]) -> dict[str, int]:
    """Each device's server worker, as the server agent binds them (agents.workers)."""
    workers = worker_count(server.usable_cores, len(devices))
    return {name: worker_of(k, workers) for k, name in enumerate(devices)}


def _run_server(tasks: dict[str, DeviceTasks], bound: dict[str, int]) -> dict[str, list[float]]:
    """End time of every S task: per worker one at a time, in order of ready time, device
    order, i. On a server whose workers fill its CPU quota, each task also gives up the
    CPU that the transfers running meanwhile take (`_stolen`)."""
    queue = sorted((t.uplink_end[i], order, i, name)
                   for order, (name, t) in enumerate(tasks.items())
                   for i in range(len(t.uplink_end)))
    ends = {name: [0.0] * len(t.uplink_end) for name, t in tasks.items()}
    clocks = dict.fromkeys(bound.values(), 0.0)
    quota = next(iter(tasks.values())).server_quota if tasks else None
    workers = len(clocks)
    contended = quota is not None and workers >= math.floor(quota + 1e-9)
    # every transfer's CPU on the server, spread over its time on the link: (start, end, cpu)
    streams = [(t.uplink_end[i] - t.uplink_s[i], t.uplink_end[i], t.server_received_s[i])
               for t in tasks.values() for i in range(len(t.server_received_s))] \
        if contended else []
    downlink_free = dict.fromkeys(tasks, 0.0)
    for ready, _, i, name in queue:
        t, w = tasks[name], bound[name]
        start = max(clocks[w], ready)
        run = t.server_s[i]
        if contended:
            for _ in range(2):   # the stretch changes the overlap: settle it once more
                run = t.server_s[i] + _stolen(streams, start, start + run) / workers
        clocks[w] = ends[name][i] = start + run
        if contended and t.downlink_s:   # its gradient goes out next, queued on the link
            begin = max(clocks[w], downlink_free[name])
            downlink_free[name] = begin + t.downlink_s[i]
            streams.append((begin, downlink_free[name],
                            t.server_bytes_s[i] - t.server_received_s[i]))
    return ends


def _stolen(streams: list[tuple[float, float, float]], start: float, end: float) -> float:
    """The CPU seconds that transfers take from a task running from start to end: each
    transfer's CPU times the share of its time on the link within the task's."""
    taken = 0.0
    for s_start, s_end, cpu in streams:
        overlap = min(end, s_end) - max(start, s_start)
        if overlap > 0 and s_end > s_start:
            taken += cpu * overlap / (s_end - s_start)
    return taken


def _finish(name: str, t: DeviceTasks, server_end: list[float],
            server_total: float) -> tuple[DevicePlan, CpuBudget | None]:
    """Downlinks, backwards and the step, once the server's end times are known; the plan
    and the device's CPU budget at its end."""
    budget = dataclasses.replace(t.budget) if t.budget else None
    if t.local:
        end = _run(budget, _run(budget, 0.0, t.local_s), t.step_s)
        busy = {"device.compute": t.device_compute_s, "uplink": 0.0, "server.compute": 0.0,
                "downlink": 0.0}
    else:
        # p = 0 or frozen: no gradient comes back, so the device streams (module docstring)
        end = max(t.forward_end[-1], sum(t.uplink_s), server_total, t.device_busy_s)
        if t.downlink_s:
            end, d_end = t.forward_end[-1], 0.0
            for s_end, d_s, b_s, r_s in zip(server_end, t.downlink_s, t.backward_s,
                                            t.received_s, strict=True):
                d_end = max(s_end, d_end) + d_s
                if budget:
                    budget.spend(d_end, r_s)
                end = _run(budget, max(end, d_end), b_s)
            # the server's worker is busy with every task of its devices, per-byte work too
            end = max(end, server_total)
        end = _run(budget, end, t.step_s)
        if not budget:   # its CPU's whole work an iteration (a quota's budget counts it)
            end = max(end, t.device_busy_s)
        busy = {"device.compute": t.device_busy_s,
                "uplink": sum(t.uplink_s),
                "server.compute": sum(t.server_s) + sum(t.server_bytes_s),
                "downlink": sum(t.downlink_s)}
    shared = busy if t.local else {**busy, "server.compute": server_total}
    pl = t.placement
    return DevicePlan(name, pl.split_point, pl.microbatches, end, busy,
                      max(RESOURCES, key=shared.__getitem__)), budget


def simulate_tasks(tasks: dict[str, DeviceTasks],
                   bound: dict[str, int]) -> dict[str, DevicePlan]:
    """Each device's iteration; `bound`: each device's server worker (`server_binding`)."""
    return _simulate(tasks, bound)[0]


def _simulate(tasks: dict[str, DeviceTasks], bound: dict[str, int],
              ) -> tuple[dict[str, DevicePlan], dict[str, CpuBudget | None]]:
    server_end = _run_server(tasks, bound)
    worker_total = dict.fromkeys(bound.values(), 0.0)
    for name, t in tasks.items():
        worker_total[bound[name]] += sum(t.server_s) + sum(t.server_bytes_s)
    done = {name: _finish(name, t, server_end[name], worker_total[bound[name]])
            for name, t in tasks.items()}
    return {n: d[0] for n, d in done.items()}, {n: d[1] for n, d in done.items()}


def steady_levels(tasks: dict[str, DeviceTasks], bound: dict[str, int]) -> dict[str, float]:
    """Each throttled device's CPU budget at the start of an iteration in a steady run of
    them: what its previous iteration left, refilled while it waited for the fleet's
    slowest device (devices without a quota are left out)."""
    plans, budgets = _simulate(tasks, bound)
    iteration = max(p.iteration_s for p in plans.values())
    levels = {}
    for name, budget in budgets.items():
        if budget is not None:
            budget.refill(iteration)
            levels[name] = budget.level
    return levels


def simulate_steady(make: Callable[[str, float | None], DeviceTasks], names: list[str],
                    bound: dict[str, int]) -> tuple[dict[str, DeviceTasks],
                                                    dict[str, DevicePlan]]:
    """The fleet's iteration in a steady run: simulated once from full CPU budgets, then
    again from the budgets that iteration leaves (`steady_levels`). `make(name, level)`
    gives a device's tasks from a budget level (None: full)."""
    tasks = {name: make(name, None) for name in names}
    levels = steady_levels(tasks, bound)
    if levels:
        tasks = {name: make(name, levels.get(name)) if name in levels else tasks[name]
                 for name in names}
    return tasks, simulate_tasks(tasks, bound)


SHARED_CPU = "shared.cpu"   # the bottleneck of devices held back by their machine's cores


def shared_cpu_s(plans: dict[str, DevicePlan], devices: dict[str, ComputeProfile],
                 server: ComputeProfile) -> dict[str, float]:
    """Per machine (host_id) that more than one host of the fleet runs on, the least time an
    iteration takes for its hosts' compute on its cores (see the Note)."""
    hosts: dict[str, list[tuple[ComputeProfile, float]]] = {}
    for name, plan in plans.items():
        hosts.setdefault(devices[name].host_id, []).append(
            (devices[name], plan.busy_s["device.compute"]))
    hosts.setdefault(server.host_id, []).append(
        (server, sum(p.busy_s["server.compute"] for p in plans.values())))
    return {machine: sum(busy * cores_used(host) for host, busy in members)
            / max(members[0][0].cpu.get("cores") or 1, 1)
            for machine, members in hosts.items() if machine and len(members) > 1}


def cores_used(host: ComputeProfile) -> float:
    """The cores a host's agent computes on: its threads, or its CPU quota if smaller."""
    quota = host.cpu.get("quota")
    return min(host.threads or 1, quota) if quota else (host.threads or 1)


def with_shared_cpu(plans: dict[str, DevicePlan], devices: dict[str, ComputeProfile],
                    server: ComputeProfile) -> dict[str, DevicePlan]:
    """The plans with every device on a shared machine waiting for that machine's cores."""
    bounds = shared_cpu_s(plans, devices, server)
    out = {}
    for name, plan in plans.items():
        bound = bounds.get(devices[name].host_id, 0.0)
        out[name] = plan if bound <= plan.iteration_s else dataclasses.replace(
            plan, iteration_s=bound, bottleneck=SHARED_CPU)
    return out
