"""Benchmark: is the planner's prediction right, and is its choice the best one?

    python3 bench/planner.py [--cpu 0.5] [--link 20mbit] [--batches 30] [--splits 1,2,3,4]
                             [--microbatches 1,2,4,8] [--model vgg5] [--batch-size 32]

Needs root. Brings up a testbed (two CPU-throttled devices on rate-limited links),
provisions it, profiles it, plans, then trains with the chosen (p, N) and with every
(p, N) of the sweep (plus fl), one round of --batches mini-batches each, and prints per
placement the predicted and measured iteration time. Measured = the run's training time
over its mini-batches (from its events, as `edgectl train` reports it); predicted = the
planner's round time over the same count. Regret = measured time of the chosen placement
over the best measured in the sweep, minus one. Takes the testbed down at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgectl.cli import interrupt_on_sigterm  # noqa: E402
from edgectl.inventory import load_inventory  # noqa: E402
from edgectl.planner import Placement, plan  # noqa: E402
from edgectl.profile_store import ProfileStore  # noqa: E402
from edgectl.profiling import profile_fleet, request_for  # noqa: E402
from edgectl.provision import provision  # noqa: E402
from edgectl.runner import train  # noqa: E402
from edgectl.testbed import TestbedSpec, testbed_down, testbed_up  # noqa: E402
from edgectl.train_options import TrainOptions  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", type=float, default=0.5)
    p.add_argument("--link", default="20mbit")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--splits", default="1,2,3,4")
    p.add_argument("--microbatches", default="1,2,4,8")
    p.add_argument("--model", default="vgg5")
    p.add_argument("--batch-size", type=int, default=32)
    return p.parse_args()


def predicted_iteration(fleet, placement: Placement, args) -> float:
    """The planner's round time with this placement on every device, per mini-batch."""
    fixed = {name: placement for name in fleet.devices}
    pinned = plan(fleet.devices, fleet.server, fleet.links, args.batch_size, args.batches,
                  fixed=fixed)
    return pinned.round_s / args.batches


def measured_iteration(inventory, args, runs: str, placement: Placement | None = None,
                       chosen=None) -> float:
    """Train one round with a uniform placement, or with the chosen plan itself."""
    p, n = (placement.split_point, placement.microbatches) if placement else (None, None)
    options = TrainOptions(strategy="pipar", model=args.model, batch_size=args.batch_size,
                           rounds=1, max_batches=args.batches, eval_samples=100,
                           split_point=p, microbatches=n)
    result = train(options, inventory, runs, "bench/planner.py", plan=chosen)
    return result.summary.iteration_s


def label(placement: Placement) -> str:
    return f"p={placement.split_point} N={placement.microbatches}"


def main() -> None:
    args = parse_args()
    interrupt_on_sigterm()  # a killed benchmark still takes its testbed down
    state = tempfile.mkdtemp(prefix="edgectl-planbench-")
    bed = testbed_up(TestbedSpec("planb", devices=2, device_cpu=(args.cpu,), link=args.link,
                                 state_dir=state))
    try:
        inventory = load_inventory(bed.inventory_path)
        failed = [r.error for r in provision(list(inventory.hosts)) if not r.ok]
        if failed:
            raise SystemExit(f"provisioning failed: {failed}")
        req = request_for(args.model, "fashion-mnist", None, None, args.batch_size)
        fleet = profile_fleet(inventory, req, ProfileStore.open(state + "/store",
                                                                inventory.digest()))
        chosen = plan(fleet.devices, fleet.server, fleet.links, args.batch_size, args.batches)
        print(f"plan: {chosen.describe()}", flush=True)
        sweep = [Placement(p, n) for p in map(int, args.splits.split(","))
                 for n in map(int, args.microbatches.split(","))]
        sweep.append(Placement(chosen.num_blocks, 1))
        name = "chosen plan: " + ", ".join(
            f"{d.device} {label(Placement(d.split_point, d.microbatches))}"
            for d in chosen.devices)
        rows = [(name, chosen.round_s / args.batches,
                 measured_iteration(inventory, args, state + "/runs", chosen=chosen))]
        print(f"{rows[0][0]}: predicted {rows[0][1] * 1e3:.1f} ms, measured "
              f"{rows[0][2] * 1e3:.1f} ms", flush=True)
        for placement in sweep:
            row = (label(placement), predicted_iteration(fleet, placement, args),
                   measured_iteration(inventory, args, state + "/runs", placement))
            rows.append(row)
            print(f"{row[0]}: predicted {row[1] * 1e3:.1f} ms, measured "
                  f"{row[2] * 1e3:.1f} ms", flush=True)
        report(rows)
    finally:
        testbed_down(bed.name, state)


def report(rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{'placement':<44}{'predicted ms':>13}{'measured ms':>13}{'error':>8}")
    for name, predicted, measured in sorted(rows, key=lambda r: r[2]):
        print(f"{name:<44}{predicted * 1e3:>13.1f}{measured * 1e3:>13.1f}"
              f"{(predicted - measured) / measured:>+8.1%}")
    name, predicted, measured = rows[0]
    best = min(rows[1:], key=lambda r: r[2])
    print(f"\n{name}: prediction error {(predicted - measured) / measured:+.1%}; regret "
          f"{max(measured / best[2] - 1, 0.0):.1%} against the best measured uniform "
          f"placement ({best[0]}, {best[2] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
