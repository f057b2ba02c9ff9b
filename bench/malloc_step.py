"""Benchmark: one VGG-5 training step with glibc's malloc defaults and with the agents'
setting (profiles.host.keep_freed_memory), each in a fresh process, interleaved.

    PYTHONPATH=. python3 bench/malloc_step.py [--repeats 3] [--batch-size 100]

Per process: the median of 20 steps (forward, loss, backward, SGD step) on one thread
after 3 of warm-up, and the page faults a step took.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_process(mode: str, batch_size: int) -> None:
    sys.path.insert(0, str(ROOT))
    from profiles.host import keep_freed_memory
    applied = keep_freed_memory() if mode == "keep" else False
    from floor import step_times, vgg5_step  # imports torch: after the setting

    model, x, y, optimizer = vgg5_step(batch_size)
    faults: list[int] = []

    def count() -> None:
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    times = step_times(model, x, y, 20, optimizer=optimizer, after_warm_up=count)
    count()
    per_step = (faults[1] - faults[0]) / len(times)
    print(f"{mode:<8} applied={applied!s:<5} step {statistics.median(times) * 1e3:6.1f} ms  "
          f"{per_step:8.0f} page faults a step", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--one", choices=("default", "keep"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one_process(args.one, args.batch_size)
        return
    for _ in range(args.repeats):
        for mode in ("default", "keep"):
            subprocess.run([sys.executable, __file__, "--one", mode, "--batch-size",
                            str(args.batch_size)], check=True)


if __name__ == "__main__":
    main()
