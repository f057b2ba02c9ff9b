"""Benchmark: how long `edgectl --help`, each command's --help and usage errors take.

    PYTHONPATH=. python3 bench/cli_start.py [--repeats 5] [--only SUBSTRING]

Runs each command line of COMMANDS as a fresh `python -m edgectl` process, `--repeats`
times, and prints per line its median wall time (process start to exit), its exit code
and the heavy libraries (HEAVY) it imported, read from `-X importtime` in one extra run.
A usage error is answered before any of them is needed, so none should show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("torch", "numpy", "matplotlib", "fabric", "paramiko", "invoke", "PIL", "opacus",
         "scipy", "jsonschema")

COMMANDS = [
    "--help",
    "train --help", "plan --help", "profile --help", "bench --help", "evaluate --help",
    "testbed up --help", "shape set --help", "provision --help", "inventory check --help",
    "report --help", "runs --help", "models show --help",
    "train --strategy pipa",
    "train --strategy fl --split-point 2",
    "train --strategy split --microbatches 4",
    "train --optimizer adam --momentum 0.5",
    "train --rounds x",
    "train --model vgg9",
    "train --config /nonexistent.yaml",
    "train --inventory /nonexistent.yaml",
    "train --figure-format gif",
    "train --resume /nonexistent",
    "evaluate /nonexistent.safetensors",
    "evaluate README.md",
    "bench /nonexistent.yaml",
    "report /nonexistent",
    "models show vgg9",
    "plan --model vgg9",
    "profile --model vgg9",
    "shape set --up fast",
    "testbed up BAD!",
    "runs --format xml",
    "train --dataset imagenet",
    "train --partition dirichlet:x",
    "train --data-dir /nonexistent",
    "train --strategy pipar --dp",
    "train --strategy ecofed --quantize int4",
    "train --shape up=fast",
    "train --bandwidth-schedule /nonexistent.yaml",
    "train --plan /nonexistent.json",
    "train --init-from /nonexistent.safetensors",
    "train --device-init x.safetensors",
    "train --compare fl,nope",
    "plan --split-point 0",
    "plan --save /nonexistent/dir/plan.json",
    "profile show --format xml",
    "provision --hosts nosuch",
    "inventory check -i /nonexistent.yaml",
    "shape set --hosts nosuch --up 10mbit",
    "shape set --delay 20ms",
    "hosts trust nosuch",
    "testbed up t1 --devices 0",
    "testbed up t1 --cpu x",
    "testbed down nosuch",
    "models show vgg5 --input 1x2",
]


def heavy_imports(args: list[str], env: dict) -> tuple[int, list[str]]:
    """The exit code and the heavy top-level libraries one run imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgectl", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done.returncode, sorted(names & set(HEAVY))


def wall_times(args: list[str], env: dict, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgectl", *args], capture_output=True,
                       env=env, cwd=ROOT, timeout=120)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="Timed runs per line; 0: only "
                   "list the heavy imports.")
    p.add_argument("--only", default="", help="Only command lines containing this.")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    rows = []
    for line in COMMANDS:
        if args.only not in line:
            continue
        argv = line.split()
        code, heavy = heavy_imports(argv, env)
        times = wall_times(argv, env, args.repeats) or [float("nan")]
        rows.append((line, statistics.median(times), code, heavy))
        print(f"{statistics.median(times):6.3f} s (max {max(times):.3f})  rc={code}  "
              f"{line:45s} {' '.join(heavy) or '-'}", flush=True)
    if args.repeats:
        worst = max(rows, key=lambda r: r[1])
        print(f"slowest median: {worst[1]:.3f} s ({worst[0]})")
    print(f"command lines importing a heavy library: {sum(bool(r[3]) for r in rows)} "
          f"of {len(rows)}")

if __name__ == "__main__":
    main()
