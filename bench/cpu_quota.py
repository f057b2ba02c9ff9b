"""Benchmark: how much a testbed CPU quota slows a device's per-block training work.

    python3 bench/cpu_quota.py [--quota 0.25] [--model vgg5] [--batch 32] [--repeats 15]

Needs root. Brings up a throwaway testbed with two devices, d1 limited to --quota cores
and d2 unthrottled, runs the same per-block workload on each over SSH (so it lands in the
host's cgroup exactly as an agent does), prints per-block medians and the slowdown, and
takes the testbed down again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgectl.fleet.hosts import HostSession  # noqa: E402
from edgectl.fleet.inventory import load_inventory  # noqa: E402
from edgectl.fleet.layout import remote_path  # noqa: E402
from edgectl.network.testbed import TestbedSpec, testbed_down, testbed_up  # noqa: E402

# Per block: forward + backward of a batch, median of `repeats` timed runs after warm-up,
# single-threaded as an agent on a sub-core quota runs.
WORKLOAD = """
import json, sys, time, statistics, torch
sys.path.insert(0, {root!r})
from partitions.zoo import build_model
torch.set_num_threads(1)
model = build_model({model!r}, (1, 28, 28), 10)
x = torch.randn({batch}, 1, 28, 28)
times = {{}}
for name, block in model.blocks.items():
    inp = x.detach().requires_grad_(True)
    samples = []
    for i in range({repeats} + 3):
        t0 = time.perf_counter()
        out = block(inp)
        out.backward(torch.ones_like(out))
        if i >= 3:
            samples.append(time.perf_counter() - t0)
    times[name] = statistics.median(samples)
    x = out.detach()
print(json.dumps(times))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quota", type=float, default=0.25)
    p.add_argument("--model", default="vgg5")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    state = tempfile.mkdtemp(prefix="edgectl-quota-")
    # d2's quota is every core of this host: a cgroup like d1's, but nothing to throttle.
    bed = testbed_up(TestbedSpec("quota", devices=2, device_cpu=(args.quota, os.cpu_count()),
                                 state_dir=state))
    try:
        script = WORKLOAD.format(root=str(Path(__file__).resolve().parent.parent),
                                 model=args.model, batch=args.batch, repeats=args.repeats)
        results = {}
        for host in load_inventory(bed.inventory_path).devices:
            with HostSession(host) as s:
                results[host.name] = json.loads(s.check(f"{remote_path(host.python)} -",
                                                        "timing blocks", stdin=script))
    finally:
        testbed_down(bed.name, state)  # if this fails, the state stays for `testbed down`
        shutil.rmtree(state, ignore_errors=True)
    slow, fast = results["d1"], results["d2"]
    print(f"{args.model}, batch {args.batch}, forward+backward per block, median of "
          f"{args.repeats}; d1 at {args.quota} cores vs d2 unthrottled")
    print(f"{'block':<10}{'quota ms':>10}{'free ms':>10}{'slowdown':>10}")
    for name in fast:
        print(f"{name:<10}{slow[name] * 1e3:>10.2f}{fast[name] * 1e3:>10.2f}"
              f"{slow[name] / fast[name]:>9.2f}x")
    total_slow, total_fast = sum(slow.values()), sum(fast.values())
    print(f"{'total':<10}{total_slow * 1e3:>10.2f}{total_fast * 1e3:>10.2f}"
          f"{total_slow / total_fast:>9.2f}x  (ideal {1 / args.quota:.1f}x)")


if __name__ == "__main__":
    main()
