"""Benchmark: fl, split and pipar on the same work, on the local fleet or an inventory.

    python3 bench/strategies.py [--model vgg5] [--rounds 2] [--max-batches 50]
                                [--batch-size 32] [--split-point P] [--microbatches N]
                                [--inventory FILE] [--runs-dir DIR]

Each strategy runs as a normal `edgectl train` run (its record lands in --runs-dir). The
table printed per strategy: iteration time (training wall time / mini-batches), each
resource's utilization (the busiest host's, for per-device resources), pipeline
efficiency (busiest resource's busy time / wall time) and final accuracy. Figures come
from the runs' events, as `edgectl train` computes them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agents.events import RESOURCES  # noqa: E402
from edgectl.fleet.inventory import load_inventory  # noqa: E402
from edgectl.runs.options import TrainOptions  # noqa: E402
from edgectl.runs.runner import train  # noqa: E402
from edgectl.runs.summary import Summary  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default="fl,split,pipar")
    p.add_argument("--model", default="vgg5")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-batches", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--split-point", type=int, default=None)
    p.add_argument("--microbatches", type=int, default=None)
    p.add_argument("--inventory", default=None)
    p.add_argument("--runs-dir", default=None)
    return p.parse_args()


def busiest(summary: Summary, resource: str) -> float | None:
    values = [r.utilization for r in summary.resources if r.resource == resource]
    return max(values) if values else None


def row(strategy: str, summary: Summary) -> list[str]:
    cells = [strategy, f"{summary.iteration_s * 1000:.1f}"]
    for resource in RESOURCES:
        u = busiest(summary, resource)
        cells.append("-" if u is None else f"{u:.0%}")
    cells += [f"{summary.pipeline_efficiency:.2f}", summary.bottleneck,
              f"{summary.rounds[-1].accuracy:.2%}"]
    return cells


def main() -> None:
    args = parse_args()
    inventory = load_inventory(args.inventory)
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="edgectl-bench-")
    table = Table(title=f"{args.model}, B={args.batch_size}, {args.max_batches} batches x "
                        f"{args.rounds} rounds per device, {len(inventory.devices)} devices")
    for col in ("strategy", "iteration ms", *[f"{r} util" for r in RESOURCES],
                "pipeline eff.", "bottleneck", "accuracy"):
        table.add_column(col, justify="left" if col in ("strategy", "bottleneck") else "right")
    for strategy in args.strategies.split(","):
        options = TrainOptions(strategy=strategy, model=args.model, rounds=args.rounds,
                               max_batches=args.max_batches, batch_size=args.batch_size,
                               split_point=None if strategy == "fl" else args.split_point,
                               microbatches=args.microbatches if strategy == "pipar" else None,
                               eval_samples=1000)
        result = train(options, inventory, runs_dir, "bench/strategies.py")
        table.add_row(*row(strategy, result.summary))
        print(f"{strategy}: {result.run_dir}", file=sys.stderr)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
