"""Benchmark: two server parts at once, in two threads of one process or in two processes.

    PYTHONPATH=. python3 bench/server_workers.py [--splits 1,2] [--microbatches 25,50,100]
                                                 [--repeats 3] [--seconds 3]

The server agent (agents.workers) runs different devices' server parts on threads of one
process: torch releases the GIL inside its kernels, but every module call, autograd's
Python functions (partitions.layers' pool) and the optimizer's loop take it between them.
This measures what that costs against the alternative, a process per worker: VGG-5's
server part [p, L) on 3x32x32 at a micro-batch size, one training step a call (forward,
loss, backward, SGD step) on ONE intra-op thread each, timed
1. alone, one part in one process;
2. two parts in two threads of one process, started together;
3. two parts in two processes, started together.
Each way runs in fresh processes set up as an agent is (profiles.host.keep_freed_memory),
the ways interleaved `--repeats` times; a figure is the median over repeats of each run's
median step (both workers' when two run), with the range over the repeats. On a host
with fewer than two cores the two at once share one and the comparison means nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WAYS = {"alone": (1, 1), "threads": (1, 2), "processes": (2, 1)}   # (processes, threads)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", default="1,2", help="comma-separated split points p")
    p.add_argument("--microbatches", default="25,50,100", help="comma-separated sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run")
    p.add_argument("--worker", nargs=5, metavar=("P", "MB", "THREADS", "SECONDS", "START"),
                   help=argparse.SUPPRESS)   # one measuring process (run_way)
    return p.parse_args()


def worker(split: int, microbatch: int, threads: int, seconds: float, start_at: float) -> None:
    """Time `threads` server parts stepping at once in this process; print their medians
    (ms) as JSON. Timing starts at `start_at` (wall clock), after warm-up steps, so that
    parts in different processes overlap."""
    from profiles.host import keep_freed_memory
    keep_freed_memory()
    import torch
    import torch.nn.functional as F

    from partitions.parts import split as split_model
    from partitions.zoo import build_model
    torch.set_num_threads(1)

    def part() -> tuple:
        torch.manual_seed(0)
        device_part, server_part = split_model(build_model("vgg5", (3, 32, 32), 10), split)
        with torch.no_grad():
            activation = device_part(torch.randn(microbatch, 3, 32, 32))
        return (server_part, activation, torch.randint(0, 10, (microbatch,)),
                torch.optim.SGD(server_part.parameters(), lr=0.01, momentum=0.9))

    parts = [part() for _ in range(threads)]
    medians: list[float] = [0.0] * threads
    ready = threading.Barrier(threads)

    def run(i: int) -> None:
        model, activation, labels, optimizer = parts[i]

        def step() -> None:
            F.cross_entropy(model(activation.clone().requires_grad_()), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        ready.wait()
        time.sleep(max(start_at - time.time(), 0.0))
        times, end = [], time.time() + seconds
        while time.time() < end:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        medians[i] = statistics.median(times) * 1000

    runners = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    print(json.dumps(medians))


def run_way(way: str, split: int, microbatch: int, seconds: float,
            start_delay: float = 6.0) -> list[float]:
    """Step medians (ms) of every part of one run of `way`; timing starts `start_delay`
    s from now, once every process has imported torch and warmed up."""
    processes, threads = WAYS[way]
    start_at = time.time() + start_delay
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen(
        [sys.executable, __file__, "--worker", str(split), str(microbatch), str(threads),
         str(seconds), str(start_at)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)]
    medians = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"a measuring process failed (exit code {child.returncode})")
        medians += json.loads(out)
    return medians


def main() -> None:
    args = parse_args()
    if args.worker:
        p, mb, threads, seconds, start_at = args.worker
        worker(int(p), int(mb), int(threads), float(seconds), float(start_at))
        return
    cases = [(int(p), int(mb)) for p in args.splits.split(",")
             for mb in args.microbatches.split(",")]
    runs: dict[tuple, list[float]] = {(c, w): [] for c in cases for w in WAYS}
    for rep in range(args.repeats):
        for case in cases:
            for way in WAYS:
                medians = run_way(way, *case, args.seconds)
                runs[case, way].append(statistics.median(medians))
                print(f"rep {rep + 1} p={case[0]} micro-batch {case[1]} {way}: "
                      f"{' '.join(f'{m:.2f}' for m in medians)} ms", file=sys.stderr)

    def cell(case: tuple, way: str) -> str:
        values, alone = runs[case, way], statistics.median(runs[case, "alone"])
        mid = statistics.median(values)
        ratio = "" if way == "alone" else f" ({mid / alone:.2f}x)"
        return f"{mid:.2f}{ratio} [{min(values):.2f}-{max(values):.2f}]"

    print(f"VGG-5 server part [p, L), one training step on one intra-op thread each; "
          f"{os.cpu_count()} cores; medians of {args.repeats} interleaved repeats, ms "
          "(x alone) [range]")
    print(f"{'p':>2} {'micro-batch':>11}  {'alone':<22} {'2 threads, 1 process':<30} "
          f"{'2 processes':<30}")
    for case in cases:
        print(f"{case[0]:>2} {case[1]:>11}  {cell(case, 'alone'):<22} "
              f"{cell(case, 'threads'):<30} {cell(case, 'processes'):<30}")


if __name__ == "__main__":
    main()
