"""Plexus and D-PSGD with real agents on the local fleet: a sampled node killed mid-round,
its restart joining with the current model, churn from a trace, and the records."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from edgectl.fleet.inventory import local_fleet
from edgectl.runs.options import TrainOptions
from edgectl.runs.runner import train
from tests.record_schema import record_errors

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)")

SHORT = {"max_batches": 8, "eval_samples": 2000, "heartbeat_timeout": 10}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class KillSampled:
    """SIGKILLs the first node that trains in round `at_round`, two batches into it."""

    def __init__(self, at_round: int):
        self.at_round, self.pids, self.victim, self.killed_at = at_round, {}, None, None

    def __call__(self, event: dict) -> None:
        if event["type"] == "ready" and "pid" in event:
            self.pids[event["host"]] = event["pid"]
        if (event["type"] == "progress" and self.killed_at is None
                and event["round"] == self.at_round and event["batch"] == 2):
            self.victim, self.killed_at = event["host"], time.time()
            os.kill(self.pids[event["host"]], signal.SIGKILL)


def test_plexus_survives_a_sampled_node_killed_mid_round_and_it_rejoins_with_the_model(
        tmp_path):
    kill = KillSampled(at_round=2)
    result = train(TrainOptions(strategy="plexus", sample_size=3, rounds=9, **SHORT),
                   local_fleet(4), str(tmp_path), "test", kill)
    run = Path(result.run_dir)
    assert record_errors(run) == []
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    events = _lines(run / "events.jsonl")
    rounds = {e["round"]: e for e in _lines(run / "rounds.jsonl")}
    assert list(rounds) == list(range(1, 10))

    # every node computed the same sample from the view, with no one telling it
    groups = defaultdict(set)
    for e in events:
        if e["type"] == "sample":
            groups[(e["round"], tuple(e["view"]))].add(tuple(sorted(e["group"])))
    assert groups and all(len(g) == 1 for g in groups.values())
    assert all(r["decentral"]["sample_agreed"] for r in rounds.values())

    # the killed node's round went on without it: the rest of the sample averaged
    victim = kill.victim
    lost = [e for e in events if e["type"] == "device_lost"]
    assert [(e["device"], e["round"]) for e in lost] == [(victim, 2)]
    two = rounds[2]["decentral"]
    assert victim not in two["aggregation"] and len(two["aggregation"]) == 2
    assert all(sorted(c) == sorted(two["aggregation"]) for c in two["aggregation"].values())
    assert rounds[2]["accuracy"] is not None

    # restarted, it joined with a stale model and fetched the current one before training
    joined = [e for e in events if e["type"] == "device_joined" and e["device"] == victim]
    assert joined and joined[0]["model_round"] == 0
    back = joined[0]["round"]
    trained_after = [r for r in range(back, 10) if victim in rounds[r]["devices"]]
    assert trained_after, f"{victim} was never sampled after it came back"
    first = trained_after[0]
    fetched = rounds[first]["decentral"]["fetches"][victim]
    assert fetched["model_round"] == first - 1
    assert fetched["digest"] == rounds[first - 1]["decentral"]["evaluated_digest"]
    assert sorted(rounds[first]["decentral"]["aggregation"][victim]) == \
        rounds[first]["devices"]

    # bytes per device pair: each sampled node sent its model to each other sampled node
    pairs = rounds[1]["decentral"]["peer_bytes"]
    assert sorted(pairs) == rounds[1]["devices"]
    assert all(len(to) == 2 and min(to.values()) > 1_000_000 for to in pairs.values())
    assert rounds[1]["decentral"]["device_train_s"] > 0


def test_dpsgd_plays_a_churn_trace(tmp_path):
    trace = tmp_path / "trace.yaml"
    trace.write_text("format: edgectl-availability/1\ndevices:\n"
                     "  device3: [[0, 3]]\n  device4: [[1, null]]\n")
    result = train(TrainOptions(strategy="dpsgd", rounds=8, churn=str(trace), **SHORT),
                   local_fleet(4), str(tmp_path), "test")
    run = Path(result.run_dir)
    assert record_errors(run) == []
    info = json.loads((run / "run.json").read_text())
    assert info["churn"]["devices"]["device4"] == [[1, None]]
    events = _lines(run / "events.jsonl")
    churn = [(e["device"], e["action"]) for e in events if e["type"] == "churn"]
    assert churn == [("device4", "join"), ("device3", "leave")]
    rounds = {e["round"]: e for e in _lines(run / "rounds.jsonl")}
    assert rounds[1]["devices"] == ["device1", "device2", "device3"]   # device4 not yet up
    assert "device3" not in rounds[8]["devices"]
    assert [e["device"] for e in events if e["type"] == "device_lost"] == ["device3"]
    joined = [e for e in events if e["type"] == "device_joined"]
    assert [e["device"] for e in joined] == ["device4"]
    back = joined[0]["round"]
    assert rounds[back]["decentral"]["fetches"]["device4"]["model_round"] == back - 1
    # a ring: each node averaged itself and its (up to) two neighbours online
    assert all(2 <= len(c) <= 3 for c in rounds[8]["decentral"]["aggregation"].values())
