"""A bench spec's settings: its `sweep:` axes and `settings:` list, parsed into Settings.

    sweep:                        # axis -> values; every combination is a setting
      batch_size: [16, 32]
      testbed.cpu: [0.1, [0.05, 0.2]]
    settings:                     # explicit settings; each one is run with every sweep point
      - label: drop               # optional; default: its values, as key=value
        bandwidth_schedule: schedules/drop.yaml
        bandwidths: [{up: 25mbit, down: 25mbit}]   # strategies, models, bandwidths: replace
        rounds: 3                                  # the spec's lists for this setting
        adapt: true

An axis is a field of edgectl.runs.options.TrainOptions other than strategy and model, a
testbed key (`TESTBED_AXES`, which need a `testbed:` in the spec; each distinct testbed is
brought up once) or `bandwidth_schedule` (a schedule file relative to the spec, see
edgectl/network/schedule.py); ecofed's `device_init` and a decentralized run's `churn`
trace are paths relative to the spec too.
A key is either swept or set per setting, not both. Values are type-checked here, and every
setting's train options are built for every strategy and model it runs, so what
TrainOptions refuses is a ConfigError naming the key path before any testbed comes up.
bench_spec.py's docstring says how settings apply.
"""

from __future__ import annotations

import itertools
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgectl.errors import ConfigError, UsageError
from edgectl.runs.bench_spec import UNSHAPED, BenchSpec, Combination, Setting, TestbedRequest
from edgectl.runs.spec_checks import SpecChecker, known_models, known_strategies
from edgectl.yaml_text import show_value

SCHEDULE_KEY = "bandwidth_schedule"
TESTBED_AXES = ("testbed.devices", "testbed.cpu", "testbed.server_cpu", "testbed.link")
_OWN_KEYS = {"strategy": "strategies", "model": "models"}
_SETTING_KEYS = ("label", "strategies", "models", "bandwidths")


def option_types() -> dict[str, object]:
    """The train options an axis may set, with their types."""
    from edgectl.runs.options import TrainOptions

    return {k: t for k, t in typing.get_type_hints(TrainOptions).items() if k not in _OWN_KEYS}


def axis_names() -> tuple[str, ...]:
    return (*option_types(), *TESTBED_AXES, SCHEDULE_KEY)


@dataclass
class _Point:
    """A setting while it is parsed: its values and the YAML path each came from."""

    values: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)
    label: str = ""
    where: str = "sweep"
    lists: dict = field(default_factory=dict)   # its own strategies, models, bandwidths


def parse_settings(c: SpecChecker, top: Mapping, spec: BenchSpec,
                   base_dir: str | None) -> BenchSpec:
    """`spec` with the axes and settings of `top` (the spec's mapping), every setting's
    train options checked for every strategy and model it runs."""
    sweep = _sweep_points(c, top.get("sweep"))
    explicit = _explicit_points(c, top.get("settings"))
    points = [_join(c, e, s) for e in explicit for s in sweep]
    _unique_labels(c, points)
    checked: dict[tuple, str] = {}
    settings = tuple(_setting(c, p, spec, base_dir, checked) for p in points)
    axes = tuple(dict.fromkeys(k for p in points for k in p.values))
    spec = replace(spec, axes=axes, settings=settings)
    for point, setting in zip(points, settings, strict=True):
        _check_options(c, top, spec, point, setting)
    return spec


def check_value(c: SpecChecker, axis: str, value: object, where: str) -> object:
    """One value of an axis, normalized (lists as tuples, numbers of a float option as float)."""
    if axis == "testbed.devices":
        return c.testbed_devices(value, where)
    if axis == "testbed.cpu":
        return c.cores_list(value, where)
    if axis == "testbed.server_cpu":
        return c.optional_cores(value, where)
    if axis == "testbed.link":
        return c.optional_rate(value, where)
    if axis == SCHEDULE_KEY:
        if isinstance(value, str) and value.strip():
            return value
        raise c.expected(where, "the path of a bandwidth schedule file", value)
    return _typed(c, option_types()[axis], value, where)


def _typed(c: SpecChecker, hint: object, value: object, where: str) -> object:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(t for t in args if t is not type(None)) if optional else hint
    if value is None and optional:
        return None
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, int | float) and not isinstance(value, bool),
          str: isinstance(value, str) and bool(value.strip())}[base]
    if ok:
        return float(value) if base is float else value
    what = {bool: "true or false", int: "an integer", float: "a number",
            str: "a non-empty string"}[base]
    raise c.expected(where, what + (" or null" if optional else ""), value)


def _axis_mapping(c: SpecChecker, value: object, where: str, keys: tuple[str, ...]) -> Mapping:
    if isinstance(value, Mapping):
        for key in value:
            if key in _OWN_KEYS:
                raise c.error(f"{where}.{key}", f"not an axis; list them in {_OWN_KEYS[key]}:")
    return c.mapping(value, where, keys, unknown="unknown axis")


def _sweep_points(c: SpecChecker, value: object) -> list[_Point]:
    if value is None:
        return [_Point()]
    axes = _axis_mapping(c, value, "sweep", axis_names())
    lists = []
    for axis, values in axes.items():
        where = f"sweep.{axis}"
        if not isinstance(values, list) or not values:
            raise c.expected(where, "a non-empty list of values", values)
        checked = []
        for i, v in enumerate(values):
            checked.append(check_value(c, axis, v, f"{where}[{i}]"))
            if checked[-1] in checked[:-1]:
                raise c.error(f"{where}[{i}]", f"{show_value(v)} is listed twice")
        lists.append((axis, checked))
    points = []
    for picks in itertools.product(*(range(len(vs)) for _, vs in lists)):
        chosen = [(axis, vs[i], i, len(vs)) for (axis, vs), i in zip(lists, picks, strict=True)]
        points.append(_Point(
            values={a: v for a, v, _, _ in chosen},
            origins={a: f"sweep.{a}[{i}]" for a, _, i, _ in chosen},
            label=" ".join(f"{a}={_show(v)}" for a, v, _, n in chosen if n > 1)))
    return points


def _explicit_points(c: SpecChecker, value: object) -> list[_Point]:
    if value is None:
        return [_Point(where="")]
    if not isinstance(value, list) or not value:
        raise c.expected("settings", "a non-empty list of settings, each a mapping such as "
                         "{label: fast, batch_size: 64}", value)
    points = []
    for i, item in enumerate(value):
        where = f"settings[{i}]"
        entry = _axis_mapping(c, item, where, (*_SETTING_KEYS, *axis_names()))
        point = _Point(where=where)
        for key, v in entry.items():
            if key not in _SETTING_KEYS:
                point.values[key] = check_value(c, key, v, f"{where}.{key}")
                point.origins[key] = f"{where}.{key}"
        lists = {"strategies": lambda v, w: c.choices(v, w, known_strategies()),
                 "models": lambda v, w: c.choices(v, w, known_models()),
                 "bandwidths": c.bandwidths}
        point.lists = {k: check(entry[k], f"{where}.{k}") for k, check in lists.items()
                       if k in entry}
        label = entry.get("label")
        if label is not None and not (isinstance(label, str) and 0 < len(label.strip()) <= 64):
            raise c.expected(f"{where}.label", "a name of 1-64 characters", label)
        point.label = (label or " ".join(f"{k}={_show(v)}" for k, v in point.values.items())
                       or "base").strip()
        points.append(point)
    return points


def _join(c: SpecChecker, explicit: _Point, swept: _Point) -> _Point:
    for key in explicit.values:
        if key in swept.values:
            raise c.error(explicit.origins[key], f"sweep.{key} sweeps it too; a key is either "
                          "swept or set per setting")
    return _Point({**swept.values, **explicit.values}, {**swept.origins, **explicit.origins},
                  " ".join(t for t in (explicit.label, swept.label) if t),
                  explicit.where or swept.where, explicit.lists)


def _unique_labels(c: SpecChecker, points: list[_Point]) -> None:
    seen: dict[str, str] = {}
    for p in points:
        if p.label in seen and seen[p.label] != p.where:
            raise c.error(p.where, f"its label {show_value(p.label)} is also {seen[p.label]}'s; "
                          "give each setting a label of its own")
        seen.setdefault(p.label, p.where)


def _show(value: object) -> str:
    """A value in a setting's label."""
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and value.endswith((".yaml", ".yml")):
        return Path(value).stem
    return show_value(value).strip('"')


def _setting(c: SpecChecker, p: _Point, spec: BenchSpec, base_dir: str | None,
             checked: dict[tuple, str]) -> Setting:
    for key, what in (("device_init", "a model file's path relative to the spec's folder "
                                      "(README: EcoFed)"),
                      ("churn", "an availability trace's path relative to the spec's folder")):
        if p.values.get(key):   # a file beside the spec, like a schedule
            path = os.path.join(base_dir or ".", os.path.expanduser(p.values[key]))
            if not os.path.isfile(path):
                raise c.error(p.origins[key], f"no such file {path}; give {what}")
            p.values[key] = path
    testbed = _testbed(c, p, spec)
    schedule = None
    if SCHEDULE_KEY in p.values:
        schedule = _schedule(c, p, spec, testbed or spec.testbed, base_dir, checked)
    return Setting(label=p.label, values=tuple(p.values.items()), testbed=testbed,
                   schedule=schedule, strategies=p.lists.get("strategies"),
                   models=p.lists.get("models"), bandwidths=p.lists.get("bandwidths"))


def _testbed(c: SpecChecker, p: _Point, spec: BenchSpec) -> TestbedRequest | None:
    keys = [k for k in p.values if k in TESTBED_AXES]
    if not keys:
        return None
    if spec.testbed is None:
        instead = " instead of inventory:" if spec.inventory else ""
        raise c.error(p.origins[keys[0]], f"testbed axes need a testbed: in the spec{instead} "
                      "(the fleet the sweep brings up); add one, or drop this key")
    tb = replace(spec.testbed, **{k.removeprefix("testbed."): p.values[k] for k in keys})
    if "testbed.cpu" in p.origins:
        c.cores_per_device(tb.cpu, tb.devices, p.origins["testbed.cpu"])
    elif len(tb.cpu) not in (0, 1, tb.devices):
        raise c.error(p.origins["testbed.devices"], f"testbed.cpu gives {len(tb.cpu)} values, "
                      f"one per device; for {tb.devices} devices set testbed.cpu here too")
    return tb


def _schedule(c: SpecChecker, p: _Point, spec: BenchSpec, testbed: TestbedRequest | None,
              base_dir: str | None, checked: dict[tuple, str]) -> str:
    """The schedule file's path, its changes checked against the fleet's device names."""
    where = p.origins[SCHEDULE_KEY]
    path = os.path.join(base_dir or ".", os.path.expanduser(p.values[SCHEDULE_KEY]))
    key = (path, testbed)
    if key in checked:
        return checked[key]
    if not os.path.isfile(path):
        raise c.error(where, f"no such file {path}; give a schedule file's path relative to "
                      "the spec's folder")
    from edgectl.network.schedule import load_schedule

    try:
        load_schedule(path, _fleet_for_checks(spec, testbed))
    except ConfigError as e:
        raise c.error(where, str(e)) from None
    checked[key] = path
    return path


def _fleet_for_checks(spec: BenchSpec, testbed: TestbedRequest | None):
    """An inventory with the device names the setting's fleet will have."""
    from edgectl.fleet.inventory import Inventory, load_inventory, local_fleet
    from edgectl.network.testbed_spec import device_name

    if testbed is None:
        return load_inventory(spec.inventory)
    fleet = local_fleet(testbed.devices)
    return Inventory(None, (fleet.server, *(replace(h, name=device_name(i))
                                            for i, h in enumerate(fleet.devices, 1))))


def _check_options(c: SpecChecker, top: Mapping, spec: BenchSpec, p: _Point,
                   setting: Setting) -> None:
    for model in setting.models or spec.models:
        for strategy in setting.strategies or spec.strategies:
            try:
                spec.train_options(Combination(strategy, model, UNSHAPED, 0, setting))
            except UsageError as e:
                flag = re.search(r"--([a-z][a-z-]*)", str(e))
                key = flag.group(1).replace("-", "_") if flag else ""
                pipar = top.get("pipar") if strategy == "pipar" else None
                where = (p.origins.get(key)
                         or (f"pipar.{key}" if isinstance(pipar, Mapping)
                             and pipar.get(key) is not None else None)
                         or (key if key in top else p.where))
                context = f"{strategy} {model}" + (f", setting {p.label}" if p.label else "")
                raise c.error(where, f"{_spec_words(str(e), key)} ({context})") from None


def _spec_words(message: str, key: str) -> str:
    """An `edgectl train` usage error in the spec's terms: its keys, not its flags."""
    text = message.replace("add --allow-raw-upload", "set allow_raw_upload: true")
    text = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), text)
    return text.removeprefix(f"{key}: ")
