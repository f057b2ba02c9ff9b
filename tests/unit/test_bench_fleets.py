"""run_bench's fleets: one testbed per distinct testbed setting, each brought up once and
always taken down, on success, on an error and on Ctrl-C. The testbed, provisioning and
the runs themselves are fakes here (tests/testbed brings real testbeds up); what is tested
is the order of ups, runs and downs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edgectl.errors import FleetError
from edgectl.fleet import inventory as inventory_module
from edgectl.fleet import provision as provision_module
from edgectl.network import testbed as testbed_module
from edgectl.runs import bench
from edgectl.runs.bench_spec import BenchRun
from edgectl.runs.bench_spec_parse import parse_bench_spec

SPEC = {"strategies": ["fl", "pipar"], "repeats": 2, "rounds": 1, "max_batches": 1,
        "testbed": {"devices": 2, "cpu": 0.1},
        "settings": [{"label": "slow"}, {"label": "hetero", "testbed.cpu": [0.05, 0.2]},
                     {"label": "slow-lr", "lr": 0.05}]}


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple] = []

    def up(spec):
        seen.append(("up", spec.device_cpu))
        return SimpleNamespace(inventory_path=f"testbed-{spec.device_cpu}")

    def run_one(spec, combination, inventory, out, on_event, runs):
        seen.append(("run", combination.setting.label, combination.strategy, inventory.path))
        runs.append(BenchRun(combination, "failed", None, "fake run"))

    monkeypatch.setattr(testbed_module, "testbed_up", up)
    monkeypatch.setattr(testbed_module, "testbed_down",
                        lambda name, state_dir: seen.append(("down", name)))
    monkeypatch.setattr(provision_module, "provision",
                        lambda hosts, dp=False: seen.append(("provision", dp)) or [])
    monkeypatch.setattr(inventory_module, "load_inventory",
                        lambda path: inventory_module.Inventory(
                            path, inventory_module.local_fleet().hosts))
    monkeypatch.setattr(bench, "_run_one", run_one)
    return seen


def test_each_testbed_comes_up_once_for_all_its_runs_and_goes_down(calls, tmp_path):
    result = bench.run_bench(parse_bench_spec(SPEC, "spec.yaml"), tmp_path / "out")
    slow, hetero = "testbed-(0.1,)", "testbed-(0.05, 0.2)"
    assert calls == [
        ("up", (0.1,)), ("provision", False),
        *[("run", label, s, slow) for _ in range(2) for label in ("slow", "slow-lr")
          for s in ("fl", "pipar")],
        ("down", "bench"),
        ("up", (0.05, 0.2)), ("provision", False),
        *[("run", "hetero", s, hetero) for _ in range(2) for s in ("fl", "pipar")],
        ("down", "bench")]
    assert len(result.runs) == 12
    notes = json.loads((tmp_path / "out" / "bench.json").read_text())["notes"]
    assert any(n.startswith("- fleet of slow, slow-lr: testbed bench: 2 devices, CPU 0.1")
               for n in notes)
    assert any(n.startswith("- fleet of hetero: testbed bench: 2 devices, CPU 0.05, 0.2")
               for n in notes)


def test_ctrl_c_takes_the_testbed_down_and_keeps_what_finished(calls, monkeypatch, tmp_path):
    def interrupted(spec, combination, inventory, out, on_event, runs):
        if combination.strategy == "pipar":
            raise KeyboardInterrupt
        runs.append(BenchRun(combination, "failed", None, "fake run"))

    monkeypatch.setattr(bench, "_run_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(parse_bench_spec(SPEC, "spec.yaml"), tmp_path / "out")
    assert calls == [("up", (0.1,)), ("provision", False), ("down", "bench")]
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [r["combination"]["strategy"] for r in saved["runs"]] == ["fl"]


def test_a_testbed_that_will_not_come_up_ends_the_sweep_after_the_first_went_down(
        calls, monkeypatch, tmp_path):
    real_up = testbed_module.testbed_up

    def second_fails(spec):
        if len(spec.device_cpu) == 2:
            raise FleetError("cannot make namespace")
        return real_up(spec)

    monkeypatch.setattr(testbed_module, "testbed_up", second_fails)
    with pytest.raises(FleetError, match="cannot make namespace"):
        bench.run_bench(parse_bench_spec(SPEC, "spec.yaml"), tmp_path / "out")
    assert [c[0] for c in calls] == ["up", "provision", *["run"] * 8, "down"]
    assert (tmp_path / "out" / "report.md").is_file()


def test_a_sweep_with_dp_provisions_opacus_on_its_testbed(calls, tmp_path):
    spec = {**SPEC, "settings": [{"label": "plain", "batch_norm": False}],
            "sweep": {"dp": [False, True]}}
    bench.run_bench(parse_bench_spec(spec, "spec.yaml"), tmp_path / "out")
    assert calls[:2] == [("up", (0.1,)), ("provision", True)]


def test_a_failed_provisioning_still_takes_the_testbed_down(calls, monkeypatch, tmp_path):
    monkeypatch.setattr(provision_module, "provision",
                        lambda hosts, dp: [SimpleNamespace(ok=False, error="d1: no python")])
    with pytest.raises(FleetError, match="provisioning testbed bench failed: d1: no python"):
        bench.run_bench(parse_bench_spec(SPEC, "spec.yaml"), tmp_path / "out")
    assert calls == [("up", (0.1,)), ("down", "bench")]


def test_a_settings_schedule_and_values_reach_the_run_and_its_record(monkeypatch, tmp_path):
    from edgectl.planning import fleet_plans
    from edgectl.runs import runner

    (tmp_path / "drop.yaml").write_text("- {at_round: 1, up: 2mbit, down: 2mbit}\n")
    spec = parse_bench_spec({"strategies": ["fl", "pipar"], "rounds": 1, "settings": [
        {"label": "drop", "bandwidth_schedule": "drop.yaml", "microbatches": 2}]},
        "spec.yaml", base_dir=str(tmp_path))
    given = []

    def train(options, inventory, runs_dir, command, on_event, plan, shaping, schedule):
        given.append((options.strategy, options.microbatches, shaping, schedule))
        run_dir = tmp_path / "out" / "runs" / options.strategy
        run_dir.mkdir()
        (run_dir / "run.json").write_text("{}")
        return SimpleNamespace(run_dir=str(run_dir))

    monkeypatch.setattr(runner, "train", train)
    monkeypatch.setattr(fleet_plans, "plan_for_training", lambda *a, **k: None)
    monkeypatch.setattr(bench, "write_bench_outputs", lambda *a: [])
    result = bench.run_bench(spec, tmp_path / "out")
    assert [r.status for r in result.runs] == ["completed", "completed"]
    change = given[0][3][0]
    assert (change.at_round, change.up, change.down) == (1, "2mbit", "2mbit")
    assert [(s, n, shaping) for s, n, shaping, _ in given] == [("fl", None, []),
                                                               ("pipar", 2, [])]
    note = json.loads((tmp_path / "out" / "runs" / "fl" / "run.json").read_text())["bench"]
    assert note["setting"] == "drop" and note["not_applied"] == ["microbatches"]
    assert note["values"] == {"bandwidth_schedule": "drop.yaml", "microbatches": 2}
    assert note["bandwidth_schedule"] == str(tmp_path / "drop.yaml")
