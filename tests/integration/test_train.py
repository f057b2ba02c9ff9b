"""Real training on the local fleet: agents as processes, real sockets, real Fashion-MNIST."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from edgectl.errors import DataError, RunFailed
from edgectl.fleet.inventory import local_fleet
from edgectl.runs.options import TrainOptions
from edgectl.runs.runner import train
from tests.record_schema import record_errors

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")

# No batch-norm, so micro-batching cannot change the math; uneven micro-batches (16 = 6+5+5).
# Weight decay and a per-round rate schedule must be the same on every part of the model.
EXACT = {"model": "vgg5", "batch_norm": False, "rounds": 2, "max_batches": 2, "batch_size": 16,
         "lr": 0.05, "eval_samples": 200, "weight_decay": 0.01, "lr_schedule": "step",
         "lr_gamma": 0.5}


@pytest.fixture(scope="module")
def exact_runs(tmp_path_factory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("runs")
    dirs = {}
    for strategy, p, n in (("fl", None, None), ("split", 2, None), ("pipar", 2, 3)):
        result = train(TrainOptions(strategy=strategy, split_point=p, microbatches=n, **EXACT),
                       local_fleet(), str(runs), f"test {strategy}")
        dirs[strategy] = Path(result.run_dir)
    return dirs


def test_split_and_pipar_compute_the_same_weights_as_fl(exact_runs):
    models = {s: load_file(d / "model.safetensors") for s, d in exact_runs.items()}
    torch.manual_seed(0)
    from partitions.zoo import build_model
    initial = build_model("vgg5", (1, 28, 28), 10, batch_norm=False).state_dict()
    moved = max((models["fl"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-3, "training did not change the weights; the comparison would be empty"
    for strategy in ("split", "pipar"):
        assert models[strategy].keys() == models["fl"].keys()
        for key, expected in models["fl"].items():
            torch.testing.assert_close(models[strategy][key], expected, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, k=key, s=strategy: f"{s} {k}: {m}")


def test_the_model_file_says_what_it_holds_and_evaluate_reproduces_the_last_round(exact_runs):
    """The server's model.safetensors carries its metadata; `edgectl evaluate` rebuilds it
    from that alone and, on the run's 200 test samples, gets the accuracy the run did."""
    from typer.testing import CliRunner

    from agents.model_file import read_model_meta
    from edgectl.cli import app

    run_dir = exact_runs["pipar"]
    meta = read_model_meta(str(run_dir / "model.safetensors"))
    assert (meta.model, meta.input_shape, meta.num_classes, meta.batch_norm) == \
        ("vgg5", (1, 28, 28), 10, False)
    assert (meta.dataset, meta.run_id, meta.rounds_completed, meta.strategy) == \
        ("fashion-mnist", run_dir.name, 2, "pipar")
    assert meta.classes[0] == "T-shirt/top" and len(meta.classes) == 10
    assert len(meta.mean) == len(meta.std) == 1 and 0.2 < meta.mean[0] < 0.4
    result = CliRunner().invoke(app, ["evaluate", str(run_dir / "model.safetensors"),
                                      "--samples", "200", "--format", "json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    last = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()][-1]
    assert got["samples"] == 200 and got["dataset"] == "fashion-mnist"
    assert got["accuracy"] == pytest.approx(last["accuracy"])
    assert got["loss"] == pytest.approx(last["test_loss"], rel=1e-4)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["fl", "split", "pipar"])
def test_run_record_is_complete(exact_runs, strategy):
    run_dir = exact_runs[strategy]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["error"] is None
    assert info["config"]["strategy"] == strategy
    assert {d["name"] for d in info["config"]["devices"]} == {"device1", "device2"}
    assert len(info["inventory_digest"]) == 64
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]   # counted from 1, as on the console
    assert all(r["samples"] == 2 * 2 * 16 for r in rounds)
    spans = [e for e in _events(run_dir) if e["type"] == "span"]
    resources = {(e["host"], e["resource"]) for e in spans}
    for device in ("device1", "device2"):
        assert {(device, "device.compute"), (device, "uplink"), (device, "downlink")} <= resources
    trains_on_server = any(e["resource"] == "server.compute" and e["what"].startswith("train")
                           for e in spans)
    assert trains_on_server == (strategy != "fl")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["batches_per_round"] == 2
    assert 0 < summary["pipeline_efficiency"] <= 1.0
    assert [r["lr"] for r in rounds] == [0.05, 0.025]   # the step schedule, by round
    assert record_errors(run_dir) == []


@pytest.mark.parametrize("strategy", ["fl", "split", "pipar"])
def test_each_round_records_each_devices_bytes_up_and_down(exact_runs, strategy):
    """The server counts every byte on each device's connection per round; the link spans
    (one per frame, written by whoever saw its last byte arrive) must add up to the same."""
    run_dir = exact_runs[strategy]
    spans = [e for e in _events(run_dir) if e["type"] == "span"]
    rounds = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    for r, in_summary in zip(rounds, summary["rounds"], strict=True):
        for way, resource in (("bytes_up", "uplink"), ("bytes_down", "downlink")):
            from_spans = {d: sum(e["bytes"] for e in spans if e["host"] == d
                                 and e["resource"] == resource and e["round"] == r["round"])
                          for d in ("device1", "device2")}
            assert r[way] == from_spans == in_summary[way]
            assert all(n > 0 for n in r[way].values())


def test_the_record_names_the_dataset_files_each_host_read_with_their_sha256(exact_runs):
    info = json.loads((exact_runs["split"] / "run.json").read_text())
    assert set(info["datasets"]) == {"server", "device1", "device2"}
    kinds = {host: {Path(f["path"]).name.split("-")[0] for f in record["files"]}
             for host, record in info["datasets"].items()}   # a device reads no test set
    assert kinds == {"server": {"train", "t10k"}, "device1": {"train"}, "device2": {"train"}}
    files = info["datasets"]["server"]["files"]
    for f in files:   # the very bytes read
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
        assert f["bytes"] == Path(f["path"]).stat().st_size


def test_pipar_streams_every_microbatch(exact_runs):
    spans = [e for e in _events(exact_runs["pipar"]) if e["type"] == "span"]
    ups = {(e["host"], e["round"], e["batch"], e["mb"]) for e in spans
           if e["resource"] == "uplink" and e["what"] == "activation"}
    downs = {(e["host"], e["round"], e["batch"], e["mb"]) for e in spans
             if e["resource"] == "downlink" and e["what"] == "gradient"}
    expected = {(d, r, b, mb) for d in ("device1", "device2") for r in (1, 2) for b in (0, 1)
                for mb in range(3)}
    assert ups == expected and downs == expected
    for e in spans:
        assert e["end"] >= e["start"]


def test_pipar_accuracy_rises_above_chance(tmp_path, no_leftover_agents):
    result = train(TrainOptions(strategy="pipar", rounds=1, max_batches=40, eval_samples=1000,
                                split_point=2, microbatches=4),
                   local_fleet(), str(tmp_path), "test")
    assert result.summary.rounds[-1].accuracy > 0.5  # chance is 0.1


def _kill_a_device(event: dict, state: dict) -> None:
    """SIGKILL device2's agent at the first progress event (its pid from its ready event)."""
    if event["type"] == "ready" and event.get("host") == "device2":
        state["pid"] = event["pid"]
    if event["type"] == "progress" and "killed" not in state:
        state["killed"] = state["pid"]
        os.kill(state["pid"], signal.SIGKILL)


def test_a_crashed_device_ends_a_run_that_needs_every_device_and_stops_every_agent(
        tmp_path, no_leftover_agents):
    """With --min-devices 2 and no restarts, one dead device ends the run (a run that may
    go on without it is tests/integration/test_resilience.py's)."""
    state: dict = {}
    with pytest.raises(RunFailed) as failure:
        train(TrainOptions(strategy="pipar", rounds=3, max_batches=50, eval_samples=200,
                           split_point=2, microbatches=4, min_devices=2, rejoin_attempts=0),
              local_fleet(), str(tmp_path), "test", on_event=lambda e: _kill_a_device(e, state))
    message = str(failure.value)
    # the error names the one that died, either as its own exit or as the server losing it
    assert re.fullmatch(r"(device2: agent exited with code -9; .*|server: 1 of 2 devices "
                        r"remain after device2 was lost .*)", message), message
    assert not psutil.pid_exists(state["killed"]) or \
        psutil.Process(state["killed"]).status() == "zombie"
    (run_dir,) = tmp_path.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == message


def test_ctrl_c_stops_everything_and_the_record_says_so(tmp_path, no_leftover_agents):
    def interrupt(event: dict) -> None:
        if event["type"] == "progress":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions(strategy="split", rounds=2, max_batches=50, eval_samples=200),
              local_fleet(), str(tmp_path), "test", on_event=interrupt)
    (run_dir,) = tmp_path.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert (run_dir / "events.jsonl").stat().st_size > 0


def test_missing_dataset_is_a_data_error_naming_the_paths(tmp_path, no_leftover_agents):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as failure:
        train(TrainOptions(dataset="mnist", data_dir=str(empty), rounds=1, max_batches=1),
              local_fleet(), str(tmp_path / "runs"), "test")
    assert str(empty) in str(failure.value) and "\n" not in str(failure.value)
