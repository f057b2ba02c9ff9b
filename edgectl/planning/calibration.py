"""Calibration: what the server agent costs beyond its profiled compute, measured by runs.

A compute profile times each block alone, in a quiet process. The server agent does more
per micro-batch: it reads the frame, keeps its books, writes events and sends the
gradient, with receiver and sender threads sharing its cores (and its CPU quota) with
the compute. `edgectl profile --calibrate` measures that cost: it trains three short
pipar rounds at reference placements that move very different bytes per micro-batch
(every device at p = L // 2, then p = L - 1, then p = 1; N = 4 in all), fits the
server's overhead as `task_overhead_s + byte_overhead_s * bytes moved` and stores both in
the server's compute profile, where the planner adds them to every server task
(edgectl/planning/iteration.py).

Note: the fit. Each server worker (agents.workers) is a queue of tasks served one at a
time. A task's service time is its end minus the later of its activation's arrival (the
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
p = L // 2) had predicted p = 0 with 8 micro-batches a third too slow.

Only the server is calibrated. A device's profile is its throttled average speed; a
device that waits on its link runs faster than that in bursts, and one that computes all
the time runs at exactly that, so a number measured at one placement would be wrong at
another. The links are left as probed.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from agents.schedule import microbatch_slices
from edgectl.errors import FleetError
from edgectl.planning.iteration import server_binding, server_task_bytes
from edgectl.planning.plans import Placement
from edgectl.planning.progress import Progress, ProgressCallback, StepClock, no_progress
from profiles.records import ComputeProfile

WARM_UP_BATCHES = 2
REFERENCE_MICROBATCHES = 4

# Trains one short pipar round, every device at the placement with mini-batches of the
# given size, and returns the run's id and metric events. The runs layer passes it in
# (edgectl.runs.calibrate): planning never starts a run itself.
TrainRound = Callable[[Placement, int], tuple[str, list[dict]]]


@dataclass(frozen=True)
class Calibration:
    task_overhead_s: float              # per server task
    byte_overhead_s: float              # per byte a server task moves
    tasks: int                          # how many tasks the fit is over
    placements: tuple[Placement, ...]   # every device's, one per calibration run
    run_ids: tuple[str, ...]


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
    where = " and ".join(f"p={pl.split_point} N={pl.microbatches}" for pl in cal.placements)
    return (f"{cal.task_overhead_s * 1e3:+.2f} ms per task {cal.byte_overhead_s * 1e9:+.2f} "
            f"ms per MB moved (fitted over {cal.tasks} tasks of runs {', '.join(cal.run_ids)}; "
            f"every device at {where})")


def calibrated(server: ComputeProfile, calibration: Calibration) -> ComputeProfile:
    return dataclasses.replace(server, task_overhead_s=calibration.task_overhead_s,
                               byte_overhead_s=calibration.byte_overhead_s)


def run_calibration(fleet, store, train_round: TrainRound,
                    on_progress: ProgressCallback = no_progress,
                    ) -> tuple[Calibration, ComputeProfile]:
    """Train one round at each reference placement, fit, and store the calibrated server
    profile (it replaces the plain one: --refresh measures it afresh, uncalibrated).
    `on_progress` hears each run start, with the time left once one has run."""
    server = dataclasses.replace(fleet.server, task_overhead_s=0.0, byte_overhead_s=0.0)
    batch_size = max(server.batch_sizes)
    placements = reference_placements(server.num_blocks, batch_size)
    if not placements:
        raise FleetError(f"{server.model} has {server.num_blocks} block(s): no split point "
                         "keeps the raw data on the devices and trains on the server, so "
                         "there is no server work to calibrate")
    points, run_ids, clock = [], [], StepClock(len(placements))
    for index, placement in enumerate(placements, start=1):
        clock.start_part()
        on_progress(Progress("calibration", fleet.server.host, index, len(placements),
                             left_s=clock.left_s(),
                             note=f"p={placement.split_point} N={placement.microbatches}"))
        run_id, events = train_round(placement, batch_size)
        clock.end_part()
        points += service_excess(events, server, dict.fromkeys(fleet.devices, placement),
                                 batch_size)
        run_ids.append(run_id)
    per_task, per_byte = fit_overheads(points)
    calibration = Calibration(per_task, per_byte, len(points), placements, tuple(run_ids))
    server = calibrated(server, calibration)
    store.save_compute(server, batch_size)
    return calibration, server
