"""D-PSGD with real agents on the local fleet: churn from a trace, a node joining with the
current model, and the records. Plexus, with churn and a sampled node killed mid-round,
runs on the testbed (tests/testbed/test_plexus.py)."""

from __future__ import annotations

import json
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
    # the holder's newest model: the last round's, or this round's if the holder has
    # finished it before the request comes (dpsgd's nodes do not wait for a joiner; when
    # the first holder asked has just left, the next one often has)
    assert back - 1 <= rounds[back]["decentral"]["fetches"]["device4"]["model_round"] <= back
    # a ring: each node averaged itself and its (up to) two neighbours online
    assert all(2 <= len(c) <= 3 for c in rounds[8]["decentral"]["aggregation"].values())
