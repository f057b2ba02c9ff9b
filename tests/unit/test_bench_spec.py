"""The bench spec: parsing, defaults, the sweep it expands to, and every error message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgectl.errors import ConfigError
from edgectl.runs.bench_spec import (
    UNSHAPED,
    Bandwidth,
    BenchRun,
    Combination,
    TestbedRequest,
)
from edgectl.runs.bench_spec_parse import load_bench_spec, parse_bench_spec

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"name": "sweep", "strategies": ["fl", "split", "pipar"], "models": ["vgg5"],
        "dataset": "fashion-mnist", "batch_size": 32, "rounds": 2, "max_batches": 20,
        "repeats": 2, "bandwidths": ["unshaped", {"up": "10mbit", "down": "10mbit"}],
        "pipar": {"split_point": None, "microbatches": None}, "eval_samples": 1000}


def parse(change: dict | None = None, drop: tuple[str, ...] = ()):
    data = {k: v for k, v in {**GOOD, **(change or {})}.items() if k not in drop}
    return parse_bench_spec(data, "spec.yaml")


def test_a_full_spec_parses_into_frozen_dataclasses():
    spec = parse()
    assert spec.name == "sweep" and spec.strategies == ("fl", "split", "pipar")
    assert spec.bandwidths == (UNSHAPED, Bandwidth("10mbit", "10mbit"))
    assert spec.testbed is None and spec.inventory is None
    assert spec.pipar.split_point is None and spec.pipar.microbatches is None
    with pytest.raises(AttributeError):
        spec.rounds = 3  # type: ignore[misc]


def test_combinations_cover_every_strategy_model_bandwidth_and_repeat():
    combos = parse().combinations()
    assert len(combos) == 3 * 1 * 2 * 2
    assert len(set(combos)) == len(combos)
    assert combos[0] == Combination("fl", "vgg5", UNSHAPED, 0)
    assert {c.bandwidth.label for c in combos} == {"unshaped", "10mbit"}
    assert {c.repeat for c in combos} == {0, 1}


def test_pipar_settings_reach_pipar_only():
    spec = parse({"pipar": {"split_point": 2, "microbatches": 4}})
    by = {c.strategy: spec.train_options(c) for c in spec.combinations()}
    assert (by["pipar"].split_point, by["pipar"].microbatches) == (2, 4)
    assert (by["split"].split_point, by["split"].microbatches) == (None, None)
    assert by["fl"].max_batches == 20 and by["fl"].eval_samples == 1000


def test_raw_upload_is_off_unless_the_spec_opts_in():
    default = parse_bench_spec(GOOD, "spec.yaml")
    assert not any(default.train_options(c).allow_raw_upload for c in default.combinations())
    allowed = parse_bench_spec({**GOOD, "allow_raw_upload": True}, "spec.yaml")
    assert all(allowed.train_options(c).allow_raw_upload for c in allowed.combinations())


def test_defaults_fill_everything_but_the_mapping():
    spec = parse_bench_spec({}, "x.yaml", default_name="x")
    assert spec.name == "x" and spec.bandwidths == (UNSHAPED,)
    assert spec.strategies == ("fl", "split", "pipar") and spec.repeats == 1


def test_bandwidth_labels_and_order():
    assert Bandwidth("10mbit", "10mbit").label == "10mbit"
    assert Bandwidth("10mbit", "5mbit").label == "up 10mbit down 5mbit"
    assert Bandwidth("10mbit", "5mbit").slug == "up-10mbit-down-5mbit"
    assert Bandwidth(up="1mbit").label == "up 1mbit"
    assert Bandwidth("10mbit", "500kbit").rate_bps == 500e3
    assert UNSHAPED.rate_bps > Bandwidth("10gbit", "10gbit").rate_bps


def test_testbed_is_validated_and_defaults_apply():
    spec = parse({"testbed": {"devices": 2, "cpu": [0.25], "server_cpu": None, "link": None}})
    assert spec.testbed == TestbedRequest(devices=2, cpu=(0.25,))
    one = parse({"testbed": {"devices": 3, "cpu": 0.5, "link": "20mbit", "name": "lab"}})
    assert one.testbed.cpu == (0.5,) and one.testbed.link == "20mbit"


def test_shipped_specs_load():
    small = load_bench_spec(ROOT / "bench" / "small.yaml")
    assert small.testbed is None and small.inventory is None
    assert small.strategies == ("fl", "pipar") and small.bandwidths == (UNSHAPED,)
    assert (small.pipar.split_point, small.pipar.microbatches) == (2, 2)
    example = load_bench_spec(ROOT / "bench" / "example.yaml")
    assert example.testbed.cpu == (0.25,) and example.testbed.devices == 2
    assert [b.label for b in example.bandwidths] == ["unshaped", "50mbit", "20mbit", "5mbit"]


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path, tmp_path):
    if path.name == "ecofed.yaml":   # it reads a device init made first (README: EcoFed)
        import shutil

        from safetensors.torch import save_file

        from partitions.zoo import build_model
        shutil.copy(path, tmp_path / path.name)
        path = tmp_path / path.name
        save_file(build_model("vgg5", (1, 28, 28), 10).state_dict(),
                  str(tmp_path / "ecofed-init.safetensors"))
    spec = load_bench_spec(path)
    assert spec.combinations()


def test_the_ecofed_spec_says_how_to_make_its_missing_device_init(tmp_path):
    spec = tmp_path / "ecofed.yaml"   # alone: a checkout may hold a device init beside it
    spec.write_text((ROOT / "bench" / "ecofed.yaml").read_text())
    with pytest.raises(ConfigError, match="settings.0..device_init: no such file .*"
                       "ecofed-init.safetensors; give a model file's path relative"):
        load_bench_spec(spec)


def test_the_paper_spec_is_the_regime_its_comment_describes():
    spec = load_bench_spec(ROOT / "bench" / "paper.yaml")
    combos = spec.combinations()
    assert len(combos) == 22  # the count its comment states
    assert spec.testbed.cpu == (0.1, 0.2) and spec.testbed.server_cpu == 1.0
    assert {c.model for c in combos} == {"vgg5", "vgg11", "resnet18", "mobilenetv2"}
    assert {spec.testbed_of(c.setting) for c in combos} == {spec.testbed}   # one testbed
    rates = {c.bandwidth.rate_bps for c in combos}
    assert min(rates) == 1e6 and max(rates) == 100e6
    drops = [c for c in combos if c.setting.schedule]
    assert {Path(c.setting.schedule).name for c in drops} == {"drop-25-to-2.yaml"}
    assert {(c.setting.label, spec.train_options(c).adapt) for c in drops
            if c.strategy == "pipar"} == {("drop-25-to-2", False), ("drop-25-to-2-adapt", True)}
    assert all(spec.train_options(c).rounds == 3 for c in drops)
    adapted = [c.strategy for c in drops if c.setting.label == "drop-25-to-2-adapt"]
    assert adapted == ["pipar"]   # its baselines are the fixed setting's


def test_inventory_path_resolves_beside_the_spec(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"inventory": "lab.yaml"}))
    spec = load_bench_spec(path)
    assert spec.inventory == str(tmp_path / "lab.yaml") and spec.name == "s"


def test_bench_run_round_trips_through_json():
    run = BenchRun(Combination("pipar", "vgg5", Bandwidth("5mbit", None), 1), "failed",
                   None, "boom", ({"device": "d1", "up": "5mbit"},))
    assert BenchRun.from_json(run.to_json()) == run


@pytest.mark.parametrize("change,message", [
    ({"bandwidths": ["unshaped", {"up": "fast"}]},
     'spec.yaml: bandwidths[1].up: expected a tc rate like 10mbit, 500kbit or 1gbit, '
     'got "fast"'),
    ({"bandwidths": [{"up": "10mbit", "down": 5}]},
     "spec.yaml: bandwidths[0].down: expected a tc rate like 10mbit, 500kbit or 1gbit, got 5"),
    ({"bandwidths": [{}]}, "spec.yaml: bandwidths[0]: give up, down or both (or write unshaped)"),
    ({"bandwidths": ["none"]},
     'spec.yaml: bandwidths[0]: expected unshaped or {up: RATE, down: RATE}, got "none"'),
    ({"bandwidths": [{"up": "1mbit", "delay": "5ms"}]},
     "spec.yaml: bandwidths[0].delay: unknown key; allowed: up, down"),
    ({"bandwidths": ["unshaped", "unshaped"]},
     "spec.yaml: bandwidths[1]: unshaped is listed twice"),
    ({"bandwidths": []}, "spec.yaml: bandwidths: expected a non-empty list of settings"),
    ({"strategies": ["fl", "fedavg"]},
     'spec.yaml: strategies[1]: expected one of fl, split, pipar, ecofed, plexus, dpsgd, '
     'got "fedavg"'),
    ({"strategies": ["fl", "fl"]}, 'spec.yaml: strategies[1]: "fl" is listed twice'),
    ({"strategies": "fl"}, 'spec.yaml: strategies: expected a non-empty list of fl, split, '
     'pipar, ecofed, plexus, dpsgd, got "fl"'),
    ({"models": ["vgg6"]}, 'spec.yaml: models[0]: expected one of mobilenetv2, resnet18, '
     'vgg11, vgg16, vgg5, got "vgg6"'),
    ({"dataset": "imagenet"}, 'spec.yaml: dataset: expected one of fashion-mnist, mnist, '
     'kmnist, cifar10, cifar100, folder:PATH, got "imagenet"'),
    ({"batch_size": 0}, "spec.yaml: batch_size: expected an integer >= 1, got 0"),
    ({"rounds": "2"}, 'spec.yaml: rounds: expected an integer >= 1, got "2"'),
    ({"rounds": True}, "spec.yaml: rounds: expected an integer >= 1, got true"),
    ({"max_batches": -1}, "spec.yaml: max_batches: expected an integer >= 0, got -1"),
    ({"repeats": 0}, "spec.yaml: repeats: expected an integer >= 1, got 0"),
    ({"eval_samples": 1.5}, "spec.yaml: eval_samples: expected an integer >= 0, got 1.5"),
    ({"allow_raw_upload": "yes"}, 'spec.yaml: allow_raw_upload: expected true or false, got "yes"'),
    ({"name": "a/b"}, 'spec.yaml: name: expected a folder name of letters, digits'),
    ({"strategy": ["fl"]}, "spec.yaml: strategy: unknown key; did you mean strategies?"),
    ({"pipar": {"split_point": 9}},
     "spec.yaml: pipar.split_point: expected an integer 0..5, got 9"),
    ({"pipar": {"microbatches": 64}},
     "spec.yaml: pipar.microbatches: expected an integer 1..32, got 64"),
    ({"pipar": {"micro_batches": 2}},
     "spec.yaml: pipar.micro_batches: unknown key; did you mean microbatches?"),
    ({"pipar": [2, 4]}, "spec.yaml: pipar: expected a mapping, got a list"),
    ({"inventory": "lab.yaml", "testbed": {"devices": 2}},
     "spec.yaml: testbed: give either inventory or testbed, not both"),
    ({"inventory": ""}, 'spec.yaml: inventory: expected a non-empty string or null, got ""'),
    ({"testbed": {"devices": 0}},
     "spec.yaml: testbed.devices: expected an integer 1..16, got 0"),
    ({"testbed": {"cpu": [0.25, "x"]}},
     'spec.yaml: testbed.cpu[1]: expected a number of CPU cores >= 0.01 like 0.25, got "x"'),
    ({"testbed": {"devices": 3, "cpu": [0.25, 0.5]}},
     "spec.yaml: testbed.cpu: expected one value or 3 (one per device), got 2"),
    ({"testbed": {"server_cpu": 0}},
     "spec.yaml: testbed.server_cpu: expected a number of CPU cores >= 0.01 like 0.25, got 0"),
    ({"testbed": {"link": "20mb"}},
     'spec.yaml: testbed.link: expected a tc rate like 10mbit, 500kbit or 1gbit, got "20mb"'),
    ({"testbed": {"name": "Lab-1"}}, 'spec.yaml: testbed.name: expected 1-8 of a-z, 0-9, '
     'got "Lab-1"'),
    ({"testbed": {"devices": 2, "cpus": [1]}},
     "spec.yaml: testbed.cpus: unknown key; did you mean cpu?"),
])
def test_every_bad_value_is_one_line_naming_path_value_and_what_is_allowed(change, message):
    with pytest.raises(ConfigError) as caught:
        parse(change)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_spec_that_is_no_mapping_is_refused():
    with pytest.raises(ConfigError, match="spec.yaml: expected a mapping of bench settings"):
        parse_bench_spec(["fl"], "spec.yaml")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: not found"):
        load_bench_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategies: [fl\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+: not valid YAML"):
        load_bench_spec(bad)
