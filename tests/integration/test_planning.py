"""Profiling, planning and a planned pipar run on the local fleet, through the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgectl.cli import app
from edgectl.fleet.inventory import LOCAL_FLEET_YAML
from edgectl.planning.planner import Plan
from profiles.records import ComputeProfile
from tests.record_schema import record_errors

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")
runner = CliRunner()


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """The local fleet profiled once at B = 16, never calibrated: (its store, what `edgectl
    profile` printed). Tests copy it rather than measure it again."""
    path = tmp_path_factory.mktemp("profiled")
    result = runner.invoke(app, ["profile", "--store", str(path), "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    return path, result


@pytest.fixture(scope="module")
def store(profiled, tmp_path_factory) -> str:
    """The module's store, a copy of `profiled` (its calibration test calibrates it)."""
    path = tmp_path_factory.mktemp("store") / "profiles"
    shutil.copytree(profiled[0], path)
    return str(path)


@pytest.fixture
def uncalibrated(profiled, tmp_path) -> Path:
    """A test's own copy of the profiled, uncalibrated store."""
    path = tmp_path / "store"
    shutil.copytree(profiled[0], path)
    return path


def test_profile_measures_every_host_and_link_then_reuses_them(profiled, store):
    first = profiled[1]
    assert "measured now: " in first.stdout
    for name in ("server compute", "device1 compute", "device2 compute", "device1 link"):
        assert name in first.stdout
    # progress on stderr while it measures: which host, which step, how long is left
    for said in ("profiling compute on server (host 1/3): starting",
                 "profiling compute on device2 (host 3/3): 26/26 block timings",
                 "profiling links of 2 device(s): 0/2 probed, about 8 s left",
                 "profiling links of 2 device(s): 2/2 probed"):
        assert said in first.stderr, first.stderr
    assert re.search(r"on device1 \(host 2/3\): \d+/26 block timings, about \d+ s left",
                     first.stderr), first.stderr
    again = runner.invoke(app, ["profile", "--store", store, "--batch-size", "16"])
    assert again.exit_code == 0 and "all reused from the profile store" in again.stdout
    shown = runner.invoke(app, ["profile", "show", "--store", store])
    assert shown.exit_code == 0 and shown.stdout.count("compute") >= 3
    as_json = runner.invoke(app, ["profile", "--store", store, "--batch-size", "16",
                                  "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)   # the profiles, as a script reads them
    records = json.loads(runner.invoke(app, ["profile", "show", "--store", store, "--format",
                                             "json"]).stdout)["records"]
    assert {r["kind"] for r in records} >= {"compute", "link"}


def test_calibration_trains_three_short_rounds_and_stores_the_servers_overheads(store, tmp_path):
    runs = tmp_path / "runs"
    done = runner.invoke(app, ["profile", "--store", store, "--batch-size", "16", "--calibrate",
                               "--calibration-batches", "4", "--runs-dir", str(runs)])
    assert done.exit_code == 0, done.output
    assert "every device at p=2 N=4 and p=4 N=4 and p=1 N=4" in done.stdout
    assert "calibrating: run 1/3 (p=2 N=4)\n" in done.stderr
    assert re.search(r"run 3/3 \(p=1 N=4\), about \d+ s left", done.stderr), done.stderr
    ran = sorted((d["split_point"], d["microbatches"]) for run in runs.iterdir()
                 for d in json.loads((run / "run.json").read_text())["config"]["devices"])
    assert ran == [(1, 4), (1, 4), (2, 4), (2, 4), (4, 4), (4, 4)]
    profiles = {p.host: p for p in (ComputeProfile.from_json(json.loads(path.read_text()))
                                    for path in Path(store).glob("*/compute/*/*.json"))}
    server = profiles["server"]
    tasks = 3 * 2 * 2 * 4  # runs * devices * mini-batches after the warm-up * micro-batches
    assert f"fitted over {tasks} tasks of runs " in done.stdout
    assert (f"calibrated: server {server.task_overhead_s * 1e3:+.2f} ms per task "
            f"{server.byte_overhead_s * 1e9:+.2f} ms per MB moved") in done.stdout
    assert server.byte_overhead_s >= 0.0
    for name in ("device1", "device2"):   # each device's agent, from its CPU time
        device = profiles[name]   # one thread, no quota: CPU seconds are its seconds
        assert (f"device {name}: {device.task_overhead_s * 1e3:+.2f} ms CPU per task "
                f"{device.byte_overhead_s * 1e9:+.2f} ms per MB, at 1 core (over 6 "
                "mini-batches)") in " ".join(done.stdout.split())


def test_train_calibrates_the_profiles_it_plans_from_once(uncalibrated, tmp_path):
    """`train --calibrate` on a store with no calibration: trains the three calibration
    rounds, plans from the calibrated profiles and trains; run again, it finds them
    calibrated and trains at once."""
    store, runs = str(uncalibrated), tmp_path / "runs"
    args = ["train", "--strategy", "pipar", "--calibrate", "--store", store, "--batch-size",
            "16", "--rounds", "1", "--max-batches", "3", "--eval-samples", "100",
            "--runs-dir", str(runs)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "calibrating: run 1/3 (p=2 N=4)" in first.stderr
    assert "calibrated: server " in first.stdout
    records = [json.loads((run / "run.json").read_text()) for run in sorted(runs.iterdir())]
    calibration = [r for r in records if r["command"].endswith("  # calibration")]
    server = next(ComputeProfile.from_json(json.loads(path.read_text()))
                  for path in Path(store).glob("*/compute/*/*.json")
                  if json.loads(path.read_text())["host"] == "server")
    assert server.task_overhead_s or server.byte_overhead_s
    planned = [r for r in records if r not in calibration]
    assert len(planned) == 1 and planned[0]["plan"] is not None
    assert records[-1] is planned[0]   # calibrated first, then planned and trained
    assert [r["command"] for r in calibration] == [planned[0]["command"] + "  # calibration"] * 3
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "calibrating:" not in second.stderr and "calibrated:" not in second.stdout
    assert len(list(runs.iterdir())) == 5   # the first's three calibration runs and two runs


@pytest.mark.parametrize(("extra", "why"), [
    (["--strategy", "fl"], "it trains fl"),
    (["--strategy", "pipar", "--split-point", "2", "--microbatches", "4"],
     "--split-point and --microbatches fix its placement"),
])
def test_calibrate_is_for_a_run_that_plans(extra, why):
    refused = runner.invoke(app, ["train", "--calibrate", *extra])
    assert refused.exit_code == 2, refused.output
    assert f"this run makes no pipar plan ({why})" in refused.output


def test_an_uncalibrated_plan_ignores_the_calibration_the_store_holds(uncalibrated):
    """A calibration (written into the stored compute profiles here, as calibrating does)
    changes the plan; `--uncalibrated` plans as if there were none."""
    def planned(*extra: str) -> dict:
        result = runner.invoke(app, ["plan", "--store", str(uncalibrated), "--batch-size",
                                     "16", "--format", "json", *extra])
        assert result.exit_code == 0, result.output
        assert "profiling" not in result.stderr   # every profile came from the store
        return json.loads(result.stdout)

    plain = planned()
    for path in uncalibrated.glob("*/compute/*/*.json"):
        data = json.loads(path.read_text())
        data.update(task_overhead_s=0.004, byte_overhead_s=2e-9)   # 4 ms a task, 2 ms a MB
        path.write_text(json.dumps(data))
    calibrated = planned()
    assert calibrated["round_s"] > plain["round_s"]
    assert planned("--uncalibrated") == plain


@pytest.mark.parametrize(("extra", "message"), [
    (["--strategy", "fl"], "--strategy fl makes no plan"),
    (["--strategy", "pipar", "--split-point", "2", "--microbatches", "4"],
     "this run's placement is fixed (--split-point and --microbatches)"),
    (["--strategy", "ecofed", "--split-point", "2"], "placement is fixed (--split-point)"),
    (["--strategy", "pipar", "--calibrate"], "choose one"),
])
def test_uncalibrated_is_for_a_run_that_plans(extra, message):
    refused = runner.invoke(app, ["train", "--uncalibrated", *extra])
    assert refused.exit_code == 2, refused.output
    assert message in " ".join(refused.output.split())


def test_calibrate_is_refused_beside_a_saved_plan(tmp_path):
    saved = tmp_path / "plan.json"
    saved.write_text("{}")
    refused = runner.invoke(app, ["train", "--strategy", "pipar", "--calibrate", "--plan",
                                  str(saved)])
    assert refused.exit_code == 2, refused.output
    assert "this run makes no pipar plan (it follows --plan)" in refused.output


def test_a_calibration_too_short_to_measure_is_refused(store):
    refused = runner.invoke(app, ["profile", "--store", store, "--calibrate",
                                  "--calibration-batches", "2"])
    assert refused.exit_code == 2 and "--calibration-batches 2" in refused.output


def test_plan_saves_a_plan_that_train_follows(store, tmp_path):
    saved = tmp_path / "plan.json"
    planned = runner.invoke(app, ["plan", "--store", store, "--batch-size", "16",
                                  "--save", str(saved)])
    assert planned.exit_code == 0, planned.output
    plan = Plan.from_json(json.loads(saved.read_text()))
    assert {d.device for d in plan.devices} == {"device1", "device2"}
    assert plan.round_s <= min(plan.fl_round_s, plan.split_round_s) + 1e-9
    runs = tmp_path / "runs"
    trained = runner.invoke(app, ["train", "--strategy", "pipar", "--plan", str(saved),
                                  "--batch-size", "16", "--rounds", "1", "--max-batches", "3",
                                  "--eval-samples", "100", "--runs-dir", str(runs)])
    assert trained.exit_code == 0, trained.output
    (run_dir,) = runs.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    ran = {d["name"]: (d["split_point"], d["microbatches"]) for d in info["config"]["devices"]}
    assert ran == {d.device: (d.split_point, d.microbatches) for d in plan.devices}
    assert info["plan"]["devices"] == plan.to_json()["devices"]


def test_a_plan_for_other_devices_is_refused(store, tmp_path):
    saved = tmp_path / "plan.json"
    assert runner.invoke(app, ["plan", "--store", store, "--batch-size", "16",
                               "--save", str(saved)]).exit_code == 0
    data = json.loads(saved.read_text())
    data["devices"][0]["device"] = "pi9"
    saved.write_text(json.dumps(data))
    result = runner.invoke(app, ["train", "--plan", str(saved), "--batch-size", "16"])
    assert result.exit_code == 3
    assert "run edgectl plan again" in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_default_plan_keeps_raw_data_on_the_devices_and_the_run_says_so(store, tmp_path):
    planned = runner.invoke(app, ["plan", "--store", store, "--batch-size", "16",
                                  "--format", "json"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.stdout)
    assert all(d["split_point"] >= 1 for d in plan["devices"])
    assert plan["raw_upload_devices"] == [] and plan["allow_raw_upload"] is False
    runs = tmp_path / "runs"
    trained = runner.invoke(app, ["train", "--strategy", "pipar", "--store", store,
                                  "--batch-size", "16", "--rounds", "1", "--max-batches", "3",
                                  "--eval-samples", "100", "--runs-dir", str(runs)])
    assert trained.exit_code == 0, trained.output
    assert "raw samples stay on the devices" in trained.stdout
    info = json.loads(next(runs.iterdir()).joinpath("run.json").read_text())
    placed = info["placements"]
    assert placed["raw_samples_left_devices"] is False and placed["raw_upload_allowed"] is False
    for d in placed["devices"]:
        assert d["split_point"] >= 1
        assert f"  {d['device']}: " in trained.stdout     # each device's mode, in words
    assert info["train_config"]["allow_raw_upload"] is False


def test_raw_upload_is_an_opt_in_and_the_record_says_it_happened(tmp_path):
    runs = tmp_path / "runs"
    trained = runner.invoke(app, ["train", "--strategy", "split", "--split-point", "0",
                                  "--allow-raw-upload", "--rounds", "1", "--max-batches", "2",
                                  "--eval-samples", "100", "--runs-dir", str(runs)])
    assert trained.exit_code == 0, trained.output
    assert "raw samples of device1, device2 go to the server (--allow-raw-upload)" in \
        trained.stdout
    info = json.loads(next(runs.iterdir()).joinpath("run.json").read_text())
    assert info["placements"]["raw_upload_devices"] == ["device1", "device2"]
    assert info["placements"]["raw_samples_left_devices"] is True
    assert info["config"]["allow_raw_upload"] is True


def test_plans_follow_the_command_lines_and_the_inventorys_pins(store, tmp_path):
    fixed = runner.invoke(app, ["plan", "--store", store, "--batch-size", "16",
                                "--split-point", "3", "--max-microbatches", "2",
                                "--format", "json"])
    assert fixed.exit_code == 0, fixed.output
    assert {(d["split_point"], d["microbatches"] <= 2)
            for d in json.loads(fixed.stdout)["devices"]} == {(3, True)}
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(LOCAL_FLEET_YAML.replace("        device1:\n",
                                               "        device1: {edgectl_split_point: 5}\n"))
    result = runner.invoke(app, ["plan", "--store", store, "--batch-size", "16",
                                 "--inventory", str(pinned), "--format", "json"])
    assert result.exit_code == 0, result.output
    device1 = json.loads(result.stdout)["devices"][0]
    assert (device1["device"], device1["split_point"], device1["mode"]) == ("device1", 5, "fl")
    refused = runner.invoke(app, ["plan", "--store", store, "--split-point", "0"])
    assert refused.exit_code == 3 and "--allow-raw-upload" in refused.stderr
    assert "profiling" not in refused.stderr   # refused before measuring (B 32: not stored)


def test_profile_prints_json_with_every_host_and_link(store):
    result = runner.invoke(app, ["profile", "--store", store, "--batch-size", "16",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["devices"]) == set(data["links"]) == {"device1", "device2"}
    assert ComputeProfile.from_json(data["server"]).host == "server"


def test_adapt_replans_every_round_and_the_server_runs_what_it_was_sent(store, tmp_path):
    runs = tmp_path / "runs"
    trained = runner.invoke(app, ["train", "--strategy", "pipar", "--adapt", "--store", store,
                                  "--batch-size", "16", "--rounds", "3", "--max-batches", "4",
                                  "--eval-samples", "100", "--runs-dir", str(runs)])
    assert trained.exit_code == 0, trained.output
    assert trained.stdout.count("re-plan for round ") == 2
    events = [json.loads(x) for x in next(runs.iterdir()).joinpath("events.jsonl")
              .read_text().splitlines()]
    rounds = [e for e in events if e["type"] == "round"]
    replans = [e for e in events if e["type"] == "replan"]
    assert [e["round"] for e in replans] == [2, 3]
    by_round = {e["round"]: e for e in rounds}
    for replan in replans:   # the coordinator's decision is what the server then ran
        ran = by_round[replan["round"]]["placements"]
        assert ran == replan["new"]
        assert replan["old"] == by_round[replan["round"] - 1]["placements"]
        assert all(p >= 1 for p, _ in replan["new"].values())   # raw data stays put
        assert replan["changed"] == (replan["new"] != replan["old"])
        assert replan["predicted_new_round_s"] > 0 and replan["reason"]
        assert set(replan["estimate"]["devices"]) == {"device1", "device2"}
    assert record_errors(next(runs.iterdir())) == []   # replan events have their schema


def test_adapt_applies_to_pipar_only_and_needs_something_left_to_choose():
    fl = runner.invoke(app, ["train", "--strategy", "fl", "--adapt"])
    assert fl.exit_code == 2 and "--strategy fl makes no plan" in fl.output
    fixed = runner.invoke(app, ["train", "--adapt", "--split-point", "2", "--microbatches", "2"])
    assert fixed.exit_code == 2 and "both are fixed; leave one out" in fixed.output


def test_a_calibrated_bench_setting_plans_from_calibrated_profiles(uncalibrated, tmp_path,
                                                                   monkeypatch):
    """A bench setting with `calibrate: true` (pipar only) calibrates the profiles the pipar
    run plans from, its three calibration runs kept apart from the sweep's."""
    from edgectl.runs.bench import run_bench
    from edgectl.runs.bench_spec_parse import load_bench_spec

    monkeypatch.setenv("EDGECTL_PROFILES", str(uncalibrated))   # the bench's default store
    spec = tmp_path / "calibrated.yaml"
    spec.write_text("strategies: [fl, pipar]\nbatch_size: 16\nrounds: 1\nmax_batches: 2\n"
                    "eval_samples: 50\nsettings: [{calibrate: true}]\n")
    result = run_bench(load_bench_spec(spec), tmp_path / "out")
    assert [(r.combination.strategy, r.status) for r in result.runs] == [
        ("fl", "completed"), ("pipar", "completed")], [r.error for r in result.runs]
    calibration = sorted((result.out_dir / "calibration").iterdir())
    commands = [json.loads((run / "run.json").read_text())["command"] for run in calibration]
    assert len(commands) == 3 and all(c.startswith(f"edgectl bench {spec}  # pipar ")
                                      and c.endswith("  # calibration") for c in commands)
    server = next(ComputeProfile.from_json(json.loads(path.read_text()))
                  for path in uncalibrated.glob("*/compute/*/*.json")
                  if json.loads(path.read_text())["host"] == "server")
    assert server.task_overhead_s or server.byte_overhead_s
    infos = [json.loads((result.out_dir / r.run_dir / "run.json").read_text())
             for r in result.runs]
    assert [i["plan"] is not None for i in infos] == [False, True]
    assert [i["bench"]["not_applied"] for i in infos] == [["calibrate"], []]
