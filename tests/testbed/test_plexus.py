"""Plexus on the emulated testbed: real sshd, real namespaces and a bridge the devices reach
each other over, CPU quotas. One run with churn from an availability trace, and a sampled
node SIGKILLed mid-round, shows that every node computes the same sample on its own host
(the server never sends it), that the killed node's round goes on without it, that the
nodes exchange models device to device, that a node joining late fetches the current
model, and that the model converges on Fashion-MNIST.

Needs root (tests/testbed/conftest.py). The testbed is this module's and always taken
down; the test checks nothing of it is left.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest

from edgectl.fleet.inventory import load_inventory
from edgectl.fleet.provision import provision
from edgectl.network import testbed as tb
from edgectl.network.testbed import TestbedSpec
from edgectl.runs.options import TrainOptions
from edgectl.runs.runner import train
from tests.record_schema import record_errors
from tests.testbed.test_testbed import leftovers

PID = os.getpid() % 1_000_000
ACCURACY_THRESHOLD = 0.70   # after 10 rounds of 2 sampled nodes x 20 mini-batches (B 32)

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                       reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)"),
]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class KillSampled:
    """SIGKILLs a node that trains in round `at_round` or later, two batches into it (the
    testbed's hosts are network namespaces: an agent's pid is one on this host), once the
    rest of its sample can average without it: the trace's leaver has left and is none of
    its partners (a sample of the victim and a node that left has nobody left), and its
    partners have trained a round before (a joiner's first round fetches the model,
    possibly from the victim). Both hold however fast rounds go.

    The leaver is checked by name, not by round: a node that leaves as a round ends is
    still in the next round's view and sample (the server learns of it only after sending
    that round's start), and a kill there once left nobody to average (CI, 5 December)."""

    def __init__(self, at_round: int):
        self.at_round, self.pids, self.victim, self.killed_at = at_round, {}, None, None
        self.round = None
        self.left: set[str] = set()
        self.groups: dict[tuple[str, int], set[str]] = {}
        self.trained: set[str] = set()

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "ready" and "pid" in event:
            self.pids[event["host"]] = event["pid"]
        if kind == "sample":
            self.groups[event["host"], event["round"]] = set(event["group"])
        if kind == "round":
            self.trained |= set(event.get("devices") or ())
        if kind == "churn" and event["action"] == "leave":
            self.left.add(event["device"])
        if (kind == "progress" and self.killed_at is None and self.left
                and event["batch"] == 2 and event["round"] >= self.at_round):
            host, r = event["host"], event["round"]
            partners = self.groups.get((host, r), set()) - {host}
            if partners and partners <= self.trained and not partners & self.left:
                self.victim, self.round, self.killed_at = host, r, time.time()
                os.kill(self.pids[host], signal.SIGKILL)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A server and 4 provisioned devices at half a core each."""
    state_dir = str(tmp_path_factory.mktemp("beds"))
    made = tb.testbed_up(TestbedSpec(f"p{PID}", devices=4, device_cpu=(0.5,),
                                     state_dir=state_dir))
    try:
        inventory = load_inventory(made.inventory_path)
        failed = [r.error for r in provision(list(inventory.hosts)) if not r.ok]
        assert not failed, failed
        yield inventory
    finally:
        tb.testbed_down(made.name, state_dir)
    assert leftovers(made.name, state_dir) == []


def test_plexus_with_churn_on_the_testbed(fleet, tmp_path):
    trace = tmp_path / "trace.yaml"   # d2 leaves after 8 s; d4 joins at 4 s
    trace.write_text("format: edgectl-availability/1\ndevices:\n"
                     "  d2: [[0, 8]]\n  d4: [[4, null]]\n")
    options = TrainOptions(strategy="plexus", sample_size=2, rounds=10, max_batches=20,
                           lr=0.05, eval_samples=2000, heartbeat_timeout=10, churn=str(trace))
    kill = KillSampled(at_round=6)   # and after d2 has left: the victim is one the trace keeps
    result = train(options, fleet, str(tmp_path / "runs"), "test", kill)
    run = Path(result.run_dir)
    assert record_errors(run) == []
    events = _lines(run / "events.jsonl")
    rounds = {e["round"]: e for e in _lines(run / "rounds.jsonl")}
    assert list(rounds) == list(range(1, 11))

    # each node computed the round's sample on its own host, and they agree
    by_view = defaultdict(dict)
    for e in events:
        if e["type"] == "sample":
            by_view[(e["round"], tuple(e["view"]))][e["host"]] = tuple(sorted(e["group"]))
    assert len(by_view) >= 10
    for (r, _view), samples in by_view.items():
        assert len(set(samples.values())) == 1, (r, samples)
        assert len(samples) >= 2, f"round {r}: only {list(samples)} reported a sample"

    # the churn: d2 left and was not waited for, d4 joined and took the current model
    assert [(e["device"], e["action"]) for e in events if e["type"] == "churn"] == \
        [("d4", "join"), ("d2", "leave")]
    assert "d2" not in rounds[10]["decentral"]["view"]
    # the sampled node killed two mini-batches into its round: the rest of the sample averaged
    assert kill.round is not None and kill.round < 10, "nothing was killed"
    lost = [(e["device"], e["round"]) for e in events if e["type"] == "device_lost"]
    assert (kill.victim, kill.round) in lost, lost
    killed = rounds[kill.round]["decentral"]
    assert kill.victim not in killed["aggregation"] and killed["aggregation"]
    assert rounds[kill.round]["accuracy"] is not None
    joined = [e for e in events if e["type"] == "device_joined" and e["device"] == "d4"]
    assert joined and joined[0]["model_round"] == 0
    first = next(r for r in range(joined[0]["round"], 11) if "d4" in rounds[r]["devices"])
    fetched = rounds[first]["decentral"]["fetches"]["d4"]
    assert fetched["model_round"] == first - 1   # the model the last round made, bit for bit
    assert fetched["digest"] == rounds[first - 1]["decentral"]["evaluated_digest"]
    assert all(r["decentral"]["sample_agreed"] for r in rounds.values())

    # models moved device to device: sampled nodes sent to each other, never the server.
    # A receiver is one of the round's sample, not always one that finished it: d2 may take
    # a model and then leave (the trace) before its own round ends.
    for e in rounds.values():
        for sender, to in e["decentral"]["peer_bytes"].items():
            assert sender in e["devices"]
            assert set(to) <= set(e["decentral"]["sample"]) - {sender}, e["decentral"]
            assert all(n > 1_000_000 for n in to.values())
        others = [n for n in e["bytes_up"] if n != e["decentral"]["evaluated"]]
        assert all(e["bytes_up"][n] < 100_000 for n in others), e["bytes_up"]

    accuracy = rounds[10]["accuracy"]
    print(f"\n[plexus testbed] accuracy after 10 rounds with churn: {accuracy:.1%}")
    assert accuracy > ACCURACY_THRESHOLD
