"""Calibration: what the agents cost beyond their profiled compute, measured by runs.

A compute profile times each block alone, in a quiet process. The agents do more per
micro-batch: they frame and send activations and gradients, read frames, keep their books
and write events, with receiver and sender threads sharing the host's cores (and its CPU
quota) with the compute. `edgectl profile --calibrate` measures that cost: it trains three
short pipar rounds at reference placements that move very different bytes per micro-batch
(every device at p = L // 2, then p = L - 1, then p = 1; N = 4 in all), fits each host's
overhead as `task_overhead_s + byte_overhead_s * bytes moved` and stores both in its compute
profile, where the planner adds them to every compute task (edgectl/planning/iteration.py).

Note: the server's fit. Each server worker (agents.workers) is a queue of tasks served one
at a time. A task's service time is its end minus the later of its activation's arrival (the
uplink span's end) and the previous task's end on the same worker: when the worker was
busy, the gap between two tasks is its own overhead too; when it was idle, waiting is not.
Each task of every mini-batch but the
first WARM_UP_BATCHES gives one point (bytes moved, service time minus the profiled time
as the planner predicts it: forward and backward of blocks [p, L) at that micro-batch's
size, plus the optimizer step after the last one); a least-squares line through the
points gives the two overheads (a negative slope, which only noise can give, is taken as
none, and the per-task overhead is then the mean). Every point weighs the same, so a
throttled CFS period or a stall counts for its full length, as it does in an iteration.

On the testbed of bench/planner.py (a 1-core server, vgg5) two-point fits gave 1.2-1.3 ms
per task plus 11-15 ms per MB moved; a constant per task alone (+5.3 ms, fitted at
p = L // 2) had predicted p = 0 with 8 micro-batches a third too slow. (Most of the per-MB
cost was the receivers waking at every packet; since they wake per chunk, agents.wire's
WakeMark, the quick start's testbed fits 1.5 ms per task plus 4 ms per MB on its server
and nothing per MB on its devices.)

Note: the devices' fit. A device's wall time cannot be read the same way: its profile is its
throttled average speed, and a device that waits on its link runs faster than that in
bursts. Its CPU time can: every progress event of a device carries its agent's CPU time in
the round so far (all threads). Over the mini-batches after the warm-up, the CPU per
mini-batch minus the profiled compute's CPU (profiled seconds times the cores the compute
runs on, `cores_used`) is the agent's overhead; spread over the 2N tasks of a mini-batch
(N forwards, each sending its activation and labels, N backwards, each after receiving its
gradient) it gives one point per device and run, (bytes per task, CPU per task), and the
same least-squares line through a device's three points gives its two overheads, in CPU
seconds, stored at the device's throttled speed (divided by `cores_used`). On a 0.25-core
device a millisecond of CPU per frame is four milliseconds of an iteration: with fast links
and many micro-batches, a plan that leaves this out under-predicts by a third.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agents.schedule import microbatch_slices
from edgectl.errors import FleetError
from edgectl.planning.iteration import (
    LABEL_BYTES,
    cores_used,
    profiled_device_compute_s,
    server_binding,
    server_task_bytes,
)
from edgectl.planning.plans import Placement
from edgectl.planning.progress import Progress, ProgressCallback, StepClock, no_progress
from profiles.records import ComputeProfile

if TYPE_CHECKING:
    from edgectl.planning.profiling import FleetProfile

WARM_UP_BATCHES = 2
REFERENCE_MICROBATCHES = 4

# Trains one short pipar round, every device at the placement with mini-batches of the
# given size, and returns the run's id and metric events. The runs layer passes it in
# (edgectl.runs.calibrate): planning never starts a run itself.
TrainRound = Callable[[Placement, int], tuple[str, list[dict]]]


@dataclass(frozen=True)
class DeviceOverheads:
    """A device agent's CPU beyond its profiled compute, per micro-batch task."""

    cpu_per_task_s: float
    cpu_per_byte_s: float               # per byte the task sends or received
    cores: float                        # its compute's cores: wall = CPU / cores
    batches: int                        # mini-batches measured, over all runs


@dataclass(frozen=True)
class Calibration:
    task_overhead_s: float              # per server task
    byte_overhead_s: float              # per byte a server task moves
    tasks: int                          # how many tasks the fit is over
    placements: tuple[Placement, ...]   # every device's, one per calibration run
    run_ids: tuple[str, ...]
    devices: dict[str, DeviceOverheads] = field(default_factory=dict)


def reference_placements(num_blocks: int, batch_size: int) -> tuple[Placement, ...]:
    """Where the calibration runs put every device, one run each: the middle boundary
    (compute on both sides, traffic both ways), p = L - 1 (tiny tasks, few bytes) and
    p = 1 (the first block's activation, most often the largest), N = 4 micro-batches in
    all three. Never p = 0: calibration sends no raw sample off a device."""
    n = min(REFERENCE_MICROBATCHES, batch_size)
    points = dict.fromkeys(p for p in (num_blocks // 2, num_blocks - 1, 1)
                           if 1 <= p < num_blocks)
    return tuple(Placement(p, n) for p in points)


def server_task_times(server: ComputeProfile, placement: Placement,
                      batch_size: int) -> list[tuple[float, int]]:
    """(profiled seconds, bytes moved) of each of a device's server tasks in a mini-batch,
    as the planner has them (without any overhead)."""
    p, blocks = placement.split_point, range(placement.split_point, server.num_blocks)
    sizes = [s.stop - s.start for s in microbatch_slices(batch_size, placement.microbatches)]
    times = [sum(server.forward_time(k, b) + server.backward_time(k, b) for k in blocks)
             for b in sizes]
    times[-1] += server.step_s_per_param * sum(b.params for b in server.blocks[p:])
    return [(t, server_task_bytes(server.activation_bytes(p), p, b))
            for t, b in zip(times, sizes, strict=True)]


def service_excess(events: list[dict], server: ComputeProfile,
                   placements: dict[str, Placement], batch_size: int) -> list[tuple[int, float]]:
    """(bytes moved, service time minus profiled time) of each server task of a run's
    events after the warm-up (see the Note above)."""
    arrivals = {(e["host"], e["batch"], e["mb"]): e["end"] for e in events
                if e.get("type") == "span" and e.get("resource") == "uplink"
                and e.get("what") == "activation"}
    tasks = sorted((e for e in events if e.get("type") == "span"
                    and e.get("resource") == "server.compute"
                    and e.get("what") == "train"),
                   key=lambda e: e["start"])
    profiled = {name: server_task_times(server, pl, batch_size)
                for name, pl in placements.items()}
    bound = server_binding(server, list(placements))   # a queue per server worker
    points, previous_end = [], {}
    for task in tasks:
        device = task["device"]
        ready = arrivals.get((device, task["batch"], task["mb"]), task["start"])
        worker = bound.get(device, 0)
        begin = max(ready, previous_end.get(worker, ready))
        previous_end[worker] = task["end"]
        if device in profiled and task["batch"] >= WARM_UP_BATCHES:
            seconds, nbytes = profiled[device][task["mb"]]
            points.append((nbytes, task["end"] - begin - seconds))
    return points


def device_cpu_excess(events: list[dict], name: str, device: ComputeProfile,
                      placement: Placement, batch_size: int) -> tuple[float, float] | None:
    """(bytes per task, CPU seconds per task beyond the profiled compute) of one device in
    a calibration run, over its mini-batches after the warm-up (see the Note above); None
    when its progress events do not reach past the warm-up."""
    cpu = {e["batch"]: e["cpu_s"] for e in events if e.get("type") == "progress"
           and e.get("host") == name and "cpu_s" in e}
    first, last = WARM_UP_BATCHES, max(cpu, default=0)
    if first not in cpu or last <= first:
        return None
    per_batch = (cpu[last] - cpu[first]) / (last - first)
    compute = profiled_device_compute_s(device, placement, batch_size) * cores_used(device)
    tasks = 2 * placement.microbatches
    activation = device.activation_bytes(placement.split_point)
    moved = batch_size * (2 * activation + LABEL_BYTES)   # sent up, and the gradient back
    return moved / tasks, (per_batch - compute) / tasks


def fit_overheads(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(per task, per byte): the least-squares line through (bytes, excess) points."""
    if not points:
        raise FleetError(f"calibration: no server task after the first {WARM_UP_BATCHES} "
                         f"mini-batches to measure; run more batches")
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread \
        if spread > 0 else 0.0
    if slope <= 0:
        return mean_y, 0.0
    return mean_y - slope * mean_x, slope


def describe_calibration(cal: Calibration) -> str:
    """The server's fit, then each device's (its agent's CPU per micro-batch task)."""
    where = " and ".join(f"p={pl.split_point} N={pl.microbatches}" for pl in cal.placements)
    text = (f"{cal.task_overhead_s * 1e3:+.2f} ms per task {cal.byte_overhead_s * 1e9:+.2f} "
            f"ms per MB moved (fitted over {cal.tasks} tasks of runs {', '.join(cal.run_ids)}; "
            f"every device at {where})")
    for name, dev in cal.devices.items():
        text += (f"; device {name}: {dev.cpu_per_task_s * 1e3:+.2f} ms CPU per task "
                 f"{dev.cpu_per_byte_s * 1e9:+.2f} ms per MB, at {dev.cores:g} core"
                 f"{'s' if dev.cores != 1 else ''} (over {dev.batches} mini-batches)")
    return text


def calibrated(server: ComputeProfile, calibration: Calibration) -> ComputeProfile:
    return dataclasses.replace(server, task_overhead_s=calibration.task_overhead_s,
                               byte_overhead_s=calibration.byte_overhead_s)


def calibrated_device(device: ComputeProfile, overheads: DeviceOverheads) -> ComputeProfile:
    """The device's profile with its agent's overheads, at its throttled speed."""
    return dataclasses.replace(device, task_overhead_s=overheads.cpu_per_task_s / overheads.cores,
                               byte_overhead_s=overheads.cpu_per_byte_s / overheads.cores)


def fit_devices(points: dict[str, list[tuple[float, float]]], devices: dict[str, ComputeProfile],
                batches: int) -> dict[str, DeviceOverheads]:
    """Each device's overheads from its points, one per calibration run."""
    fitted = {}
    for name, device_points in points.items():
        if not device_points:
            raise FleetError(f"calibration: device {name} reported no CPU time after the first "
                             f"{WARM_UP_BATCHES} mini-batches; run more batches, or provision "
                             "its agent again (an older agent does not report it)")
        per_task, per_byte = fit_overheads(device_points)
        fitted[name] = DeviceOverheads(per_task, per_byte, cores_used(devices[name]),
                                       (batches - WARM_UP_BATCHES) * len(device_points))
    return fitted


def run_calibration(fleet: FleetProfile, store, train_round: TrainRound, batches: int,
                    on_progress: ProgressCallback = no_progress,
                    ) -> tuple[Calibration, FleetProfile]:
    """Train one round of `batches` mini-batches at each reference placement, fit, and store
    the calibrated profiles of the server and every device (they replace the plain ones:
    --refresh measures them afresh, uncalibrated). `on_progress` hears each run start, with
    the time left once one has run."""
    server = dataclasses.replace(fleet.server, task_overhead_s=0.0, byte_overhead_s=0.0)
    devices = {name: dataclasses.replace(dev, task_overhead_s=0.0, byte_overhead_s=0.0)
               for name, dev in fleet.devices.items()}
    batch_size = max(server.batch_sizes)
    placements = reference_placements(server.num_blocks, batch_size)
    if not placements:
        raise FleetError(f"{server.model} has {server.num_blocks} block(s): no split point "
                         "keeps the raw data on the devices and trains on the server, so "
                         "there is no server work to calibrate")
    points, run_ids, clock = [], [], StepClock(len(placements))
    device_points: dict[str, list[tuple[float, float]]] = {name: [] for name in devices}
    for index, placement in enumerate(placements, start=1):
        clock.start_part()
        on_progress(Progress("calibration", fleet.server.host, index, len(placements),
                             left_s=clock.left_s(),
                             note=f"p={placement.split_point} N={placement.microbatches}"))
        run_id, events = train_round(placement, batch_size)
        clock.end_part()
        points += service_excess(events, server, dict.fromkeys(devices, placement),
                                 batch_size)
        for name, device in devices.items():
            point = device_cpu_excess(events, name, device, placement, batch_size)
            if point is not None:
                device_points[name].append(point)
        run_ids.append(run_id)
    per_task, per_byte = fit_overheads(points)
    calibration = Calibration(per_task, per_byte, len(points), placements, tuple(run_ids),
                              fit_devices(device_points, devices, batches))
    server = calibrated(server, calibration)
    devices = {name: calibrated_device(dev, calibration.devices[name])
               for name, dev in devices.items()}
    for profile in (server, *devices.values()):
        store.save_compute(profile, batch_size)
    return calibration, dataclasses.replace(fleet, server=server, devices=devices)
