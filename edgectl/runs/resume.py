"""`edgectl train --resume RUN_DIR` and `--init-from MODEL`: runs that start from a model file.

A run that failed, was interrupted or lost its coordinator continues from its checkpoint
(agents.checkpoint: the global model after the last completed round, and the placements in
force) with the same config, plan and seed, in the same record: the server starts at the
next round with the checkpoint's model, the devices start afresh (they keep nothing between
rounds), and the record gets a "resumed" event (edgectl.runs.records). Resuming needs the
inventory the run ran on (checked by digest) and refuses a run whose coordinator is still
alive on this host, a completed run, and runs whose rounds depend on more than the
checkpoint (--adapt's re-planning state, a bandwidth schedule's position), for now.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

from agents.checkpoint import read_checkpoint
from agents.config import RunConfig
from agents.errors import AgentError
from edgectl.errors import ConfigError, UsageError
from edgectl.fleet.inventory import Inventory
from edgectl.runs.options import TrainOptions
from edgectl.runs.runner import ResumePoint
from edgectl.runs.train_config import load_train_config


def read_run_info(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--resume {run_dir}: no run.json there; give a run's record folder "
                         "(runs/<run-id>)") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not JSON ({e}); was it edited?") from None
    if not isinstance(info, dict) or "config" not in info or "train_config" not in info:
        raise ConfigError(f"{path} is not a run record this edgectl can resume (no config or "
                          "train_config)")
    return info


def resume_point(run_dir: str | os.PathLike, inventory: Inventory,
                 fetch_checkpoint=None) -> ResumePoint:
    """Check that the run at `run_dir` can go on, on `inventory`, and from where.
    `fetch_checkpoint(record)` brings a remote server's checkpoint into the record first."""
    info = read_run_info(run_dir)
    name = Path(run_dir).name
    rounds = info["config"].get("rounds")
    if info.get("status") == "completed":
        raise UsageError(f"run {name} completed all its {rounds} rounds; nothing to resume "
                         "(train a new run with --init-from its model.safetensors)")
    _check_not_running(info, name)
    if info.get("inventory_digest") != inventory.digest():
        raise UsageError(f"the inventory differs from the one run {name} ran on "
                         f"({info.get('inventory') or 'the built-in local fleet'}); resume "
                         "with that inventory, unchanged")
    options = TrainOptions(**{k: v for k, v in load_train_config(Path(run_dir) / "run.json")
                              .items() if k in TrainOptions.__dataclass_fields__})
    config = info["train_config"]
    if options.adapt or config.get("bandwidth_schedule"):
        raise UsageError(f"run {name} re-plans (--adapt) or follows a bandwidth schedule, "
                         "whose state a checkpoint does not hold yet; start it again with "
                         f"--config {Path(run_dir) / 'run.json'}")
    if options.decentralized:
        raise UsageError(f"run {name} is decentralized ({options.strategy}): its model lives "
                         "on the nodes and is not checkpointed yet; start it again with "
                         f"--config {Path(run_dir) / 'run.json'}")
    if options.strategy == "ecofed" and (options.replay_period or 1) > 1:
        raise UsageError(f"run {name} replays buffered activations (--replay-period "
                         f"{options.replay_period}), and a checkpoint does not hold the buffer "
                         f"yet; start it again with --config {Path(run_dir) / 'run.json'}")
    checkpoint_path = Path(run_dir) / "checkpoint.safetensors"
    if fetch_checkpoint is not None:
        fetch_checkpoint(checkpoint_path)
    if not checkpoint_path.exists():
        raise UsageError(f"run {name} has no checkpoint: it ended before its first round did; "
                         f"start it again with --config {Path(run_dir) / 'run.json'}")
    try:
        checkpoint = read_checkpoint(str(checkpoint_path))
    except AgentError as e:
        raise ConfigError(str(e)) from None
    run = RunConfig.from_json(info["config"])
    if checkpoint.meta.run_id != run.run_id:
        raise ConfigError(f"{checkpoint_path} belongs to run {checkpoint.meta.run_id}, not "
                          f"{run.run_id}; was it copied from another run?")
    placed = checkpoint.placements
    devices = []
    for d in run.devices:   # where the checkpoint's round ran each (train re-paces)
        p, n = placed.get(d.name, (d.split_point, d.microbatches))
        devices.append(replace(d, split_point=p, microbatches=n))
    run = replace(run, devices=tuple(devices))
    return ResumePoint(Path(run_dir), info, options, run, checkpoint)


def _check_not_running(info: dict, name: str) -> None:
    """A run whose status says running may have lost its coordinator (killed, the machine
    rebooted) or may still be going: refuse the second while its process lives here."""
    if info.get("status") != "running":
        return
    who = info.get("coordinator") or {}
    pid = who.get("pid")
    if who.get("host") != socket.gethostname() or not isinstance(pid, int):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return   # no such process: its coordinator is gone
    if b"edgectl" in cmdline:
        raise UsageError(f"run {name} is still running (its coordinator is process {pid} on "
                         "this host); stop it first, or wait for it to end")


def check_initial_model(options: TrainOptions) -> None:
    """--init-from: a model file of the model and normalization the run trains."""
    if not options.init_from:
        return
    from agents.model_file import read_model_meta

    try:
        meta = read_model_meta(options.init_from)
    except AgentError as e:
        raise UsageError(f"--init-from: {e}") from None
    if meta.model != options.model or meta.batch_norm != options.batch_norm:
        bn = "with" if meta.batch_norm else "without"
        raise UsageError(f"--init-from {options.init_from} holds {meta.model} {bn} batch "
                         f"norm, but this run trains {options.model}"
                         f"{'' if options.batch_norm else ' with --no-batch-norm'}; give a "
                         "model file of the same model")


def resume_and_train(run_dir: str | os.PathLike, inventory: Inventory, command: str, *,
                     on_event=lambda e: None, on_start=lambda strategy, plan, placements: None):
    """`edgectl train --resume RUN_DIR`: shape the links as the run had them, then train its
    remaining rounds into its record. Returns the run as `plan_and_train` does."""
    from edgectl.network.shaping import ShapeSpec, shaped
    from edgectl.planning.fleet_plans import load_plan
    from edgectl.planning.profiling import measure_links
    from edgectl.runs.compare import compared_run
    from edgectl.runs.pacing import link_pacing
    from edgectl.runs.runner import fetch_from_server, placements_record, server_file, train

    def fetch(local: Path) -> None:   # a remote server's checkpoint, newer than any copy
        fetch_from_server(inventory, server_file(inventory, local.parent, local.parent.name,
                                                 "checkpoint"), local)

    point = resume_point(run_dir, inventory, fetch)
    shape_text = point.info["train_config"].get("shape")
    shape = ShapeSpec.parse(shape_text) if shape_text else None
    plan = load_plan(point.info["plan"], inventory) if point.info.get("plan") else None
    with shaped(inventory, shape, probe=measure_links) as applied:
        placements = placements_record(point.run, link_pacing(point.options, inventory))
        on_start(point.options.strategy, plan, placements)
        result = train(point.options, inventory, str(point.dir.parent), command, on_event,
                       plan=plan, shaping=applied, shape=shape, resume=point)
    return [compared_run(point.options.strategy, placements, result.summary, result.run_dir)]

