"""`edgectl profile --calibrate` and `train --calibrate`: the agents' overheads, fitted
from short real runs.

The fit is planning's (edgectl/planning/calibration.py explains it); the short pipar
rounds it fits are runs, started here.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgectl.fleet.inventory import Inventory
from edgectl.planning.calibration import Calibration, run_calibration
from edgectl.planning.fleet_plans import training_profile
from edgectl.planning.plans import Placement
from edgectl.planning.profiling import FleetProfile, LinkLabel
from edgectl.planning.progress import ProgressCallback, no_progress
from edgectl.planning.store import ProfileStore
from edgectl.runs.options import TrainOptions
from edgectl.runs.records import read_events
from edgectl.runs.runner import train

CALIBRATION_BATCHES = 12   # mini-batches of each calibration run (`profile`'s default)


def calibrate_fleet(inventory: Inventory, fleet: FleetProfile, store: ProfileStore,
                    dataset: str, batches: int, runs_dir: str,
                    on_progress: ProgressCallback = no_progress, *,
                    data_dir: str | None = None, command: str = "edgectl profile --calibrate",
                    shaping: Sequence = (),
                    link_pacing: bool = True) -> tuple[Calibration, FleetProfile]:
    """Train `batches` mini-batches at each reference placement on `dataset` (its files in
    `data_dir`, where it is not found by name), then fit and store the server's and every
    device's overheads; returns the fit and the calibrated fleet profile. `on_progress`
    hears each run start. Each run is recorded under `command`, with the `shaping` it ran
    under (what the caller applied; edgectl.network.shaping.Shaped), its links paced or
    not as `link_pacing` says (edgectl.runs.pacing), as the runs it calibrates for are."""
    def train_round(placement: Placement, batch_size: int) -> tuple[str, list[dict]]:
        options = TrainOptions(strategy="pipar", model=fleet.server.model, dataset=dataset,
                               data_dir=data_dir,
                               batch_size=batch_size, rounds=1, max_batches=batches,
                               split_point=placement.split_point,
                               microbatches=placement.microbatches, eval_samples=100,
                               link_pacing=link_pacing)
        result = train(options, inventory, runs_dir, command, shaping=shaping)
        return result.run_id, read_events(result.run_dir)

    return run_calibration(fleet, store, train_round, batches, on_progress)


def calibrate_for_training(options: TrainOptions, inventory: Inventory, store_root: str | None,
                           runs_dir: str, *, link_label: LinkLabel, shaping: Sequence = (),
                           command: str = "edgectl train --calibrate",
                           on_progress: ProgressCallback = no_progress) -> Calibration | None:
    """`train --calibrate`: calibrate the profiles a pipar run's plan is made from (profiling
    first where the store lacks them), unless the stored ones are calibrated already; the
    fit, or None when there was nothing to do. The calibration runs are recorded under
    `command` + "  # calibration", with the `shaping` the caller applied."""
    fleet = training_profile(options, inventory, store_root, link_label=link_label,
                             on_progress=on_progress)
    if all(p.task_overhead_s or p.byte_overhead_s for p in (fleet.server,
                                                           *fleet.devices.values())):
        return None   # every host calibrated (one re-measured since: calibrate them all)
    store = ProfileStore.open(store_root, inventory.digest())
    calibration, _ = calibrate_fleet(inventory, fleet, store, options.dataset,
                                     CALIBRATION_BATCHES, runs_dir, on_progress,
                                     data_dir=options.data_dir,
                                     command=f"{command}  # calibration", shaping=shaping,
                                     link_pacing=options.link_pacing)
    return calibration
