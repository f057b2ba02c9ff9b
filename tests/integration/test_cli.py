"""The CLI as a user meets it: help, version, models, one-line errors with their exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgectl import __version__
from edgectl.cli import app
from edgectl.errors import EXIT_CONFIG, EXIT_DATA, EXIT_USAGE

runner = CliRunner()


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_version_and_help_on_every_command():
    assert runner.invoke(app, ["--version"]).stdout.strip() == f"edgectl {__version__}"
    for args in ([], ["train"], ["models"], ["models", "show"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout


@pytest.mark.parametrize("model", ["vgg5", "vgg11", "vgg16", "resnet18", "mobilenetv2"])
@pytest.mark.parametrize("shape", ["1x28x28", "3x32x32"])
def test_models_show_every_model_at_both_shapes(model, shape):
    result = runner.invoke(app, ["models", "show", model, "--input", shape, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    points = data["split_points"]
    assert points[0]["p"] == 0 and points[0]["after_block"] == "input"
    assert points[0]["activation_bytes"] == 4 * math.prod(map(int, shape.split("x")))
    assert points[-1]["output_shape"] == [10]
    table = runner.invoke(app, ["models", "show", model, "--input", shape])
    assert table.exit_code == 0 and points[1]["after_block"] in table.stdout


def test_models_lists_the_zoo():
    result = runner.invoke(app, ["models"])
    assert result.stdout.split() == ["mobilenetv2", "resnet18", "vgg11", "vgg16", "vgg5"]


@pytest.mark.parametrize("args,expect", [
    (["models", "show", "vgg9"], "choose one of: mobilenetv2"),
    (["models", "show", "vgg5", "--input", "28x28"], "expected CxHxW"),
    (["models", "show", "vgg5", "--format", "xml"], "choose table or json"),
    (["train", "--strategy", "pipa"], "choose one of: dpsgd, ecofed, fl, pipar, plexus, split"),
    (["train", "--strategy", "plexus", "--split-point", "2"], "--split-point does not apply to "
                                                              "--strategy plexus"),
    (["train", "--strategy", "plexus", "--sample-size", "3"], "--sample-size 3 is more than the "
                                                              "fleet's 2 devices; give 1..2"),
    (["train", "--strategy", "dpsgd", "--topology", "star"], "give ring, or regular:K"),
    (["train", "--strategy", "fl", "--churn", "t.yaml"], "--churn applies to --strategy "
                                                         "plexus or dpsgd only"),
    (["train", "--strategy", "plexus", "--compare", "fl"], "--compare 'fl': choose among dpsgd"),
    (["train", "--model", "vgg9"], "--model 'vgg9' is unknown"),
    (["train", "--split-point", "9"], "choose 0..5"),
    (["train", "--microbatches", "0"], "--microbatches must be 1..32"),
    (["train", "--partition", "dirichlet:-1"], "dirichlet"),
    (["train", "--dataset", "imagenet"], "--dataset 'imagenet' is unknown"),
    (["train", "--rounds", "0"], "--rounds must be at least 1"),
    (["train", "--split-point", "0"], "raw samples would leave the devices; choose a split "
                                      "point of 1 or more, or add --allow-raw-upload"),
    (["train", "--strategy", "split", "--max-microbatches", "2"],
     "--max-microbatches limits what pipar's plan may choose; --strategy split makes no plan"),
    (["train", "--strategy", "fl", "--min-split-point", "2"], "--min-split-point limits"),
    (["train", "--compare", "pipar"], "--compare 'pipar': choose among fl, split"),
    (["train", "--strategy", "fl", "--split-point", "2"], "--split-point does not apply to "
                                                          "--strategy fl"),
    (["train", "--strategy", "split", "--microbatches", "4"], "--microbatches does not apply "
                                                              "to --strategy split"),
    (["train", "--compare", "fl,sl"], "--compare 'sl': choose among fl, split"),
    (["train", "--optimizer", "rmsprop"], "--optimizer 'rmsprop' is unknown; choose one of: "
                                          "sgd, adam, adamw"),
    (["train", "--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to "
                                                            "--optimizer sgd only"),
    (["train", "--lr-schedule", "poly"], "--lr-schedule 'poly' is unknown"),
    (["train", "--lr-gamma", "0.5"], "--lr-gamma applies to --lr-schedule step only"),
    (["train", "--lr-schedule", "cosine", "--lr-step-rounds", "2"], "--lr-step-rounds applies"),
    (["train", "--weight-decay", "-0.1"], "--weight-decay must be 0 or more"),
])
def test_bad_options_are_one_line_usage_errors(args, expect):
    assert expect in one_line_error(runner.invoke(app, args), EXIT_USAGE)


def test_an_unknown_trace_format_is_one_line_naming_the_format_to_write(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("device1,0,30\n")
    line = one_line_error(runner.invoke(app, ["train", "--strategy", "plexus", "--churn",
                                              str(trace)]), EXIT_CONFIG)
    assert "unknown availability trace format" in line
    assert "format: edgectl-availability/1" in line


def test_malformed_inventory_is_a_config_error_naming_the_yaml_path(tmp_path):
    inv = tmp_path / "inv.yaml"
    inv.write_text("all:\n  hosts:\n    pi1:\n      ansible_port: 22a\n      "
                   "edgectl_role: device\n    srv:\n      edgectl_role: server\n")
    line = one_line_error(runner.invoke(app, ["train", "--inventory", str(inv)]), EXIT_CONFIG)
    assert "all.hosts.pi1.ansible_port" in line and "22a" in line
    missing = one_line_error(runner.invoke(app, ["train", "--inventory", str(tmp_path / "no")]),
                             EXIT_CONFIG)
    assert "not found" in missing


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")
def test_missing_dataset_exits_with_the_data_code(tmp_path):
    result = runner.invoke(app, ["train", "--strategy", "fl", "--dataset", "cifar10",
                                 "--data-dir", str(tmp_path),
                                 "--runs-dir", str(tmp_path / "runs"), "--max-batches", "1"])
    assert "cifar10" in one_line_error(result, EXIT_DATA)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")
def test_train_through_the_installed_command(tmp_path):
    """The console entry point end to end, in a subprocess as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgectl", "train", "--strategy", "split", "--rounds", "1",
         "--max-batches", "3", "--eval-samples", "100", "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "run record:" in proc.stdout and "pipeline" in proc.stdout
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_compare_trains_the_baselines_on_the_same_work_and_puts_them_side_by_side(tmp_path):
    result = runner.invoke(app, ["train", "--strategy", "pipar", "--split-point", "2",
                                 "--microbatches", "2", "--rounds", "1", "--max-batches", "3",
                                 "--eval-samples", "100", "--runs-dir", str(tmp_path),
                                 "--compare", "fl,split"])
    assert result.exit_code == 0, result.output
    ran = {}
    for run_dir in tmp_path.iterdir():
        info = json.loads((run_dir / "run.json").read_text())
        ran[info["config"]["strategy"]] = {d["split_point"]: d["microbatches"]
                                           for d in info["config"]["devices"]}
        assert info["status"] == "completed" and info["config"]["seed"] == 0
    assert ran == {"pipar": {2: 2}, "split": {2: 1}, "fl": {5: 1}}
    assert "baseline fl, the same work:" in result.stdout
    assert "baseline split, the same work:" in result.stdout
    table = result.stdout[result.stdout.index("pipar against fl, split"):]
    assert all(f"  {s}  " in table for s in ("pipar", "fl", "split"))
    assert table.count("x\n") >= 2        # a speedup for each baseline


def test_a_closed_pipe_ends_quietly_and_a_run_still_completes(tmp_path):
    """`edgectl ... | head -1`: exit 141 (as a shell reports SIGPIPE), no traceback, and a
    run whose reader went away trains to its end with a complete record."""
    listing = subprocess.Popen([sys.executable, "-m", "edgectl", "models"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing.stdout.close()
    assert listing.wait(timeout=60) == 141 and listing.stderr.read() == b""
    train = subprocess.Popen([sys.executable, "-m", "edgectl", "train", "--strategy", "fl",
                              "--rounds", "1", "--max-batches", "2", "--eval-samples", "50",
                              "--runs-dir", str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    train.stdout.readline()
    train.stdout.close()
    assert train.wait(timeout=300) == 141, train.stderr.read()
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("args,key", [
    (["models"], "models"),
    (["models", "show", "vgg5"], "split_points"),
    (["testbed", "status", "--state-dir", "{tmp}"], "testbeds"),
    (["profile", "show", "--store", "{tmp}"], "records"),
    (["provision"], "hosts"),
    (["shape", "show"], "hosts"),
])
def test_data_commands_print_json_that_parses(args, key, tmp_path):
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args] + ["--format", "json"])
    assert result.exit_code == 0, result.output
    assert key in json.loads(result.stdout)


def test_train_and_report_print_json_on_stdout_and_human_text_on_stderr(tmp_path):
    trained = runner.invoke(app, ["train", "--strategy", "fl", "--rounds", "1",
                                  "--max-batches", "2", "--eval-samples", "50",
                                  "--runs-dir", str(tmp_path), "--format", "json"])
    assert trained.exit_code == 0, trained.output
    (run,) = json.loads(trained.stdout)["runs"]
    assert run["summary"] == json.loads((Path(run["run_dir"]) / "summary.json").read_text())
    assert "raw samples stay on the devices" in trained.stderr
    unpaced = "links not paced: no link of this fleet is shaped by edgectl"   # local fleet
    assert unpaced in trained.stderr
    assert [Path(f).name for f in run["report_files"]] == [   # train draws its figures
        "report.md", "timeline.png", "accuracy_vs_time.png", "busy_idle.png", "rounds.png"]
    assert all(Path(f).is_file() for f in run["report_files"])
    assert unpaced in Path(run["report_files"][0]).read_text()
    reported = runner.invoke(app, ["report", run["run_dir"], "--format", "json"])
    assert reported.exit_code == 0, reported.output
    assert all(Path(f).is_file() for f in json.loads(reported.stdout)["files"])


@pytest.mark.parametrize("args", [["--help"], ["train", "--strategy", "pipa"],
                                  ["train", "--model", "vgg9"], ["train", "--split-point", "0"],
                                  ["train", "--figure-format", "gif"],
                                  ["models", "show", "vgg9"]])
def test_help_and_usage_errors_answer_before_torch_is_imported(args):
    """torch takes 1-1.5 s to import here; a typo must not wait for it."""
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom edgectl.cli import app\n"
            f"CliRunner().invoke(app, {args!r})\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_eval_every_evaluates_every_kth_round_and_the_last(tmp_path):
    result = runner.invoke(app, ["train", "--strategy", "fl", "--rounds", "3",
                                 "--max-batches", "2", "--eval-samples", "50",
                                 "--eval-every", "2", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["accuracy"] is None for r in rounds] == [True, False, False]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert sorted(e["round"] for e in events if e.get("what") == "eval") == [2, 3]
    assert "test accuracy -" in result.stdout


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")
def test_training_from_a_runs_own_record_repeats_its_placement_and_first_round(tmp_path):
    """A run that followed a plan (different per device) with a non-default optimizer; then
    `--config` of its run.json: the same placements, the same first-round loss (same seed)."""
    from edgectl.planning.plans import DevicePlan, Plan
    from tests.record_schema import record_errors

    busy = dict.fromkeys(("device.compute", "uplink", "server.compute", "downlink"), 0.01)
    plan = Plan("vgg5", 5, 16, 2, (DevicePlan("device1", 1, 2, 0.05, busy, "uplink"),
                                   DevicePlan("device2", 3, 4, 0.05, busy, "uplink")),
                0.05, 0.2, 0.3, 0.25, 1.5, 1.2, 0.02, "uplink")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_json()))
    first = runner.invoke(app, ["train", "--plan", str(plan_file), "--batch-size", "16",
                                "--rounds", "2", "--max-batches", "2", "--eval-samples", "50",
                                "--optimizer", "adamw", "--lr", "0.001", "--lr-schedule",
                                "cosine", "--seed", "3", "--runs-dir", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    (original,) = (tmp_path / "a").iterdir()
    assert record_errors(original) == []
    again = runner.invoke(app, ["train", "--config", str(original / "run.json"),
                                "--rounds", "1", "--runs-dir", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    (repeat,) = (tmp_path / "b").iterdir()

    def record(run_dir):
        info = json.loads((run_dir / "run.json").read_text())
        first_round = json.loads((run_dir / "rounds.jsonl").read_text().splitlines()[0])
        return info, first_round

    (info_a, round_a), (info_b, round_b) = record(original), record(repeat)
    assert info_a["config"]["devices"] == info_b["config"]["devices"] == [
        {"name": "device1", "split_point": 1, "microbatches": 2, "pace_up_bps": None,
         "pace_down_bps": None},   # the local fleet's links are not shaped: not paced
        {"name": "device2", "split_point": 3, "microbatches": 4, "pace_up_bps": None,
         "pace_down_bps": None}]
    assert info_b["config"]["optimizer"] == "adamw" and info_b["config"]["rounds"] == 1
    assert info_b["train_config"]["plan"] == info_a["train_config"]["plan"]
    assert round_b["loss"] == pytest.approx(round_a["loss"], rel=1e-6)
    assert round_b["lr"] == round_a["lr"] == 0.001
