"""EcoFed with real agents on the local fleet: what travels, what stays frozen, what replays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agents.strategies.ecofed import state_digest
from edgectl.errors import RunFailed, UsageError
from edgectl.fleet.inventory import local_fleet
from edgectl.runs.options import TrainOptions
from edgectl.runs.runner import train
from partitions.parts import split
from partitions.zoo import build_model
from tests.record_schema import record_errors

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")

SMALL = {"model": "vgg5", "batch_size": 16, "max_batches": 3, "eval_samples": 200,
         "batch_norm": True}
DEVICES = ("device1", "device2")


def _lines(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (run_dir / name).read_text().splitlines()]


def _device_keys(p: int = 2) -> set[str]:
    model = build_model("vgg5", (1, 28, 28), 10, batch_norm=True)
    return set(split(model, p)[0].state_dict())


@pytest.fixture(scope="module")
def ecofed_runs(tmp_path_factory) -> dict[str, Path]:
    """A device init from one fl round (seed 1), then ecofed from it with replay period 2
    over 3 rounds (upload, replay, upload... rounds 1 and 3 upload, 2 replays), and
    ecofed with one warm-up round, per-channel codes and replay period 1."""
    runs = tmp_path_factory.mktemp("runs")
    init = train(TrainOptions(strategy="fl", rounds=1, seed=1, **SMALL), local_fleet(),
                 str(runs), "test init")
    init_file = Path(init.run_dir) / "model.safetensors"
    replay = train(TrainOptions(strategy="ecofed", rounds=3, device_init=str(init_file),
                                replay_period=2, split_point=2, **SMALL),
                   local_fleet(), str(runs), "test ecofed replay")
    warm = train(TrainOptions(strategy="ecofed", rounds=3, warmup_rounds=1, split_point=2,
                              quantize="int8-channel", **SMALL),
                 local_fleet(), str(runs), "test ecofed warm-up")
    return {"init": init_file, "replay": Path(replay.run_dir), "warm": Path(warm.run_dir)}


@pytest.mark.parametrize("run", ["replay", "warm"])
def test_no_gradient_travels_and_no_device_weight_goes_up(ecofed_runs, run):
    run_dir = ecofed_runs[run]
    spans = [e for e in _lines(run_dir, "events.jsonl") if e["type"] == "span"]
    ecofed_rounds = {r["round"] for r in _lines(run_dir, "rounds.jsonl")
                     if r["ecofed"]["phase"] != "warmup"}
    assert ecofed_rounds == ({1, 2, 3} if run == "replay" else {2, 3})
    assert not [e for e in spans if e["what"] in ("gradient", "backward")]
    round_ends = [e for e in spans if e["resource"] == "uplink" and e["what"] == "weights"
                  and e["round"] in ecofed_rounds]
    assert len(round_ends) == 2 * len(ecofed_rounds)
    assert all(e["bytes"] < 1000 for e in round_ends)   # metadata only: no tensors
    starts = {(e["round"], e["host"]): e["bytes"] for e in spans
              if e["resource"] == "downlink" and e["what"] == "weights"}
    first = min(ecofed_rounds)   # the frozen blocks go down once, in the first ecofed round
    for (r, host), nbytes in starts.items():
        if r in ecofed_rounds:
            assert (nbytes > 50_000) == (r == first), (r, host, nbytes)
    assert record_errors(run_dir) == []


def test_device_blocks_after_training_are_the_initial_ones(ecofed_runs):
    init = load_file(ecofed_runs["init"])
    final = load_file(ecofed_runs["replay"] / "model.safetensors")
    keys = _device_keys()
    for key in keys:
        assert torch.equal(final[key], init[key]), key
    # every device's own copy too: each round it reports its blocks' digest, the server
    # refuses one that differs from what it sent down, and the record keeps it
    digests = {r["ecofed"]["frozen_digest"]
               for r in _lines(ecofed_runs["replay"], "rounds.jsonl")}
    assert digests == {state_digest({k: init[k] for k in keys})}
    server_moved = max((final[k].float() - init[k].float()).abs().max().item()
                       for k in final if k not in keys)
    assert server_moved > 1e-3   # the server part did train


def test_a_replay_round_sends_no_activation_and_still_trains_the_server_part(ecofed_runs):
    run_dir = ecofed_runs["replay"]
    rounds = _lines(run_dir, "rounds.jsonl")
    assert [r["ecofed"]["phase"] for r in rounds] == ["upload", "replay", "upload"]
    events = _lines(run_dir, "events.jsonl")
    activations = {e["round"] for e in events if e["type"] == "span"
                   and e["what"] == "activation"}
    assert activations == {1, 3}
    replays = [e for e in events if e["type"] == "span" and e["what"] == "replay"]
    assert {(e["round"], e["device"]) for e in replays} == {(2, d) for d in DEVICES}
    assert len(replays) == 2 * 3    # every kept mini-batch once, per device
    assert not [e for e in events if e["type"] == "progress" and e["round"] == 2]
    # the device blocks are frozen (above), so a changed test loss is the server part's doing
    assert rounds[1]["test_loss"] != rounds[0]["test_loss"]
    assert rounds[1]["loss"] > 0
    # a replay round moves only its control frames
    assert all(rounds[1]["bytes_up"][d] < 1000 for d in DEVICES)
    buffered = rounds[0]["ecofed"]["buffer_bytes"]
    assert buffered == {d: 3 * 16 * (64 * 7 * 7 + 8) for d in DEVICES}


def test_quantized_uplink_is_a_quarter_and_its_error_is_recorded(ecofed_runs):
    rounds = _lines(ecofed_runs["replay"], "rounds.jsonl")
    activation_bytes = 3 * 16 * 64 * 7 * 7          # one byte a value
    for d in DEVICES:
        assert activation_bytes < rounds[0]["bytes_up"][d] < activation_bytes * 1.1
        error = rounds[0]["ecofed"]["quantization_error"][d]
        assert error["values"] == activation_bytes and 0 < error["relative_rmse"] < 0.02
    warm = _lines(ecofed_runs["warm"], "rounds.jsonl")
    assert [r["ecofed"]["phase"] for r in warm] == ["warmup", "upload", "upload"]
    assert warm[1]["ecofed"]["quantize"] == "int8-channel"
    assert warm[0]["bytes_up"]["device1"] > 1_000_000   # fl's whole model up in the warm-up


def test_a_device_init_that_does_not_fit_is_refused_before_anything_starts(tmp_path,
                                                                          ecofed_runs):
    options = TrainOptions(strategy="ecofed", rounds=2, device_init=str(ecofed_runs["init"]),
                           split_point=2, **{**SMALL, "batch_norm": False})
    with pytest.raises(UsageError, match="do not match") as e:
        train(options, local_fleet(), str(tmp_path), "test")
    assert "\n" not in str(e.value) and str(ecofed_runs["init"]) in str(e.value)
    assert not list(tmp_path.iterdir())   # no run record: nothing started


def test_a_replay_buffer_over_budget_is_refused(tmp_path, no_leftover_agents):
    small = TrainOptions(strategy="ecofed", rounds=2, warmup_rounds=1, replay_period=2,
                         replay_buffer_mb=0.1, split_point=2, **SMALL)
    with pytest.raises(UsageError, match=r"replay buffer needs 0\.3 MB .*--replay-buffer-mb"):
        train(small, local_fleet(), str(tmp_path), "test")
    # without --max-batches only the server knows the shards: it refuses before round 1
    whole = TrainOptions(strategy="ecofed", rounds=2, warmup_rounds=1, replay_period=2,
                         replay_buffer_mb=1, split_point=2, **{**SMALL, "max_batches": 0})
    with pytest.raises(RunFailed, match=r"replay buffer needs 188\.6 MB") as e:
        train(whole, local_fleet(), str(tmp_path), "test")
    assert "\n" not in str(e.value)
    (run_dir,) = tmp_path.iterdir()
    assert not [e for e in _lines(run_dir, "events.jsonl") if e["type"] == "round"]


def test_the_shipped_bench_spec_parses_and_its_local_miniature_runs(tmp_path, ecofed_runs,
                                                                     no_leftover_agents):
    """bench/ecofed.yaml as shipped (its device init beside it), then the same spec on the
    local fleet, unshaped, two tiny rounds: every run completes and reports its bytes."""
    import csv
    import shutil

    import yaml

    from edgectl.runs.bench import run_bench
    from edgectl.runs.bench_spec_parse import load_bench_spec

    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "bench" / "ecofed.yaml", tmp_path / "ecofed.yaml")
    shutil.copy(ecofed_runs["init"], tmp_path / "ecofed-init.safetensors")
    spec = load_bench_spec(tmp_path / "ecofed.yaml")
    assert spec.testbed.devices == 3 and spec.bandwidths[0].label == "up 10mbit down 25mbit"
    runs = [(c.setting.label, c.strategy) for c in spec.combinations()]
    assert runs == [("period-1", s) for s in ("fl", "split", "pipar", "ecofed")] + \
        [("period-2", "ecofed")]
    options = [spec.train_options(c) for c in spec.combinations()]
    assert [o.split_point for o in options] == [None, 2, 2, 2, 2]
    assert [o.replay_period for o in options] == [None, None, None, 1, 2]
    assert options[-1].device_init == str(tmp_path / "ecofed-init.safetensors")

    data = yaml.safe_load((root / "bench" / "ecofed.yaml").read_text())
    del data["testbed"]
    data.update(rounds=2, max_batches=2, eval_samples=200, bandwidths=["unshaped"],
                pipar={"split_point": None, "microbatches": 2})
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(data))
    result = run_bench(load_bench_spec(tmp_path / "mini.yaml"), tmp_path / "out")
    assert [r.status for r in result.runs] == ["completed"] * 5, [r.error for r in result.runs]
    with open(result.out_dir / "results.csv", newline="") as f:
        rows = {(r["setting"], r["strategy"]): r for r in csv.DictReader(f)}
    up = {k: float(r["bytes_up_per_round"]) for k, r in rows.items()}
    assert up[("period-1", "split")] > 4 * up[("period-1", "ecofed")] > 0
    assert up[("period-2", "ecofed")] < up[("period-1", "ecofed")]
