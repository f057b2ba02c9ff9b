"""`edgectl train`: plan if asked, train on the fleet with a live view, show the summary."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import typer

from edgectl.cli.common import (
    FORMAT_OPTION,
    INVENTORY_OPTION,
    STORE_OPTION,
    ProgressLines,
    emit_json,
    err,
    errors_to_exit,
    human,
    out,
)


@errors_to_exit
def train(
    strategy: str = typer.Option("pipar", help="fl, split or pipar."),
    model: str = typer.Option("vgg5", help="Model from `edgectl models`."),
    dataset: str = typer.Option("fashion-mnist", help="fashion-mnist, mnist, kmnist, cifar10, "
                                "cifar100 or folder:PATH."),
    data_dir: str = typer.Option(None, help="Folder holding the dataset files."),
    rounds: int = typer.Option(2, help="Training rounds (FedAvg after each)."),
    batch_size: int = typer.Option(32, help="Mini-batch size B on every device."),
    split_point: int = typer.Option(None, help="Split point p: blocks [0,p) on the device. "
                                    "Default: split, the middle block boundary; pipar, "
                                    "planned. 0 needs --allow-raw-upload."),
    microbatches: int = typer.Option(None, help="Micro-batches N per mini-batch (pipar). "
                                     "Default: planned."),
    max_batches: int = typer.Option(0, help="Mini-batches per device per round; 0 = the "
                                    "whole shard."),
    lr: float = typer.Option(0.01, help="SGD learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    seed: int = typer.Option(0, help="Seed for model init, data partition and order."),
    partition: str = typer.Option("iid", help="iid or dirichlet:ALPHA (label skew)."),
    batch_norm: bool = typer.Option(True, help="Use batch-norm layers in the model."),
    eval_samples: int = typer.Option(0, help="Test samples evaluated per round; 0 = all."),
    eval_every: int = typer.Option(1, help="Evaluate after every K-th round (and the last); "
                                   "evaluation time is reported apart from training."),
    inventory: Path = INVENTORY_OPTION,
    runs_dir: Path = typer.Option(Path("runs"), help="Where run records are written."),
    shape: str = typer.Option(None, "--shape", help="Shape the links for this run only, e.g. "
                              "up=10mbit,down=25mbit (SSH fleet or testbed)."),
    bandwidth_schedule: Path = typer.Option(None, "--bandwidth-schedule", help="YAML list of "
                                            "rate changes during the run, by time or round."),
    plan_file: Path = typer.Option(None, "--plan", help="pipar: follow this saved plan "
                                   "(`edgectl plan --save`). Without it, pipar plans now "
                                   "whatever of --split-point/--microbatches is not given."),
    allow_raw_upload: bool = typer.Option(False, "--allow-raw-upload", help="Allow split "
                                          "point 0: devices send raw samples to the server. "
                                          "Off by default; recorded in run.json."),
    min_split_point: int = typer.Option(None, help="pipar planning: the least split point "
                                        "the plan may choose."),
    max_microbatches: int = typer.Option(None, help="pipar planning: the most micro-batches "
                                         "the plan may choose."),
    adapt: bool = typer.Option(False, "--adapt", help="pipar: re-plan every round from "
                               "the link rates and compute times the run measured, and at "
                               "bandwidth-schedule changes."),
    store: str = STORE_OPTION,
    compare: str = typer.Option(None, "--compare", help="Then train the same work with these "
                                "strategies (e.g. fl,split) and print them side by side."),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Train on the fleet, showing live progress and writing runs/<run-id>/."""
    from edgectl.cli.views import LiveProgress, comparison_table, run_header, summary_tables
    from edgectl.fleet.inventory import load_inventory
    from edgectl.network.schedule import load_schedule
    from edgectl.network.shaping import ShapeSpec
    from edgectl.runs.compare import parse_baselines
    from edgectl.runs.options import TrainOptions

    options = TrainOptions(strategy=strategy, model=model, dataset=dataset, data_dir=data_dir,
                           rounds=rounds, batch_size=batch_size, split_point=split_point,
                           microbatches=microbatches, max_batches=max_batches, lr=lr,
                           momentum=momentum, seed=seed, partition=partition,
                           batch_norm=batch_norm, eval_samples=eval_samples,
                           eval_every=eval_every,
                           allow_raw_upload=allow_raw_upload, min_split_point=min_split_point,
                           max_microbatches=max_microbatches, adapt=adapt)
    baselines = parse_baselines(compare, strategy)
    from edgectl.runs.runner import plan_and_train  # torch: only once the options are valid

    fleet = load_inventory(inventory)
    shape_spec = ShapeSpec.parse(shape) if shape else None
    changes = load_schedule(str(bandwidth_schedule), fleet) if bandwidth_schedule else ()

    say = human(fmt)

    def header(run_strategy: str, chosen, placements: dict) -> None:
        if run_strategy != strategy:
            say.print(f"\nbaseline {run_strategy}, the same work:")
        elif chosen:
            say.print(f"plan: {chosen.describe()}")
        for line in run_header(options, run_strategy, fleet.server.name, placements):
            say.print(line)

    with LiveProgress(say, [h.name for h in fleet.devices], rounds) as live:
        runs = plan_and_train(options, fleet, str(runs_dir),
                              shlex.join(["edgectl", *sys.argv[1:]]),
                              plan_file=str(plan_file) if plan_file else None, store=store,
                              shape=shape_spec, schedule=changes, on_event=live,
                              on_start=header, baselines=baselines,
                              on_progress=ProgressLines(),
                              on_warning=lambda text: err.print(f"warning: {text}",
                                                                soft_wrap=True))
    if fmt == "json":   # what each run wrote as summary.json, and where its record is
        emit_json({"runs": [{"strategy": r.strategy, "run_dir": r.run_dir,
                             "summary": r.summary.to_json()} for r in runs],
                   "comparison": [dataclasses.asdict(r) | {"summary": None} for r in runs]
                   if baselines else None})
        return
    out.print(summary_tables(runs[0].summary))
    if baselines:
        out.print(comparison_table(runs))
    out.print("run record: " + ", ".join(r.run_dir for r in runs))
