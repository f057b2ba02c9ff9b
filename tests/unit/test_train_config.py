"""`edgectl train --config`: config files, a run's own record as one, and their errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgectl.cli import app
from edgectl.errors import ConfigError, UsageError
from edgectl.runs.options import TrainOptions
from edgectl.runs.train_config import load_train_config, resolved_config

runner = CliRunner()


def write(tmp_path, text: str, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_keys_are_spelt_as_on_the_command_line_and_checked_for_their_type(tmp_path):
    config = load_train_config(write(tmp_path, "strategy: split\nbatch-size: 16\nlr: 1\n"
                                     "weight_decay: 0.001\nshape: up=10mbit\n"))
    assert config == {"strategy": "split", "batch_size": 16, "lr": 1.0,
                      "weight_decay": 0.001, "shape": "up=10mbit"}
    assert isinstance(config["lr"], float)


@pytest.mark.parametrize(("text", "message"), [
    ("strategy: pipar\nbatchsize: 16\n", "'batchsize' is not a train option; the options are"),
    ("rounds: two\n", 'rounds: expected int, got "two"'),
    ("rounds: 2.5\n", "rounds: expected int, got 2.5"),
    ("batch-norm: 1\n", "batch-norm: expected bool, got 1"),
    ("split-point: true\n", "split-point: expected int or null, got true"),
    ("plan: 3\n", "plan: expected a saved plan's path, or the plan itself"),
    ("- strategy: fl\n", "expected a mapping of train options"),
])
def test_a_bad_config_is_a_one_line_error_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        load_train_config(write(tmp_path, text))
    assert "\n" not in str(e.value) and "config.yaml" in str(e.value)


def test_a_run_json_gives_its_train_config(tmp_path):
    recorded = resolved_config(TrainOptions(strategy="split", rounds=3), shape="up=5mbit",
                               schedule=[{"at_round": 2, "up": "1mbit"}])
    run = write(tmp_path, json.dumps({"run_id": "x", "versions": {}, "train_config": recorded}),
                "run.json")
    config = load_train_config(run)
    assert TrainOptions(**{k: v for k, v in config.items()
                           if k not in ("shape", "bandwidth_schedule", "plan")}) == \
        TrainOptions(strategy="split", rounds=3)
    assert config["bandwidth_schedule"] == [{"at_round": 2, "up": "1mbit"}]
    old = write(tmp_path, json.dumps({"run_id": "x", "versions": {}}), "old.json")
    with pytest.raises(ConfigError, match="has no train_config"):
        load_train_config(old)


def one_line_error(result) -> str:
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code in (2, 3) and len(lines) == 1, result.output   # usage, config
    return lines[0]


def test_the_command_line_overrides_the_file(tmp_path):
    """Both halves reach the options: the file's optimizer with the command line's momentum,
    and the command line's optimizer with the file's momentum, are each refused."""
    path = write(tmp_path, "optimizer: adam\nrounds: 3\n")
    line = one_line_error(runner.invoke(app, ["train", "--config", str(path), "--momentum",
                                              "0.5"]))
    assert "--momentum applies to --optimizer sgd only" in line
    path = write(tmp_path, "momentum: 0.5\nrounds: 0\n")
    line = one_line_error(runner.invoke(app, ["train", "--config", str(path), "--optimizer",
                                              "adam", "--rounds", "2"]))
    assert "--momentum applies to --optimizer sgd only" in line
    line = one_line_error(runner.invoke(app, ["train", "--config", str(path)]))
    assert "--rounds must be at least 1" in line


def test_a_missing_config_file_says_what_to_pass(tmp_path):
    line = one_line_error(runner.invoke(app, ["train", "--config", str(tmp_path / "no.yaml")]))
    assert "not found; pass --config with an existing YAML file" in line


def test_a_calibrated_run_is_recorded_as_following_its_plan():
    """The plan it calibrated for is in the record, so replaying it follows that plan and
    calibrates nothing (--calibrate beside --plan is refused)."""
    options = TrainOptions(strategy="pipar", calibrate=True)
    assert resolved_config(options, plan={"placements": {}})["calibrate"] is False
    assert resolved_config(options)["calibrate"] is True


@pytest.mark.parametrize("options", [
    {"strategy": "split"},
    {"strategy": "pipar", "split_point": 2, "microbatches": 4},
])
def test_calibrate_is_refused_where_no_plan_is_made(options):
    with pytest.raises(UsageError, match="--calibrate calibrates the profiles a pipar plan"):
        TrainOptions(calibrate=True, **options)
