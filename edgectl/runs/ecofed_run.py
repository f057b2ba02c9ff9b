"""What an ecofed run needs checked and in place before any agent starts.

The server agent checks the same things again (agents.strategies.ecofed), but a user
should hear about a device-init file that does not fit the model, or a replay buffer over
its budget, as a usage error before anything starts, not as a failed run. The model file
travels to a remote server like the final model travels back (edgectl.runs.runner).
"""

from __future__ import annotations

import dataclasses
import os

from agents.config import RunConfig
from agents.dataset_catalog import dataset_shape
from agents.errors import AgentError
from edgectl.errors import UsageError
from edgectl.fleet.hosts import HostSession
from edgectl.fleet.inventory import Inventory


def checked_ecofed_run(run: RunConfig) -> RunConfig:
    """`run` with its device-init file's path made absolute, once the file fits the model
    and the replay buffers fit their budget (where --max-batches tells how much they keep;
    otherwise the server checks with the shards' sizes before round 1)."""
    from agents.strategies.ecofed import (
        check_replay_budget,
        device_init_state,
        fleet_split_point,
    )
    from partitions.zoo import build_model

    options = dict(run.strategy_options)
    try:
        p = fleet_split_point(run)
        shape = dataset_shape(run.dataset)
        model = build_model(run.model, *shape, batch_norm=run.batch_norm) if shape else None
        if options.get("device_init"):
            options["device_init"] = os.path.abspath(os.path.expanduser(options["device_init"]))
            if model is not None:
                device_init_state(options["device_init"], model, p)
        if model is not None and run.max_batches:
            check_replay_budget(model, run, {d.name: run.max_batches * run.batch_size
                                             for d in run.devices})
    except AgentError as e:
        raise UsageError(str(e)) from None
    return dataclasses.replace(run, strategy_options=options)


def device_init_on_server(run: RunConfig, inventory: Inventory, run_id: str) -> RunConfig:
    """`run` with its device-init file where the server agent reads it: the file itself for
    a local server, else a copy put in the server's workdir."""
    path = run.strategy_options.get("device_init")
    server = inventory.server
    if not path or server.is_local:
        return run
    remote = f"{server.workdir.rstrip('/')}/runs/{run_id}.device-init.safetensors"
    with HostSession(server) as s:
        s.put(path, remote)
    return dataclasses.replace(run, strategy_options={**run.strategy_options,
                                                      "device_init": remote})
