"""Plans made from the fleet's profiles: `edgectl plan`, and the plan a train run follows.

`plan_fleet` profiles what the store lacks (edgectl.planning.profiling) and plans;
`constraints_for` turns options and inventory pins into what a plan may choose;
`plan_for_training` is a pipar run's plan (a saved one, or one made now); `load_plan`
reads a saved plan (a file, or the plan a config holds inline) and checks it against the
inventory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from edgectl.errors import ConfigError
from edgectl.fleet.inventory import Inventory
from edgectl.planning.plans import Constraints
from edgectl.planning.profiling import (
    FleetProfile,
    LinkLabel,
    ProfileRequest,
    profile_fleet,
    request_for,
)
from edgectl.planning.progress import ProgressCallback, no_progress
from edgectl.planning.store import ProfileStore


def plan_fleet(inventory: Inventory, req: ProfileRequest, store: ProfileStore,
               batches_per_round: int, constraints: Constraints = Constraints(), *,
               link_label: LinkLabel, on_progress: ProgressCallback = no_progress,
               planner: Callable | None = None, calibrated: bool = True):
    """Profile what is missing (telling `on_progress`), then plan with `planner` (pipar's
    by default; its arguments are edgectl.planning.planner.plan's): returns (Plan,
    FleetProfile). `calibrated=False` plans from the profiles as measured, without the
    overheads a calibration stored in them."""
    from edgectl.planning.planner import check_pins, plan
    from partitions.catalog import catalog_block_count

    check_pins(constraints, [h.name for h in inventory.devices],
               catalog_block_count(req.model), req.batch_size)   # before minutes of profiling
    fleet = profile_fleet(inventory, req, store, link_label=link_label,
                          on_progress=on_progress)
    if not calibrated:
        fleet = fleet.plain()
    return (planner or plan)(fleet.devices, fleet.server, fleet.links, req.batch_size,
                             batches_per_round, constraints=constraints), fleet


def constraints_for(inventory: Inventory, *, allow_raw_upload: bool = False,
                    split_point: int | None = None, microbatches: int | None = None,
                    min_split_point: int | None = None,
                    max_microbatches: int | None = None) -> Constraints:
    """What a plan may choose: the options given, and each device's pins in the inventory
    (edgectl_split_point, edgectl_microbatches)."""
    pins = tuple((h.name, h.split_point, h.microbatches) for h in inventory.devices
                 if h.split_point is not None or h.microbatches is not None)
    return Constraints(allow_raw_upload=allow_raw_upload, split_point=split_point,
                       microbatches=microbatches, min_split_point=min_split_point or 0,
                       max_microbatches=max_microbatches or 16, pins=pins)


def load_plan(source: str | dict, inventory: Inventory):
    """A saved plan (a file's path, or its data as a config holds it), checked against the
    inventory's devices."""
    from edgectl.planning.planner import Plan

    path = "the config's plan" if isinstance(source, dict) else source
    try:
        data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the plan: {e.strerror}") from e
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON: {e}") from e
    chosen = Plan.from_json(data)
    planned = {d.device for d in chosen.devices}
    wanted = {h.name for h in inventory.devices}
    if planned != wanted:
        raise ConfigError(f"{path}: the plan is for devices {', '.join(sorted(planned))} but "
                          f"the inventory has {', '.join(sorted(wanted))}; run edgectl plan "
                          "again for this inventory")
    return chosen


def plan_for_training(options, inventory: Inventory, plan_source: str | dict | None,
                      store_root: str | None, *, link_label: LinkLabel,
                      warn: Callable[[str], None] = lambda text: None,
                      on_progress: ProgressCallback = no_progress):
    """The plan a pipar or ecofed run follows: a saved one, or one made now from the profile
    store (profiling first where a profile is missing or stale) within the options' and the
    inventory's constraints. None for other strategies, and when the user fixed what the
    plan would choose (pipar: --split-point and --microbatches; ecofed: --split-point).
    `warn` hears what made the profiles doubtful, `on_progress` how profiling goes."""
    if options.strategy not in ("pipar", "ecofed"):
        return None
    if plan_source:
        return load_plan(plan_source, inventory)
    if options.split_point is not None and (options.microbatches is not None
                                            or options.strategy == "ecofed"):
        return None
    req = request_for(options.model, options.dataset, None, None, options.batch_size)
    chosen, profiled = plan_fleet(
        inventory, req, ProfileStore.open(store_root, inventory.digest()),
        options.max_batches or 100, training_constraints(options, inventory),
        link_label=link_label, on_progress=on_progress, planner=_ecofed_planner(options),
        calibrated=not options.uncalibrated)
    for warning in profiled.warnings:
        warn(warning)
    return chosen


def training_constraints(options, inventory: Inventory) -> Constraints:
    """What a train run's plans may choose: its options' limits and the inventory's pins."""
    return constraints_for(
        inventory, allow_raw_upload=options.allow_raw_upload, split_point=options.split_point,
        microbatches=options.microbatches, min_split_point=options.min_split_point,
        max_microbatches=options.max_microbatches)


def training_profile(options, inventory: Inventory, store_root: str | None, *,
                     link_label: LinkLabel,
                     on_progress: ProgressCallback = no_progress) -> FleetProfile:
    """The fleet's profiles for a train run's model and batch size (measured where the
    store lacks them, `on_progress` hearing how that goes): what an adaptive run re-plans
    from, and what `train --calibrate` calibrates (`--uncalibrated`: as measured, without
    a stored calibration's overheads)."""
    req = request_for(options.model, options.dataset, None, None, options.batch_size)
    fleet = profile_fleet(inventory, req, ProfileStore.open(store_root, inventory.digest()),
                          link_label=link_label, on_progress=on_progress)
    return fleet.plain() if options.uncalibrated else fleet


def _ecofed_planner(options) -> Callable | None:
    """An ecofed run's planner (edgectl.planning.ecofed_plan) for its replay period and
    quantization; None for the other strategies."""
    if options.strategy != "ecofed":
        return None
    import functools

    from agents.quantize import bytes_per_value
    from edgectl.planning.ecofed_plan import plan_ecofed

    eco = options.ecofed_options()
    return functools.partial(plan_ecofed, replay_period=eco["replay_period"],
                             uplink_ratio=bytes_per_value(eco["quantize"]) / 4)
