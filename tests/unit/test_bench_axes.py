"""The settings of a bench spec: `sweep:` axes and `settings:`, the combinations they expand to
(and their order), the options each strategy is given, and every error message."""

from __future__ import annotations

import json

import pytest
import yaml

from edgectl.errors import ConfigError
from edgectl.runs.bench_spec import (
    UNSHAPED,
    Bandwidth,
    BenchRun,
    Combination,
    Setting,
    TestbedRequest,
)
from edgectl.runs.bench_spec_parse import load_bench_spec, parse_bench_spec

BASE = {"strategies": ["fl", "split", "pipar"], "models": ["vgg5"], "batch_size": 32,
        "rounds": 1, "max_batches": 2, "eval_samples": 100}
TESTBED = {"testbed": {"devices": 2, "cpu": [0.1], "server_cpu": 1}}


def parse(change: dict | None = None, base_dir: str | None = None):
    return parse_bench_spec({**BASE, **(change or {})}, "spec.yaml", base_dir=base_dir)


def test_a_sweep_is_the_product_of_its_axes_and_labels_name_the_values_that_vary():
    spec = parse({"sweep": {"batch_size": [16, 32], "lr": [0.05], "microbatches": [2, 4]}})
    assert spec.axes == ("batch_size", "lr", "microbatches")
    assert [s.label for s in spec.settings] == [
        "batch_size=16 microbatches=2", "batch_size=16 microbatches=4",
        "batch_size=32 microbatches=2", "batch_size=32 microbatches=4"]
    assert spec.settings[1].values == (("batch_size", 16), ("lr", 0.05), ("microbatches", 4))
    assert len(spec.combinations()) == 4 * 3


def test_no_sweep_and_no_settings_is_one_plain_setting():
    spec = parse()
    assert spec.settings == (Setting(),) and spec.axes == ()
    assert [c.label for c in spec.combinations()] == [
        "fl vgg5 unshaped #0", "split vgg5 unshaped #0", "pipar vgg5 unshaped #0"]


def test_settings_are_explicit_points_each_run_with_every_sweep_point():
    spec = parse({"sweep": {"seed": [0, 1]},
                  "settings": [{"label": "plain"},
                               {"adapt": True, "strategies": ["pipar"], "models": ["vgg11"],
                                "bandwidths": [{"up": "5mbit", "down": "5mbit"}]}]})
    assert [s.label for s in spec.settings] == ["plain seed=0", "plain seed=1",
                                                "adapt=true seed=0", "adapt=true seed=1"]
    assert spec.axes == ("seed", "adapt")
    adapt = spec.settings[2]
    assert adapt.strategies == ("pipar",) and adapt.models == ("vgg11",)
    assert adapt.bandwidths == (Bandwidth("5mbit", "5mbit"),)
    assert [c.label for c in spec.combinations() if c.setting == adapt] == [
        "pipar vgg11 5mbit adapt=true seed=0 #0"]
    assert len(spec.combinations()) == 2 * 3 + 2 * 1


def test_repeats_are_interleaved_and_strategies_stay_side_by_side():
    spec = parse({"repeats": 2, "bandwidths": ["unshaped", {"up": "5mbit", "down": "5mbit"}],
                  "sweep": {"microbatches": [2, 4]}})
    combos = spec.combinations()
    assert len(combos) == 2 * 2 * 2 * 3
    assert [c.repeat for c in combos] == [0] * 12 + [1] * 12
    assert [c.strategy for c in combos[:3]] == ["fl", "split", "pipar"]
    first = combos[:12:3]
    assert [(c.setting.label, c.bandwidth.label) for c in first] == [
        ("microbatches=2", "unshaped"), ("microbatches=2", "5mbit"),
        ("microbatches=4", "unshaped"), ("microbatches=4", "5mbit")]


def test_settings_on_other_testbeds_are_grouped_so_each_comes_up_once():
    spec = parse({**TESTBED, "repeats": 2, "strategies": ["pipar"],
                  "settings": [{"label": "same"}, {"label": "hetero",
                                                   "testbed.cpu": [0.05, 0.2]},
                               {"label": "same-again", "lr": 0.05}]})
    base = TestbedRequest(devices=2, cpu=(0.1,), server_cpu=1.0)
    hetero = TestbedRequest(devices=2, cpu=(0.05, 0.2), server_cpu=1.0)
    assert [s.testbed for s in spec.settings] == [None, hetero, None]
    combos = spec.combinations()
    assert [(spec.testbed_of(c.setting), c.setting.label, c.repeat) for c in combos] == [
        (base, "same", 0), (base, "same-again", 0), (base, "same", 1), (base, "same-again", 1),
        (hetero, "hetero", 0), (hetero, "hetero", 1)]


def test_testbed_axes_change_the_testbed_they_need():
    spec = parse({**TESTBED, "sweep": {"testbed.devices": [1, 3], "testbed.link": ["50mbit"],
                                       "testbed.server_cpu": [None]}})
    assert [s.testbed for s in spec.settings] == [
        TestbedRequest(devices=n, cpu=(0.1,), link="50mbit") for n in (1, 3)]


def test_options_apply_only_to_the_strategies_that_take_them():
    spec = parse({"sweep": {"max_microbatches": [4], "split_point": [2], "adapt": [True],
                            "lr": [0.05]}})
    by = {c.strategy: c for c in spec.combinations()}
    fl, split, pipar = (spec.train_options(by[s]) for s in ("fl", "split", "pipar"))
    assert (fl.split_point, fl.max_microbatches, fl.adapt, fl.lr) == (None, None, False, 0.05)
    assert (split.split_point, split.max_microbatches, split.adapt) == (2, None, False)
    assert (pipar.split_point, pipar.max_microbatches, pipar.adapt) == (2, 4, True)
    assert spec.option_values(by["fl"])[1] == ("max_microbatches", "split_point", "adapt")
    assert spec.option_values(by["split"])[1] == ("max_microbatches", "adapt")
    assert spec.option_values(by["pipar"])[1] == ()
    fixed = parse({"sweep": {"microbatches": [4], "min_split_point": [1]}})
    by = {c.strategy: fixed.train_options(c) for c in fixed.combinations()}
    assert [(o.microbatches, o.min_split_point) for o in by.values()] == [
        (None, None), (None, None), (4, 1)]


def test_calibrate_reaches_the_planned_pipar_run_only():
    spec = parse({"settings": [{"label": "calibrated", "calibrate": True}]})
    by = {c.strategy: spec.train_options(c) for c in spec.combinations()}
    assert [(s, o.calibrate) for s, o in by.items()] == [
        ("fl", False), ("split", False), ("pipar", True)]


def test_uncalibrated_reaches_the_planned_pipar_run_only_and_not_beside_calibrate():
    spec = parse({"settings": [{"label": "plain", "uncalibrated": True},
                               {"label": "calibrated", "calibrate": True}]})
    chosen = [(c.setting.label, c.strategy, spec.train_options(c))
              for c in spec.combinations()]
    assert [(label, s, o.uncalibrated, o.calibrate) for label, s, o in chosen] == [
        ("plain", "fl", False, False), ("plain", "split", False, False),
        ("plain", "pipar", True, False), ("calibrated", "fl", False, False),
        ("calibrated", "split", False, False), ("calibrated", "pipar", False, True)]
    with pytest.raises(ConfigError, match=r"settings\[0\]\.uncalibrated: .*choose one"):
        parse({"settings": [{"uncalibrated": True, "calibrate": True}]})


def test_the_pipar_block_stays_pipar_only_and_a_setting_overrides_it():
    spec = parse({"pipar": {"split_point": 1, "microbatches": 2},
                  "settings": [{"label": "a"}, {"label": "b", "split_point": 3}]})
    options = {(c.setting.label, c.strategy): spec.train_options(c)
               for c in spec.combinations()}
    assert (options["a", "pipar"].split_point, options["a", "pipar"].microbatches) == (1, 2)
    assert options["a", "split"].split_point is None
    assert (options["b", "pipar"].split_point, options["b", "pipar"].microbatches) == (3, 2)
    assert options["b", "split"].split_point == 3


def test_a_bandwidth_schedule_resolves_beside_the_spec_and_is_checked(tmp_path):
    (tmp_path / "schedules").mkdir()
    (tmp_path / "schedules" / "drop.yaml").write_text(
        "- {at_round: 1, up: 2mbit, down: 2mbit}\n- {at_round: 2, hosts: [d2], up: 1mbit}\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, **TESTBED, "settings": [
        {"label": "drop", "bandwidth_schedule": "schedules/drop.yaml", "rounds": 3}]}))
    spec = load_bench_spec(path)
    (drop,) = spec.settings
    assert drop.schedule == str(tmp_path / "schedules" / "drop.yaml")
    assert dict(drop.values)["bandwidth_schedule"] == "schedules/drop.yaml"
    assert spec.train_options(spec.combinations()[0]).rounds == 3


def test_a_schedule_naming_a_device_the_fleet_lacks_is_refused(tmp_path):
    (tmp_path / "bad.yaml").write_text("- {at_round: 1, hosts: [d3], up: 2mbit}\n")
    with pytest.raises(ConfigError) as caught:
        parse({**TESTBED, "settings": [{"bandwidth_schedule": "bad.yaml"}]},
              base_dir=str(tmp_path))
    assert str(caught.value) == (
        f"spec.yaml: settings[0].bandwidth_schedule: {tmp_path / 'bad.yaml'}: [0].hosts: "
        'expected device names among d1, d2, got a list')


def test_setting_values_round_trip_through_json():
    spec = parse({**TESTBED, "settings": [{"label": "h", "testbed.cpu": [0.05, 0.2],
                                           "partition": "dirichlet:0.5",
                                           "bandwidths": [{"up": "5mbit"}]}]})
    run = BenchRun(Combination("pipar", "vgg5", Bandwidth("5mbit"), 1, spec.settings[0]),
                   "completed", "runs/x")
    data = run.to_json()
    assert data["combination"]["setting"]["values"] == {"testbed.cpu": [0.05, 0.2],
                                                        "partition": "dirichlet:0.5"}
    assert BenchRun.from_json(json.loads(json.dumps(data))) == run
    old = {"combination": {"strategy": "fl", "model": "vgg5", "bandwidth": {"up": None,
                                                                           "down": None},
                           "repeat": 0}, "status": "completed"}
    assert BenchRun.from_json(old).combination == Combination("fl", "vgg5", UNSHAPED, 0)


@pytest.mark.parametrize("change,message", [
    ({"sweep": {"batchsize": [16]}},
     "spec.yaml: sweep.batchsize: unknown axis; did you mean batch_size?"),
    ({"sweep": {"strategy": ["fl"]}},
     "spec.yaml: sweep.strategy: not an axis; list them in strategies:"),
    ({"sweep": [16, 32]}, "spec.yaml: sweep: expected a mapping, got a list"),
    ({"sweep": {"batch_size": 16}},
     "spec.yaml: sweep.batch_size: expected a non-empty list of values, got 16"),
    ({"sweep": {"batch_size": []}},
     "spec.yaml: sweep.batch_size: expected a non-empty list of values, got a list"),
    ({"sweep": {"batch_size": [16, "32"]}},
     'spec.yaml: sweep.batch_size[1]: expected an integer, got "32"'),
    ({"sweep": {"batch_size": [16, 16]}}, "spec.yaml: sweep.batch_size[1]: 16 is listed twice"),
    ({"sweep": {"lr": [True]}}, "spec.yaml: sweep.lr[0]: expected a number, got true"),
    ({"sweep": {"adapt": ["yes"]}}, 'spec.yaml: sweep.adapt[0]: expected true or false, '
     'got "yes"'),
    ({"sweep": {"split_point": ["2"]}},
     'spec.yaml: sweep.split_point[0]: expected an integer or null, got "2"'),
    ({"sweep": {"batch_size": [0]}},
     "spec.yaml: sweep.batch_size[0]: batch_size must be at least 1, got 0 (fl vgg5)"),
    ({"sweep": {"microbatches": [2, 64]}},
     "spec.yaml: sweep.microbatches[1]: microbatches must be 1..32 (the batch size), got 64 "
     "(pipar vgg5, setting microbatches=64)"),
    ({"sweep": {"batch_size": [4, 32]}, "pipar": {"microbatches": 8}},
     "spec.yaml: pipar.microbatches: microbatches must be 1..4 (the batch size), got 8 "
     "(pipar vgg5, setting batch_size=4)"),
    ({"sweep": {"split_point": [9]}},
     "spec.yaml: sweep.split_point[0]: split_point 9 is out of range for vgg5: choose 0..5 "
     "(0: all on the server, 5: all on the device) (split vgg5)"),
    ({"settings": [{"split_point": 0}]},
     "spec.yaml: settings[0].split_point: split_point 0 puts every block on the server, so "
     "raw samples would leave the devices; choose a split point of 1 or more, or set "
     "allow_raw_upload: true to allow it (split vgg5, setting split_point=0)"),
    ({"pipar": {"split_point": 2, "microbatches": 4}, "settings": [{"adapt": True}]},
     "spec.yaml: settings[0].adapt: adapt re-plans what split_point and microbatches leave "
     "open, and both are fixed; leave one out (pipar vgg5, setting adapt=true)"),
    ({"pipar": {"split_point": 2, "microbatches": 4}, "settings": [{"calibrate": True}]},
     "spec.yaml: settings[0].calibrate: calibrate calibrates the profiles a pipar plan is "
     "made from, and this run makes no pipar plan (split_point and microbatches fix its "
     "placement)"),
    ({"sweep": {"partition": ["skewed"]}},
     'spec.yaml: sweep.partition[0]: partition "skewed" is not valid'),
    ({"sweep": {"lr": [-1]}}, "spec.yaml: sweep.lr[0]: lr must be positive, got -1.0 (fl vgg5)"),
    ({"sweep": {"testbed.cpu": [0.1]}},
     "spec.yaml: sweep.testbed.cpu[0]: testbed axes need a testbed: in the spec (the fleet "
     "the sweep brings up); add one, or drop this key"),
    ({"inventory": "lab.yaml", "settings": [{"testbed.link": "5mbit"}]},
     "spec.yaml: settings[0].testbed.link: testbed axes need a testbed: in the spec instead of "
     "inventory: (the fleet the sweep brings up); add one, or drop this key"),
    ({**TESTBED, "sweep": {"testbed.cpu": [[0.1, 0.2, 0.3]]}},
     "spec.yaml: sweep.testbed.cpu[0]: expected one value or 2 (one per device), got 3"),
    ({**TESTBED, "sweep": {"testbed.cpu": ["fast"]}},
     'spec.yaml: sweep.testbed.cpu[0]: expected a number of CPU cores >= 0.01 like 0.25, '
     'got "fast"'),
    ({"testbed": {"cpu": [0.1, 0.2]}, "settings": [{"testbed.devices": 3}]},
     "spec.yaml: settings[0].testbed.devices: testbed.cpu gives 2 values, one per device; "
     "for 3 devices set testbed.cpu here too"),
    ({**TESTBED, "sweep": {"testbed.devices": [17]}},
     "spec.yaml: sweep.testbed.devices[0]: expected an integer 1..16, got 17"),
    ({**TESTBED, "sweep": {"testbed.link": ["fast"]}},
     'spec.yaml: sweep.testbed.link[0]: expected a tc rate like 10mbit, 500kbit or 1gbit, '
     'got "fast"'),
    ({"sweep": {"testbed.name": ["x"]}},
     "spec.yaml: sweep.testbed.name: unknown axis; did you mean testbed.link?"),
    ({"settings": {"adapt": True}},
     "spec.yaml: settings: expected a non-empty list of settings, each a mapping such as "
     "{label: fast, batch_size: 64}, got a mapping"),
    ({"settings": [{"label": "a"}, {"label": "a", "lr": 0.1}]},
     'spec.yaml: settings[1]: its label "a" is also settings[0]\'s; give each setting a label '
     "of its own"),
    ({"settings": [{}, {}]},
     'spec.yaml: settings[1]: its label "base" is also settings[0]\'s; give each setting a '
     "label of its own"),
    ({"settings": [{"label": ""}]},
     'spec.yaml: settings[0].label: expected a name of 1-64 characters, got ""'),
    ({"settings": [{"adaptive": True}]},
     "spec.yaml: settings[0].adaptive: unknown axis; did you mean adapt?"),
    ({"settings": [{"model": "vgg11"}]},
     "spec.yaml: settings[0].model: not an axis; list them in models:"),
    ({"settings": [{"models": ["vgg6"]}]},
     'spec.yaml: settings[0].models[0]: expected one of mobilenetv2, resnet18, vgg11, vgg16, '
     'vgg5, got "vgg6"'),
    ({"settings": [{"bandwidths": ["fast"]}]},
     'spec.yaml: settings[0].bandwidths[0]: expected unshaped or {up: RATE, down: RATE}, '
     'got "fast"'),
    ({"settings": [{"adapt": True}], "sweep": {"adapt": [False]}},
     "spec.yaml: settings[0].adapt: sweep.adapt sweeps it too; a key is either swept or set "
     "per setting"),
    ({"settings": [{"bandwidth_schedule": "missing.yaml"}]},
     "spec.yaml: settings[0].bandwidth_schedule: no such file ./missing.yaml; give a schedule "
     "file's path relative to the spec's folder"),
    ({"settings": [{"bandwidth_schedule": 5}]},
     "spec.yaml: settings[0].bandwidth_schedule: expected the path of a bandwidth schedule "
     "file, got 5"),
])
def test_every_bad_axis_or_setting_is_one_line_naming_the_key_path(change, message):
    with pytest.raises(ConfigError) as caught:
        parse(change)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
