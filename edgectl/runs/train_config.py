"""`edgectl train --config FILE`: the train options as a YAML file, and a run's own record.

A config file is a YAML mapping whose keys are `edgectl train`'s options, spelt as on the
command line without the dashes (`batch-size` or `batch_size`), with the same meaning:

    strategy: pipar
    model: vgg5
    rounds: 4
    batch-size: 32
    optimizer: adamw
    lr-schedule: cosine
    shape: up=10mbit,down=25mbit
    bandwidth-schedule: bench/schedules/drop-25-to-2.yaml   # a path, or the list inline
    plan: plan.json                                          # a path, or the plan inline

Every run writes the options it resolved as `train_config` in its run.json, in this same
form (with the plan it followed and its bandwidth schedule inline), and `--config` accepts a
run.json too, taking its `train_config`: so training from a run's own record repeats its
placement and, with the same seed, its first round. Options on the command line override
the file's. Where the run is written, which inventory and which profile store are not
part of a config: they say where, not what. Paths in a config mean what they mean on the
command line (relative to the working directory; data_dir is a path on each host).
"""

from __future__ import annotations

import dataclasses
import os
import typing

from edgectl.errors import ConfigError
from edgectl.runs.options import TrainOptions
from edgectl.yaml_text import read_yaml, show_value

# keys of a config that are not TrainOptions fields: what they hold
EXTRA_KEYS = {"shape": "a --shape text like up=10mbit,down=25mbit",
              "bandwidth_schedule": "a schedule file's path, or its list of changes",
              "plan": "a saved plan's path, or the plan itself",
              "compare": "strategies to run after it on the same work, like fl,split"}


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainOptions)] + list(EXTRA_KEYS)


def load_train_config(path: str | os.PathLike) -> dict:
    """The options in a config file (or a run.json's train_config), keys in their Python
    spelling (batch_size), each checked for its type; a one-line ConfigError otherwise."""
    data = read_yaml(path, "pass --config with an existing YAML file (or a run's run.json)")
    where = os.fspath(path)
    if isinstance(data, dict) and "run_id" in data and "versions" in data:   # a run.json
        if not isinstance(data.get("train_config"), dict):
            raise ConfigError(f"{where}: this run record has no train_config (written by an "
                              "older edgectl); write a config file from its config instead")
        data, where = data["train_config"], f"{where}: train_config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of train options such as "
                          "{strategy: pipar, rounds: 4}, got " + show_value(data))
    config, keys, kinds = {}, config_keys(), typing.get_type_hints(TrainOptions)
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in keys:
            raise ConfigError(f"{where}: {key!r} is not a train option; the options are "
                              f"{', '.join(k.replace('_', '-') for k in keys)}")
        config[name] = _checked(name, value, where, kinds.get(name))
    return config


def _checked(name: str, value: object, where: str, kind: object) -> object:
    """The value when it has the option's type (an int where a float goes is fine)."""
    if name in EXTRA_KEYS:
        fits = value is None or isinstance(value, str) or (
            name in ("plan", "bandwidth_schedule") and isinstance(value, dict | list))
        expected = EXTRA_KEYS[name]
    else:
        allowed = sorted(typing.get_args(kind) or (kind,), key=lambda t: t is type(None))
        fits = any(_is(value, t) for t in allowed)
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        if fits and float in allowed and isinstance(value, int):
            value = float(value)
    if not fits:
        raise ConfigError(f"{where}: {name.replace('_', '-')}: expected {expected}, got "
                          f"{show_value(value)}")
    return value


def _is(value: object, kind: type) -> bool:
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def resolved_config(options: TrainOptions, *, shape: str | None = None,
                    schedule: list[dict] | None = None, plan: dict | None = None) -> dict:
    """What run.json records as train_config: every option as resolved, and the plan and
    schedule inline, so `--config run.json` needs nothing but the record."""
    return {**dataclasses.asdict(options), "shape": shape, "bandwidth_schedule": schedule,
            "plan": plan,
            # the plan it calibrated for (or planned uncalibrated) is recorded: following it
            # needs neither again, and a run that follows a plan takes neither option
            "calibrate": options.calibrate and plan is None,
            "uncalibrated": options.uncalibrated and plan is None}
