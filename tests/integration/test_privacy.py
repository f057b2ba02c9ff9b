"""`edgectl train --dp` for real: agents as processes on the local fleet, real Fashion-MNIST,
Opacus on both sides of every split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgectl.fleet.inventory import local_fleet
from edgectl.runs.options import TrainOptions
from edgectl.runs.runner import train
from tests.record_schema import record_errors

pytestmark = [
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                       reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)"),
    pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import opacus"]).returncode != 0,
                       reason="needs opacus (pip install -e '.[test]')"),
]

# The noise is fixed so that split (N = 1) and pipar (N = 3, uneven: 6+5+5) can be compared.
PRIVATE = {"model": "vgg5", "batch_norm": False, "rounds": 2, "max_batches": 3,
           "batch_size": 16, "lr": 0.05, "eval_samples": 200, "dp": True,
           "dp_noise_multiplier": 0.9, "dp_max_grad_norm": 0.5, "dp_delta": 1e-5,
           "dp_noise_seed": 3}


@pytest.fixture(scope="module")
def private_runs(tmp_path_factory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("runs")
    dirs = {}
    for strategy, p, n in (("fl", None, None), ("split", 2, None), ("pipar", 2, 3)):
        result = train(TrainOptions(strategy=strategy, split_point=p, microbatches=n, **PRIVATE),
                       local_fleet(), str(runs), f"test dp {strategy}")
        dirs[strategy] = Path(result.run_dir)
    return dirs


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _shard_sizes() -> list[int]:
    from agents.datasets import load_dataset, partition_indices

    ds = load_dataset("fashion-mnist", None)
    return [len(s) for s in partition_indices(ds.train_y, 2, "iid", 0)]


@pytest.mark.parametrize("strategy", ["fl", "split", "pipar"])
def test_a_dp_run_records_the_accountants_epsilon_every_round(private_runs, strategy):
    """epsilon per round is Opacus's RDP accountant for the steps taken so far (3 a round
    per device) at q = B / the device's shard, computed here from the data, not the record."""
    from opacus.accountants import RDPAccountant

    run_dir = private_runs[strategy]
    rounds = _lines(run_dir / "rounds.jsonl")
    q = max(16 / n for n in _shard_sizes())
    for r in rounds:
        accountant = RDPAccountant()
        accountant.history = [(0.9, q, 3 * r["round"])]
        assert r["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["dp"] == {"noise_multiplier": 0.9, "max_grad_norm": 0.5,
                                    "delta": 1e-5, "noise_seed": 3}
    devices = info["privacy"]["devices"]
    assert {d: v["steps"] for d, v in devices.items()} == {"device1": 6, "device2": 6}
    assert {v["sample_rate"] for v in devices.values()} == {16 / n for n in _shard_sizes()}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epsilon"] == rounds[-1]["epsilon"] and summary["delta"] == 1e-5
    assert [r["epsilon"] for r in summary["rounds"]] == [r["epsilon"] for r in rounds]
    assert record_errors(run_dir) == []


def test_dp_pipar_computes_what_dp_split_does_given_the_same_noise(private_runs):
    """Micro-batches are clipped per sample and noised once per step: N = 3 (pipar) gives
    the weights N = 1 (split) does, through real agents and the wire."""
    split, pipar = (load_file(private_runs[s] / "model.safetensors") for s in ("split", "pipar"))
    fl = load_file(private_runs["fl"] / "model.safetensors")
    assert max((split[k] - fl[k]).abs().max().item() for k in fl) > 1e-3   # a different run
    for key, expected in split.items():
        torch.testing.assert_close(pipar[key], expected, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=key: f"{k}: {m}")


def test_train_dp_refuses_batch_norm_in_one_line_naming_the_fix(tmp_path):
    from edgectl.cli import app

    result = CliRunner().invoke(app, ["train", "--strategy", "fl", "--dp", "--runs-dir",
                                      str(tmp_path)])
    assert result.exit_code != 0
    assert "--no-batch-norm" in result.output and len(result.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())   # refused before anything started


def test_runs_without_dp_never_import_opacus():
    code = ("import sys, agents.device, agents.server, agents.__main__, edgectl.cli.app, "
            "edgectl.runs.runner; sys.exit('opacus' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_host_without_opacus_fails_the_run_in_one_line(tmp_path, monkeypatch,
                                                        no_leftover_agents):
    """The agents find an `opacus` that will not import (as on a host without it)."""
    from edgectl.errors import RunFailed

    shadow = tmp_path / "shadow" / "opacus"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    with pytest.raises(RunFailed, match=r"--dp needs opacus, which this host lacks: run "
                                        r"`edgectl provision --dp`"):
        train(TrainOptions(strategy="fl", rounds=1, max_batches=1, batch_norm=False, dp=True),
              local_fleet(), str(tmp_path / "runs"), "test")
