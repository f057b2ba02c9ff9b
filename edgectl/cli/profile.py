"""`edgectl profile`, `profile show` and `plan`: measuring the fleet and planning from it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgectl.cli.common import (
    CLASSES_OPTION,
    DATASET_OPTION,
    FORMAT_OPTION,
    INPUT_OPTION,
    INVENTORY_OPTION,
    MODEL_OPTION,
    STORE_OPTION,
    ProgressLines,
    check_format,
    emit_json,
    err,
    errors_to_exit,
    human,
    out,
    selected,
)
from edgectl.errors import UsageError


def _profile_request(model, dataset, input_shape, classes, batch_size, refresh, probe_seconds):
    from edgectl.planning.profiling import request_for
    return request_for(model, dataset, input_shape, classes, batch_size, refresh=refresh,
                       probe_seconds=probe_seconds)


@errors_to_exit
def profile(ctx: typer.Context, inventory: Path = INVENTORY_OPTION, model: str = MODEL_OPTION,
            dataset: str = DATASET_OPTION, input_shape: str = INPUT_OPTION,
            classes: int = CLASSES_OPTION,
            batch_size: int = typer.Option(32, help="Largest batch size to time (B)."),
            refresh: bool = typer.Option(False, help="Measure again even if stored ones are "
                                         "fresh."),
            probe_seconds: float = typer.Option(2.0, help="Seconds per link direction (>= 2)."),
            calibrate: bool = typer.Option(False, help="Then train three short pipar rounds to "
                                           "measure the agents' per-task overheads."),
            calibration_batches: int = typer.Option(12, help="Mini-batches of that round."),
            runs_dir: Path = typer.Option(Path("runs"), help="Where its run record goes."),
            store: str = STORE_OPTION, fmt: str = FORMAT_OPTION) -> None:
    """Per-block forward/backward time on every host and each device's link, stored."""
    if ctx.invoked_subcommand is not None:
        return
    from edgectl.cli.views import profile_tables
    from edgectl.network.shaping_state import applied_label
    from edgectl.planning.profiling import profile_fleet
    from edgectl.planning.store import ProfileStore

    say = human(fmt)
    if calibrate and calibration_batches < 3:
        raise UsageError(f"--calibration-batches {calibration_batches}: give at least 3 "
                         "(the first 2 are warm-up)")
    fleet = selected(inventory, None)
    profiles = ProfileStore.open(store, fleet.digest())
    req = _profile_request(model, dataset, input_shape, classes, batch_size, refresh,
                           probe_seconds)
    progress = ProgressLines()
    result = profile_fleet(fleet, req, profiles, link_label=applied_label,
                           on_progress=progress)
    for warning in result.warnings:
        err.print(f"warning: {warning}", soft_wrap=True)
    if calibrate:
        from edgectl.planning.calibration import describe_calibration
        from edgectl.runs.calibrate import calibrate_fleet

        cal, result = calibrate_fleet(fleet, result, profiles, dataset, calibration_batches,
                                      str(runs_dir), on_progress=progress)
        say.print(f"calibrated: server {describe_calibration(cal)}", soft_wrap=True)
    if fmt == "json":
        emit_json({"devices": {n: p.to_json() for n, p in result.devices.items()},
                   "server": result.server.to_json(),
                   "links": {n: link.to_json() for n, link in result.links.items()},
                   "measured": result.measured})
    else:
        out.print(profile_tables(result, batch_size))


@errors_to_exit
def profile_show(inventory: Path = INVENTORY_OPTION, store: str = STORE_OPTION,
                 fmt: str = FORMAT_OPTION) -> None:
    """List the stored profile records of this inventory, with their age."""
    from edgectl.cli.views import stored_profiles_table
    from edgectl.planning.store import ProfileStore

    check_format(fmt)
    fleet = selected(inventory, None)
    records = ProfileStore.open(store, fleet.digest()).records()
    if fmt == "json":
        emit_json({"records": [{"file": str(path), **data} for path, data in records]})
    else:
        out.print(stored_profiles_table(records))


@errors_to_exit
def plan(inventory: Path = INVENTORY_OPTION, model: str = MODEL_OPTION,
         dataset: str = DATASET_OPTION, input_shape: str = INPUT_OPTION,
         classes: int = CLASSES_OPTION, batch_size: int = typer.Option(32, help="Batch size B."),
         batches_per_round: int = typer.Option(100, help="Mini-batches per round, over which "
                                               "the weight exchange is spread."),
         refresh: bool = typer.Option(False, help="Profile again first."),
         store: str = STORE_OPTION,
         fmt: str = FORMAT_OPTION,
         save: Path = typer.Option(None, help="Write the plan as JSON to this file."),
         allow_raw_upload: bool = typer.Option(False, "--allow-raw-upload", help="Let the "
                                               "plan choose split point 0 (raw samples to "
                                               "the server)."),
         split_point: int = typer.Option(None, help="Every device at this split point; N "
                                         "chosen."),
         microbatches: int = typer.Option(None, help="Every device at this N; p chosen."),
         min_split_point: int = typer.Option(None, help="The least split point to consider."),
         max_microbatches: int = typer.Option(None, help="The most micro-batches to "
                                              "consider."),
         uncalibrated: bool = typer.Option(False, "--uncalibrated", help="Plan from the "
                                           "profiles as measured, without the overheads a "
                                           "calibration stored in them.")) -> None:
    """Choose each device's split point and micro-batch count from the profiles."""
    from edgectl.cli.views import plan_table
    from edgectl.network.shaping_state import applied_label
    from edgectl.planning.fleet_plans import constraints_for, plan_fleet
    from edgectl.planning.store import ProfileStore

    if save and not save.parent.is_dir():   # before profiling, which may take minutes
        raise UsageError(f"--save {save}: the folder {save.parent} does not exist; create it "
                         "or save elsewhere")
    fleet = selected(inventory, None)
    req = _profile_request(model, dataset, input_shape, classes, batch_size, refresh, 2.0)
    constraints = constraints_for(fleet, allow_raw_upload=allow_raw_upload,
                                  split_point=split_point, microbatches=microbatches,
                                  min_split_point=min_split_point,
                                  max_microbatches=max_microbatches)
    chosen, profiled = plan_fleet(fleet, req, ProfileStore.open(store, fleet.digest()),
                                  batches_per_round, constraints, link_label=applied_label,
                                  on_progress=ProgressLines(), calibrated=not uncalibrated)
    for warning in profiled.warnings:
        err.print(f"warning: {warning}", soft_wrap=True)
    if save:
        save.write_text(json.dumps(chosen.to_json(), indent=1) + "\n")
    if check_format(fmt) == "json":
        out.print_json(json.dumps(chosen.to_json()))
    else:
        out.print(plan_table(chosen))
        out.print(chosen.describe())
