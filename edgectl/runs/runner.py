"""Orchestrating one training run: plan the placement, run the agents, keep the record.

`train` resolves each device's split point and micro-batch count, writes run.json, runs an
`AgentSession` whose events go to the run record and a callback (the live view), fetches
the final model (and the last checkpoint) from a remote server, and always finishes the
record with how the run ended and a summary computed from its events: on success, failure
and Ctrl-C alike, with every agent stopped. A resumed run (edgectl.runs.resume) goes
through the same `train`, appending to its record.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.checkpoint import Checkpoint
from agents.config import DeviceSpec, RunConfig
from agents.strategies import get_strategy
from edgectl.errors import EdgectlError, UsageError
from edgectl.fleet.hosts import HostSession
from edgectl.fleet.inventory import Host, Inventory
from edgectl.fleet.sessions import AgentSession, EventCallback
from edgectl.network.schedule import BandwidthChange, ScheduleRunner, schedule_to_data
from edgectl.network.shaping import Shaped, ShapeSpec, shaped
from edgectl.network.shaping_state import applied_label
from edgectl.planning.calibration import Calibration
from edgectl.planning.fleet_plans import (
    plan_for_training,
    training_constraints,
    training_profile,
)
from edgectl.planning.planner import Plan
from edgectl.planning.plans import placement_mode
from edgectl.planning.profiling import measure_links
from edgectl.planning.progress import ProgressCallback, no_progress
from edgectl.planning.store import ProfileStore
from edgectl.runs.adapt import Adapter, Pacer
from edgectl.runs.churn import AvailabilityTrace, load_trace
from edgectl.runs.compare import ComparedRun, baseline_options, compared_run
from edgectl.runs.ecofed_run import checked_ecofed_run, device_init_on_server
from edgectl.runs.options import TrainOptions
from edgectl.runs.pacing import LinkPacing, link_pacing
from edgectl.runs.records import RunRecord, new_run_id, read_events
from edgectl.runs.summary import Summary, summarize
from edgectl.runs.train_config import resolved_config


@dataclass(frozen=True)
class ResumePoint:
    """Where and how an interrupted run goes on (edgectl.runs.resume makes one)."""

    dir: Path
    info: dict                 # its run.json
    options: TrainOptions      # as it resolved them (train_config)
    run: RunConfig             # what its agents ran, with the checkpoint's placements
    checkpoint: Checkpoint


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: str
    summary: Summary


def build_run_config(options: TrainOptions, inventory: Inventory, run_id: str,
                     plan: Plan | None = None, paced: bool = False,
                     pacing: LinkPacing = LinkPacing()) -> RunConfig:
    """The run config for every agent, with each device's split point and micro-batch
    count resolved by the strategy (from the plan when there is one, else the device's
    inventory pins, else the options), and its link's pacing, so run.json records what
    actually ran. A device placed at p = 0 without --allow-raw-upload is refused here,
    before anything starts."""
    from partitions.zoo import block_count

    strategy = get_strategy(options.strategy)
    blocks = block_count(options.model)
    if options.min_devices > len(inventory.devices):
        raise UsageError(f"--min-devices {options.min_devices} is more than the fleet's "
                         f"{len(inventory.devices)} devices; give at most "
                         f"{len(inventory.devices)}")
    planned = {d.device: (d.split_point, d.microbatches) for d in plan.devices} if plan else {}
    devices = []
    for host in inventory.devices:
        asked = DeviceSpec(host.name, *planned.get(host.name, (
            _first(host.split_point, options.split_point),
            _first(host.microbatches, options.microbatches))))
        placed = strategy.place(asked, blocks, options.batch_size)
        if placed.split_point == 0 and not options.allow_raw_upload:
            raise UsageError(f"device {host.name} would run at split point 0 (from "
                             f"{'the plan' if host.name in planned else 'its pin'}), sending "
                             "its raw samples to the server; choose a split point of 1 or "
                             "more, or add --allow-raw-upload to allow it")
        devices.append(DeviceSpec(host.name, placed.split_point, placed.microbatches))
    fields = {k: v for k, v in options.as_run_fields().items()
              if k not in ("split_point", "microbatches")}
    if options.decentralized:
        names = [h.name for h in inventory.devices]
        trace = churn_trace(options, inventory)
        fields["strategy_options"] = options.decentral_options(
            names, trace.initial(names) if trace else names)
    run = RunConfig(run_id=run_id, devices=pacing.applied_to(devices), paced=paced, **fields)
    return checked_ecofed_run(run) if options.strategy == "ecofed" else run


def churn_trace(options: TrainOptions, inventory: Inventory) -> AvailabilityTrace | None:
    """The run's availability trace (--churn), checked against the fleet; None without."""
    if not options.churn:
        return None
    return load_trace(options.churn, [h.name for h in inventory.devices])


def _first(*values):
    return next((v for v in values if v is not None), None)


def placements_record(run: RunConfig, pacing: LinkPacing = LinkPacing()) -> dict:
    """What ran on each device, in words (see edgectl.planning.plans.placement_mode),
    whether any device's raw samples left it, and how its link was paced: for run.json,
    the header and reports."""
    from partitions.zoo import block_count

    blocks = block_count(run.model)
    devices = [{"device": d.name, "split_point": d.split_point, "microbatches": d.microbatches,
                "mode": run.strategy if run.strategy in ("ecofed", "plexus", "dpsgd") else
                placement_mode(d.split_point, d.microbatches, blocks)}
               for d in run.devices]
    raw = [d.name for d in run.devices if d.split_point == 0]
    return {"devices": devices, "num_blocks": blocks, "raw_upload_allowed": run.allow_raw_upload,
            "raw_upload_devices": raw, "raw_samples_left_devices": bool(raw),
            "link_pacing": pacing.to_json()}


def preview_placements(options: TrainOptions, inventory: Inventory, plan: Plan | None = None,
                       schedule: tuple[BandwidthChange, ...] = ()) -> dict:
    """`placements_record` of the run `train` would start now: for a header printed first
    (and its errors, such as an unallowed p = 0, raised before anything starts)."""
    pacing = link_pacing(options, inventory, schedule)
    return placements_record(build_run_config(options, inventory, "preview", plan,
                                              pacing=pacing), pacing)


StartCallback = Callable[[str, Plan | None, dict], None]   # (strategy, plan, placements)


def plan_and_train(options: TrainOptions, inventory: Inventory, runs_dir: str, command: str,
                   *, plan_source: str | dict | None = None, store: str | None = None,
                   shape: ShapeSpec | None = None, schedule: tuple[BandwidthChange, ...] = (),
                   on_event: EventCallback = lambda e: None,
                   on_start: StartCallback = lambda strategy, plan, placements: None,
                   on_warning: Callable[[str], None] = lambda text: None,
                   on_progress: ProgressCallback = no_progress,
                   baselines: Sequence[str] = (),
                   calibrate: Callable[..., Calibration | None] | None = None,
                   on_calibrated: Callable[[Calibration], None] = lambda fit: None,
                   ) -> list[ComparedRun]:
    """`edgectl train`: shape the links for this run (when asked), plan a pipar run under
    that shaping (its links measured under it, or a profile stored for that very shape),
    tell `on_start` the plan and the placements (`on_progress` how profiling for it goes),
    then train; then each of `baselines` on the same work (edgectl/runs/compare.py). The
    shaping is undone however the runs end. Returns the runs, the main one first.
    `calibrate` (edgectl.runs.calibrate's `calibrate_for_training`, bound to this run; passed
    in, as that module trains through this one): called under that shaping before planning,
    with the shaping's `link_label` and what was applied (`shaping`, for its runs' records);
    `on_calibrated` hears the fit it returns."""
    keep = (ProfileStore.open(store, inventory.digest()), applied_label)
    with shaped(inventory, shape, probe=functools.partial(measure_links, keep=keep)) as applied:
        if calibrate is not None and (fit := calibrate(link_label=applied_label,
                                                       shaping=applied)) is not None:
            on_calibrated(fit)
        chosen = plan_for_training(options, inventory, plan_source, store,
                                   link_label=applied_label, warn=on_warning,
                                   on_progress=on_progress)
        runs = []
        for strategy in (options.strategy, *baselines):
            opts = options if strategy == options.strategy else \
                baseline_options(options, strategy)
            plan = None if strategy == "fl" else chosen   # split: the plan's split points
            placements = preview_placements(opts, inventory, plan, schedule)
            on_start(strategy, plan, placements)
            result = train(opts, inventory, runs_dir, command, on_event, plan=plan,
                           shaping=applied, schedule=schedule, store=store, shape=shape)
            runs.append(compared_run(strategy, placements, result.summary, result.run_dir))
        return runs


def train(options: TrainOptions, inventory: Inventory, runs_dir: str, command: str,
          on_event: EventCallback = lambda e: None, plan: Plan | None = None,
          shaping: Sequence[Shaped] = (),
          schedule: tuple[BandwidthChange, ...] = (), store: str | None = None,
          shape: ShapeSpec | None = None, resume: ResumePoint | None = None) -> TrainResult:
    """Run one training run on the fleet; returns the record's place and summary.

    `shaping` is what the caller shaped for this run (recorded; the caller undoes it; `shape`
    is what it was asked to shape, recorded in train_config);
    `schedule` changes rates during the run, undone however the run ends. With
    options.adapt, an `Adapter` re-plans between rounds from the profiles in `store`.
    `resume` continues an interrupted run from its checkpoint, in its own record."""
    # rounds wait for the coordinator when it re-plans or re-shapes between them: a change
    # at a round start lands before that round, however long shaping a slow host takes
    paced = options.adapt or any((c.at_round or 1) > 1 for c in schedule)
    pacing = link_pacing(options, inventory, schedule)
    if resume is not None:   # paced as the links are now: they may differ from the start's
        run, run_id = resume.run, resume.run.run_id
        run = dataclasses.replace(run, devices=pacing.applied_to(run.devices))
        record = RunRecord.reopen(resume.dir, resume.info)
        record.resume_from(resume.checkpoint.round + 1, resume.checkpoint.round,
                           resume.checkpoint.round_event)
        record.update(config={**record.info["config"], "devices": [
            asdict(d) for d in run.devices]}, placements={
            **record.info["placements"], "link_pacing": pacing.to_json()})
    else:
        run_id = new_run_id(options.strategy)
        run = device_init_on_server(build_run_config(options, inventory, run_id, plan, paced,
                                                     pacing), inventory, run_id)
        plan_json = plan.to_json() if plan else None
        record = RunRecord(runs_dir, run_id, {
            "command": command, "config": run.to_json(), "inventory": inventory.path,
            "inventory_digest": inventory.digest(),
            "hosts": [_host_record(h) for h in inventory.hosts],
            "plan": plan_json,
            "train_config": resolved_config(options, shape=str(shape) if shape else None,
                                            schedule=schedule_to_data(schedule) or None,
                                            plan=plan_json),
            "placements": placements_record(run, pacing)})
        if trace := churn_trace(options, inventory):
            record.update(churn=trace.to_data())
    profile = training_profile(options, inventory, store, link_label=applied_label) \
        if options.adapt else None

    def on_event_recorded(event: dict) -> None:
        record.append(event)
        on_event(event)
        changes.on_event(event)      # a round's bandwidth change first: the adapter plans for it
        if adapter:
            adapter.on_event(event)

    checkpoint = server_file(inventory, record.dir, run_id, "checkpoint")
    model = server_file(inventory, record.dir, run_id, "model")
    changes = ScheduleRunner(schedule, inventory, on_event_recorded)
    session = AgentSession(run, inventory, on_event_recorded, model_out=model,
                           server_settings={
                               "checkpoint_out": checkpoint,
                               "first_round": resume.checkpoint.round + 1 if resume else 1,
                               "init_model": checkpoint if resume else None},
                           rejoin_attempts=options.rejoin_attempts,
                           **_churn_settings(options, inventory, run))
    repace = pacing.repace(inventory)   # a schedule's round-start changes re-pace
    adapter = Adapter(run, profile, training_constraints(options, inventory),
                      _batches_per_round(options, plan), session.send_to_server,
                      on_event_recorded, repace) if profile else \
        Pacer(run, session.send_to_server, repace) if paced else None
    status, error = "failed", None
    try:
        record.update(shaping=[asdict(a) for a in shaping] or None)
        if options.init_from and resume is None:
            session.server_settings["init_model"] = _place_initial_model(
                options.init_from, inventory, record, run_id)
        session.start()
        changes.start()
        session.follow_until_done()
        if missed := fetch_from_server(inventory, model, record.model_path):
            record.update(model_fetch_error=missed)   # the run itself completed
        status = "completed"
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user (Ctrl-C)"
        raise
    except EdgectlError as e:
        error = str(e)
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        changes.stop()
        session.stop_all()
        _undo_schedule(changes, inventory, bool(shaping), record)
        events = read_events(record.dir)
        if any(e.get("type") == "checkpoint" for e in events) and \
                (missed := fetch_from_server(inventory, checkpoint, record.checkpoint_path)):
            record.update(checkpoint_fetch_error=missed)
        predicted = predicted_iteration(plan, events) \
            if options.strategy in ("pipar", "ecofed") else None
        summary = dataclasses.replace(summarize(events), predicted_iteration_s=predicted)
        record.finish(status, error=error, summary=summary.to_json())
    return TrainResult(run_id, str(record.dir), summary)


def _churn_settings(options: TrainOptions, inventory: Inventory, run: RunConfig) -> dict:
    """What AgentSession plays of a decentralized run's availability trace."""
    if not options.decentralized:
        return {}
    trace = churn_trace(options, inventory)
    return {"initial": set(run.strategy_options["initial"]),
            "churn": tuple((a.at_s, a.device, a.action) for a in trace.actions())
            if trace else ()}


def _place_initial_model(path: str, inventory: Inventory, record: RunRecord,
                         run_id: str) -> str:
    """--init-from: the model file where the server reads it (copied to a remote server's
    workdir), recorded in run.json. Its fit to the run was checked with the options
    (edgectl.runs.resume.check_initial_model); the server checks it against the dataset."""
    from agents.model_file import read_model_meta

    meta = read_model_meta(path)
    record.update(init_from={"path": os.path.abspath(path), "run_id": meta.run_id,
                             "rounds_completed": meta.rounds_completed})
    server = inventory.server
    if server.is_local:
        return os.path.abspath(path)
    remote = server_file(inventory, record.dir, run_id, "init")
    with HostSession(server) as s:
        s.put(path, remote)
    return remote

def predicted_iteration(plan: Plan | None, events: list[dict]) -> float | None:
    """What the run's plans predicted per mini-batch, as the summary measures it (its
    rounds' training time over their mini-batches): each round's predicted round time
    (the plan's; after a re-plan, the re-plan's) over the plan's mini-batches per round,
    averaged over the rounds that ran. None without a plan."""
    if plan is None:
        return None
    replanned = {e["round"]: e["predicted_new_round_s"] for e in events
                 if e.get("type") == "replan" and "predicted_new_round_s" in e}
    ran = sorted(e["round"] for e in events if e.get("type") == "round") or [1]
    per_round, current = [], plan.round_s
    for r in ran:
        current = replanned.get(r, current)
        per_round.append(current)
    return sum(per_round) / len(per_round) / max(plan.batches_per_round, 1)


def _batches_per_round(options: TrainOptions, plan: Plan | None) -> int:
    return options.max_batches or (plan.batches_per_round if plan else 100)


def _undo_schedule(changes: ScheduleRunner, inventory: Inventory, shaped_by_caller: bool,
                   record: RunRecord) -> None:
    """A schedule without --shape shaped links that nobody else will clear (with --shape,
    the caller's `shaped` clears them along with its own)."""
    if not changes.applied or shaped_by_caller:
        return
    from edgectl.network.shaping import shape_clear

    failed = [r.error for r in shape_clear(inventory) if not r.ok]
    if failed:
        record.update(shaping_clear_error=failed[0])


def _host_record(host: Host) -> dict:
    """A host as run.json records it: how it was reached, not its extra vars (secrets)."""
    return {"name": host.name, "role": host.role, "address": host.address, "port": host.port,
            "user": host.user, "connection": host.connection}


def server_file(inventory: Inventory, record_dir: os.PathLike, run_id: str, kind: str) -> str:
    """Where the server keeps the run's `kind` file ("model", "checkpoint", "init"): the
    record itself for a local server, else its workdir."""
    server = inventory.server
    if server.is_local:
        return os.path.join(record_dir, f"{kind}.safetensors")
    return f"{server.workdir.rstrip('/')}/runs/{run_id}.{kind}.safetensors"


def fetch_from_server(inventory: Inventory, remote: str, local: os.PathLike) -> str | None:
    """Copy a file from a remote server into the record; what went wrong, if anything."""
    server = inventory.server
    if server.is_local:
        return None
    try:
        with HostSession(server) as s:
            s.get(remote, str(local))
    except (EdgectlError, OSError) as e:
        return str(e) or type(e).__name__
    return None
