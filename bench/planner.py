"""Benchmark: is the planner's prediction right, and is its choice the best one?

    python3 bench/planner.py [--devices 2] [--cpu 0.5] [--server-cpu 1] [--link 20mbit]
                             [--up 10mbit --down 25mbit] [--batches 30]
                             [--splits 1,2,3,4] [--microbatches 1,2,4,8] [--model vgg5]
                             [--batch-size 32] [--repeats 3] [--band 0.2] [--no-calibrate]
                             [--no-link-pacing]
    python3 bench/planner.py --local ...    # the built-in local fleet: no testbed, no root

Needs root (but --local). Brings up a testbed (CPU-throttled devices on rate-limited links,
and a server with a CPU share of its own, as a separate machine would have; --link is the
testbed's own link rate, 20mbit unless --up/--down shape each device's link with `edgectl
shape` instead),
provisions it, profiles it, calibrates the server (`edgectl profile --calibrate`: a short
run at each reference placement), plans, then trains with every (p, N) of the sweep (plus
fl), one round of --batches mini-batches each, and prints per placement the predicted and measured
iteration time. Measured = the run's training time over its mini-batches (from its events,
as `edgectl train` reports it); predicted = the planner's round time over the same count,
calibrated and (in its own column) from the plain profiles.

One run of a placement is noisy (the same placement varies by about 10% from run to run on a
throttled testbed), and the least of twenty noisy single runs is biased low. So the sweep
only screens: the chosen plan and every placement measured within --band of the sweep's best
are then run --repeats times more, interleaved (so drift hits them alike), and their medians
count. Regret = the chosen plan's median over the best contender's median, minus one. Takes
the testbed down at the end.

This host's speed drifts (a shared virtual machine), and a plan is made at the speed its
profiles were measured at. As context for the errors, a reference is timed on the
coordinator before profiling, after calibration and before every run (a forward and
backward of the sweep's model and batch on one thread, median of 15, in this process,
which keeps glibc's default allocator as `edgectl train` does: the agents' setting here
slowed their runs, see bench/floor.py's `in_agent_process`), and the report prints its
range. It does not correct the runs: in a sweep of 2 December (before that setting) it
ranged over 29.8-40.4 ms from run to run, as wide as the drift it would have corrected.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import step_times  # noqa: E402

from edgectl.cli.app import interrupt_on_sigterm  # noqa: E402
from edgectl.fleet.inventory import load_inventory, local_fleet  # noqa: E402
from edgectl.fleet.provision import provision  # noqa: E402
from edgectl.network.shaping import ShapeSpec, shaped  # noqa: E402
from edgectl.network.shaping_state import applied_label  # noqa: E402
from edgectl.network.testbed import TestbedSpec, testbed_down, testbed_up  # noqa: E402
from edgectl.planning.calibration import describe_calibration  # noqa: E402
from edgectl.planning.planner import Placement, plan  # noqa: E402
from edgectl.planning.profiling import (  # noqa: E402
    FleetProfile,
    measure_links,
    profile_fleet,
    request_for,
)
from edgectl.planning.store import ProfileStore  # noqa: E402
from edgectl.runs.calibrate import calibrate_fleet  # noqa: E402
from edgectl.runs.options import TrainOptions  # noqa: E402
from edgectl.runs.runner import train  # noqa: E402
from profiles.records import PROFILE_VERSION, ComputeProfile, LinkProfile  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--local", action="store_true",
                   help="the built-in local fleet (two devices and a server on this host)")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--up", help="shape each device's uplink to this rate (edgectl shape)")
    p.add_argument("--down", help="shape each device's downlink to this rate")
    p.add_argument("--cpu", type=float, default=0.5)
    p.add_argument("--server-cpu", type=float, default=1.0)
    p.add_argument("--link", default=None,
                   help="the testbed's own link rate (default 20mbit; with --up/--down none: "
                        "the shaped rates are the link)")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--splits", default="1,2,3,4",
                   help="split points swept (p >= 1: raw samples stay on the devices)")
    p.add_argument("--microbatches", default="1,2,4,8")
    p.add_argument("--model", default="vgg5")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each contender after the sweep (their median counts)")
    p.add_argument("--band", type=float, default=0.2,
                   help="sweep placements measured within this of the best are contenders")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    p.add_argument("--no-link-pacing", dest="link_pacing", action="store_false",
                   help="run (and calibrate) with the agents' connections unpaced "
                        "(edgectl/runs/pacing.py), as edgectl did before 4 December")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the profiles and run records in DIR, for --replay")
    p.add_argument("--replay", metavar="DIR",
                   help="measure nothing: predict again, with the planner as it is now, the "
                        "runs a --keep run kept, and print the same table")
    return p.parse_args()


def predicted_iteration(fleet, fixed: dict[str, Placement], args) -> float:
    """The planner's round time with these placements, per mini-batch."""
    pinned = plan(fleet.devices, fleet.server, fleet.links, args.batch_size, args.batches,
                  fixed=fixed)
    return pinned.round_s / args.batches


def row(name: str, predicted: float, plain: float, measured: list[float],
        quiet: bool = False) -> tuple:
    """(name, predicted s, plain-profile predicted s, measured runs in s)."""
    if measured and not quiet:
        print(f"{name}: predicted {predicted * 1e3:.1f} ms (plain profiles {plain * 1e3:.1f}), "
              f"measured {measured[0] * 1e3:.1f} ms", flush=True)
    return name, predicted, plain, measured


def measured_iteration(inventory, args, runs: str, placement: Placement | None = None,
                       chosen=None, reference: Reference | None = None) -> float:
    """Train one round with a uniform placement, or with the chosen plan itself, the
    host's reference timed just before when one is given."""
    if reference is not None:
        reference.measure()
    p, n = (placement.split_point, placement.microbatches) if placement else (None, None)
    options = TrainOptions(strategy="pipar", model=args.model, batch_size=args.batch_size,
                           rounds=1, max_batches=args.batches, eval_samples=100,
                           split_point=p, microbatches=n, link_pacing=args.link_pacing)
    result = train(options, inventory, runs, "bench/planner.py", plan=chosen)
    return result.summary.iteration_s


class Reference:
    """Times a forward and backward of the sweep's model and batch on one thread of this
    host (the median of `steps`), to show how the host's speed moved; `times` keeps every
    measurement in order."""

    def __init__(self, args, steps: int = 15):
        import torch

        from agents.dataset_catalog import dataset_shape
        from partitions.zoo import build_model

        shape, classes = dataset_shape("fashion-mnist")
        self.model = build_model(args.model, shape, classes)
        self.x = torch.randn(args.batch_size, *shape)
        self.y = torch.randint(0, classes, (args.batch_size,))
        self.steps, self.times = steps, []

    def measure(self) -> float:
        self.times.append(statistics.median(
            step_times(self.model, self.x, self.y, self.steps, warm_up=2)))
        return self.times[-1]


def label(placement: Placement) -> str:
    return f"p={placement.split_point} N={placement.microbatches}"


def main() -> None:
    args = parse_args()
    if args.replay:
        replay(Path(args.replay))
        return
    interrupt_on_sigterm()  # a killed benchmark still takes its testbed down
    state = tempfile.mkdtemp(prefix="edgectl-planbench-")
    try:
        with fleet_for(args, state) as inventory:
            sweep_and_report(args, inventory, state)
    finally:
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            (keep / "args.json").write_text(json.dumps(vars(args), indent=1))
            for part in ("store", "runs"):
                if Path(state, part).is_dir():
                    shutil.copytree(Path(state, part), keep / part, dirs_exist_ok=True)
        shutil.rmtree(state, ignore_errors=True)


def replay(kept: Path) -> None:
    """The table of a kept benchmark, predicted by the planner as it is now: every run of
    the sweep (not calibration's) grouped by its placements; the plan chosen now, and its
    regret where it was among the placements measured."""
    args = argparse.Namespace(**json.loads((kept / "args.json").read_text()))
    def read(path: Path) -> dict:
        """A kept record, as this edgectl reads it: one of an older PROFILE_VERSION has the
        same fields, measured by the profiler of its day."""
        return {**json.loads(path.read_text()), "version": PROFILE_VERSION}

    compute = [ComputeProfile.from_json(read(f))
               for f in sorted(kept.glob("store/*/compute/*/*.json"))]
    links = {lp.device: lp for lp in (LinkProfile.from_json(read(f))
                                      for f in sorted(kept.glob("store/*/links/*.json")))}
    server = next(c for c in compute if c.host == "server")
    devices = {c.host: c for c in compute if c.host != "server"}
    fleet = FleetProfile(devices, server, links)
    plain = FleetProfile({n: _plain(d) for n, d in devices.items()}, _plain(server), links)
    measured: dict[tuple, list[float]] = {}
    for run in sorted(kept.glob("runs/*/run.json")):
        info = json.loads(run.read_text())
        summary = run.parent / "summary.json"
        if info.get("command") != "bench/planner.py" or not summary.exists():
            continue
        key = tuple(sorted((d["device"], d["split_point"], d["microbatches"])
                           for d in info["placements"]["devices"]))
        measured.setdefault(key, []).append(json.loads(summary.read_text())["iteration_s"])
    chosen = plan(fleet.devices, fleet.server, fleet.links, args.batch_size, args.batches)
    print(f"plan now: {chosen.describe()}")
    chosen_key = tuple(sorted((d.device, d.split_point, d.microbatches)
                              for d in chosen.devices))
    rows, chosen_name = [], None
    for key, runs in measured.items():
        fixed = {name: Placement(p, n) for name, p, n in key}
        same = {(p, n) for _, p, n in key}
        name = label(Placement(*next(iter(same)))) if len(same) == 1 else \
            ", ".join(f"{d} {label(Placement(p, n))}" for d, p, n in key)
        if key == chosen_key:
            chosen_name = name = "chosen now: " + name
        rows.append(row(name, predicted_iteration(fleet, fixed, args),
                        predicted_iteration(plain, fixed, args), runs, quiet=True))
    if chosen_name is None:
        chosen_name = "chosen now (never measured)"
        rows.append((chosen_name, chosen.round_s / args.batches, 0.0, []))
    report(rows, chosen_name, None)


def _plain(profile: ComputeProfile) -> ComputeProfile:
    return dataclasses.replace(profile, task_overhead_s=0.0, byte_overhead_s=0.0)


@contextlib.contextmanager
def fleet_for(args, state: str):
    """The local fleet, or a testbed brought up, provisioned and shaped, and always
    unshaped and taken down."""
    if args.local:
        yield local_fleet()
        return
    shaping = args.up or args.down
    if shaping and args.link:
        raise SystemExit("--link and --up/--down both set a device's link rate; give one")
    link = args.link or (None if shaping else "20mbit")
    bed = testbed_up(TestbedSpec("planb", devices=args.devices, device_cpu=(args.cpu,),
                                 server_cpu=args.server_cpu, link=link, state_dir=state))
    try:
        inventory = load_inventory(bed.inventory_path)
        failed = [r.error for r in provision(list(inventory.hosts)) if not r.ok]
        if failed:
            raise SystemExit(f"provisioning failed: {failed}")
        spec = ShapeSpec(up=args.up, down=args.down) if shaping else None
        with shaped(inventory, spec, probe=measure_links) as applied:
            for s in applied:
                print(f"shaped {s.device}: up {s.up} -> {s.measured_up_bps / 1e6:.2f} Mbit/s, "
                      f"down {s.down} -> {s.measured_down_bps / 1e6:.2f} Mbit/s", flush=True)
            yield inventory
    finally:
        testbed_down(bed.name, state)


def sweep_and_report(args, inventory, state: str) -> None:
    """Profile, calibrate, plan, sweep, re-run the contenders, print the table."""
    req = request_for(args.model, "fashion-mnist", None, None, args.batch_size)
    store = ProfileStore.open(state + "/store", inventory.digest())
    reference = Reference(args)
    reference.measure()
    fleet = profile_fleet(inventory, req, store, link_label=applied_label)
    plain = fleet
    if args.calibrate:
        cal, fleet = calibrate_fleet(inventory, fleet, store, "fashion-mnist", 12,
                                     state + "/runs", link_pacing=args.link_pacing)
        print(f"calibration: server {describe_calibration(cal)}", flush=True)
    reference.measure()
    print(f"reference step before profiling and at plan time: "
          f"{reference.times[0] * 1e3:.1f}, {reference.times[1] * 1e3:.1f} ms", flush=True)
    chosen = plan(fleet.devices, fleet.server, fleet.links, args.batch_size, args.batches)
    print(f"plan: {chosen.describe()}", flush=True)
    sweep = [Placement(p, n) for p in map(int, args.splits.split(","))
             for n in map(int, args.microbatches.split(","))]
    sweep.append(Placement(chosen.num_blocks, 1))
    rows = {}
    for placement in sweep:
        uniform = dict.fromkeys(fleet.devices, placement)
        rows[label(placement)] = row(
            label(placement), predicted_iteration(fleet, uniform, args),
            predicted_iteration(plain, uniform, args),
            [measured_iteration(inventory, args, state + "/runs", placement, reference=reference)])
    chosen_name = "chosen plan: " + ", ".join(
        f"{d.device} {label(Placement(d.split_point, d.microbatches))}"
        for d in chosen.devices)
    fixed = {d.device: Placement(d.split_point, d.microbatches) for d in chosen.devices}
    rows[chosen_name] = row(chosen_name, chosen.round_s / args.batches,
                            predicted_iteration(plain, fixed, args), [])
    best = min(r[3][0] for r in rows.values() if r[3])
    # A uniform chosen plan is also a sweep placement: measuring it twice would set the
    # plan against a second sample of itself, so its twin leaves the contenders.
    twin = next((label(pl) for pl in sweep if set(fixed.values()) == {pl}), None)
    contenders = {chosen_name: None} | {
        label(pl): pl for pl in sweep
        if label(pl) != twin and rows[label(pl)][3][0] <= best * (1 + args.band)}
    print(f"contenders, {args.repeats} runs each: {', '.join(contenders)}", flush=True)
    repeats: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, placement in contenders.items():
            repeats[name].append(measured_iteration(
                inventory, args, state + "/runs", placement,
                chosen=chosen if placement is None else None, reference=reference))
            print(f"{name}: measured {repeats[name][-1] * 1e3:.1f} ms", flush=True)
    for name, runs in repeats.items():
        rows[name] = rows[name][:3] + (runs,)
    report(list(rows.values()), chosen_name, twin)
    during = reference.times[2:]
    print(f"reference step before each run: {min(during) * 1e3:.1f}-{max(during) * 1e3:.1f} "
          f"ms, median {statistics.median(during) * 1e3:.1f} (at plan time "
          f"{reference.times[1] * 1e3:.1f})")


def report(rows: list[tuple[str, float, float, list[float]]], chosen_name: str,
           twin: str | None) -> None:
    """The table, fastest measured first (the median of its runs: the repeated runs for a
    contender, the one screening run otherwise), then the chosen plan's prediction error
    and regret against the best other placement (its uniform twin is not another one).
    Where no other placement came within the band, that best is a single screening run,
    which the band already put well behind."""
    def measured(r):
        return statistics.median(r[3]) if r[3] else math.inf

    print(f"\n{'placement':<44}{'predicted ms':>13}{'error':>8}{'plain ms':>10}{'error':>8}"
          f"{'measured ms':>13}  runs")
    for r in sorted(rows, key=measured):
        name, predicted, plain, runs = r
        if not runs:
            continue
        m = measured(r)
        print(f"{name:<44}{predicted * 1e3:>13.1f}{(predicted - m) / m:>+8.1%}"
              f"{plain * 1e3:>10.1f}{(plain - m) / m:>+8.1%}{m * 1e3:>13.1f}  "
              + " ".join(f"{t * 1e3:.1f}" for t in runs))
    chosen = next(r for r in rows if r[0] == chosen_name)
    others = [r for r in rows if r is not chosen and r[0] != twin]
    m = measured(chosen)
    if not chosen[3]:   # --replay: the plan chosen now was not among the runs kept
        print(f"\n{chosen_name}: predicted {chosen[1] * 1e3:.1f} ms, not measured")
        return
    line = f"\n{chosen_name}: prediction error {(chosen[1] - m) / m:+.1%}"
    if others:
        best = min(others, key=measured)
        line += (f"; regret {max(m / measured(best) - 1, 0.0):.1%} against the best other "
                 f"placement ({best[0]}, {measured(best) * 1e3:.1f} ms, median of "
                 f"{len(best[3])} run{'s' if len(best[3]) > 1 else ''})")
    print(line)


if __name__ == "__main__":
    main()
