"""Runs that survive, on the local fleet: real agent processes killed with SIGKILL, a
coordinator killed mid-run, and the run resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgectl.errors import RunFailed
from edgectl.fleet.inventory import local_fleet
from edgectl.runs.options import TrainOptions
from edgectl.runs.resume import resume_and_train
from edgectl.runs.runner import train
from tests.conftest import agent_processes
from tests.record_schema import record_errors

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")

SHORT = {"strategy": "pipar", "split_point": 2, "microbatches": 2, "max_batches": 20,
         "eval_samples": 300, "heartbeat_timeout": 10}


class KillDevice:
    """An event callback that SIGKILLs device1's agent once it is into round `at_round`."""

    def __init__(self, at_round: int):
        self.at_round, self.pids, self.killed_at = at_round, {}, None

    def __call__(self, event: dict) -> None:
        if event["type"] == "ready" and "pid" in event:
            self.pids[event["host"]] = event["pid"]
        if (event["type"] == "progress" and event["host"] == "device1" and self.killed_at is None
                and event["round"] == self.at_round and event["batch"] == 2):
            self.killed_at = time.time()
            os.kill(self.pids["device1"], signal.SIGKILL)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("strategy", ["pipar", "ecofed"])
def test_a_killed_device_is_dropped_from_its_round_and_rejoins_later(tmp_path, strategy):
    """ecofed: the device comes back from scratch, so it must be sent the frozen blocks
    again (the server checks their digest every round)."""
    kill = KillDevice(at_round=2)
    # ecofed's rounds are short (forwards only): a larger evaluation keeps the run going
    # long enough for a restarted agent (a few seconds) to come back, and more mini-batches
    # keep the device busy past the kill (20 took 0.11 s: it could finish the round between
    # its second mini-batch and the kill, which waits for that event to arrive)
    options = TrainOptions(rounds=10, **SHORT) if strategy == "pipar" else TrainOptions(
        rounds=10, **{**SHORT, "strategy": "ecofed", "microbatches": None,
                      "eval_samples": 5000, "max_batches": 100}, warmup_rounds=1)
    result = train(options, local_fleet(), str(tmp_path), "test", kill)
    run = Path(result.run_dir)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    events = _lines(run / "events.jsonl")
    lost = [e for e in events if e["type"] == "device_lost"]
    assert [(e["device"], e["round"], e["round_discarded"]) for e in lost] == \
        [("device1", 2, True)]
    assert lost[0]["time"] - kill.killed_at < 5       # a closed connection is noticed at once
    rounds = {e["round"]: e for e in _lines(run / "rounds.jsonl")}
    assert list(rounds) == list(range(1, 11))
    assert rounds[2]["devices"] == ["device2"]        # averaged over who finished
    assert rounds[2]["samples"] == options.max_batches * 32
    restarts = [e for e in events if e["type"] == "agent_restart"]
    assert restarts and restarts[0]["device"] == "device1" and "-9" in restarts[0]["reason"]
    joined = [e for e in events if e["type"] == "device_joined"]
    assert [e["device"] for e in joined] == ["device1"], "device1 never came back"
    back = joined[0]["round"]
    assert back > 2 and sorted(rounds[back]["devices"]) == ["device1", "device2"]
    assert rounds[10]["samples"] == 2 * options.max_batches * 32
    kinds = [e["type"] for e in result.summary.membership]   # lost and restart: either first
    assert sorted(kinds[:2]) == ["agent_restart", "device_lost"] and kinds[2:] == ["device_joined"]
    assert record_errors(run) == []
    assert not agent_processes()


def test_too_few_devices_fail_the_run_with_a_checkpoint_that_resumes(tmp_path):
    """A --dp run, so the resume must carry on the accountant's steps too."""
    kill = KillDevice(at_round=2)
    options = TrainOptions(rounds=3, min_devices=2, dp=True, batch_norm=False,
                           **{**SHORT, "max_batches": 8})
    with pytest.raises(RunFailed) as failed:
        train(options, local_fleet(), str(tmp_path), "test", kill)
    message = str(failed.value)
    assert "\n" not in message
    assert "fewer than --min-devices 2" in message and "checkpoint of round 1" in message
    (run,) = tmp_path.iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "--min-devices" in info["error"]
    from agents.checkpoint import read_checkpoint
    assert read_checkpoint(str(run / "checkpoint.safetensors")).round == 1

    (resumed,) = resume_and_train(run, local_fleet(), "test --resume")
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["error"] is None
    assert [r["from_round"] for r in info["resumes"]] == [2]
    assert [e["round"] for e in _lines(run / "rounds.jsonl")] == [1, 2, 3]
    assert [r.round for r in resumed.summary.rounds] == [1, 2, 3]
    steps = _lines(run / "rounds.jsonl")[-1]["privacy"]["devices"]
    assert {d: v["steps"] for d, v in steps.items()} == {"device1": 24, "device2": 24}
    assert record_errors(run) == []


def _edgectl(*args: str, runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgectl", "train", *args,
                             "--runs-dir", str(runs)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_a_coordinator_killed_mid_run_resumes_to_the_same_accuracy(tmp_path):
    args = ["--strategy", "split", "--split-point", "2", "--rounds", "4", "--max-batches", "10",
            "--eval-samples", "500", "--seed", "3"]
    whole = _edgectl(*args, runs=tmp_path / "whole")
    assert whole.wait(300) == 0, whole.stderr.read()
    cut = _edgectl(*args, runs=tmp_path / "cut")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rounds = list((tmp_path / "cut").glob("*/rounds.jsonl"))
        if rounds and len(_lines(rounds[0])) >= 2:
            break
        time.sleep(0.2)
    cut.kill()                                   # SIGKILL: no finally, no record finished
    cut.wait()
    run = rounds[0].parent
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    again = subprocess.run([sys.executable, "-m", "edgectl", "train", "--resume", str(run)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    rounds = _lines(run / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]     # none missing, none twice
    (reference,) = (tmp_path / "whole").iterdir()
    expected = _lines(reference / "rounds.jsonl")[-1]["accuracy"]
    assert abs(rounds[-1]["accuracy"] - expected) <= 0.01
    assert record_errors(run) == []
