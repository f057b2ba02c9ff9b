"""Surviving runs, piece by piece: heartbeats, superseded events, checkpoints, resume checks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.checkpoint import read_checkpoint, save_checkpoint
from agents.errors import AgentError
from agents.model_file import ModelMeta, load_model
from agents.wire import Connection, Frame, MsgType, WireError
from edgectl.errors import UsageError
from edgectl.fleet.inventory import local_fleet
from edgectl.runs.options import TrainOptions
from edgectl.runs.records import effective_events
from edgectl.runs.resume import check_initial_model, resume_point
from partitions.zoo import build_model


@pytest.fixture
def connected():
    a, b = socket.socketpair()
    left, right = Connection(a, "left"), Connection(b, "right")
    yield left, right
    left.close()
    right.close()


def test_heartbeats_keep_a_quiet_peer_heard_and_never_reach_the_inbox(connected):
    left, right = connected
    left.start_heartbeat(0.05)
    time.sleep(0.5)
    assert right.silent_for() < 0.3          # heartbeats arrived ...
    assert right.inbox.empty()               # ... and were consumed by the transport
    left.send(Frame(MsgType.JOIN, {"device": "d"}))
    assert right.recv(timeout=5).type is MsgType.JOIN


def test_a_silent_peer_is_given_up_after_the_silence_limit(connected):
    _, right = connected                     # the left end never sends anything
    t0 = time.monotonic()
    with pytest.raises(WireError, match="nothing heard"):
        right.recv(timeout=None, silence=0.5)
    assert 0.4 < time.monotonic() - t0 < 5


def test_a_closed_peer_is_noticed_at_once(connected):
    left, right = connected
    left.abort("gone")
    with pytest.raises(WireError):
        right.recv(timeout=5, silence=30)


def test_a_resume_supersedes_the_interrupted_rounds_events():
    events = [{"type": "round", "round": 1}, {"type": "span", "round": 2, "n": "old"},
              {"type": "ready", "host": "d"},
              {"type": "resumed", "from_round": 2, "checkpoint_round": 1},
              {"type": "span", "round": 2, "n": "new"}, {"type": "round", "round": 2}]
    kept = effective_events(events)
    assert {"type": "span", "round": 2, "n": "old"} not in kept
    assert [e.get("n") for e in kept if e["type"] == "span"] == ["new"]
    assert [e["round"] for e in kept if e["type"] == "round"] == [1, 2]
    assert {"type": "ready", "host": "d"} in kept    # not a round's: kept as history


def _meta(run_id: str = "20261202-010000-pipar-abcd") -> ModelMeta:
    return ModelMeta("vgg5", (1, 28, 28), 10, True, (), (0.5,), (0.5,), "fashion-mnist", run_id,
                     3, "pipar")


def test_a_checkpoint_round_trips_and_is_a_model_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("vgg5", (1, 28, 28), 10, batch_norm=True)
    path = str(tmp_path / "checkpoint.safetensors")
    save_checkpoint(path, model.state_dict(), _meta(), 3, {"device1": (2, 4)},
                    {"type": "round", "round": 3, "loss": 0.5})
    assert not os.path.exists(path + ".tmp")   # written aside, then renamed
    point = read_checkpoint(path)
    assert (point.round, point.placements, point.round_event["loss"]) == \
        (3, {"device1": (2, 4)}, 0.5)
    loaded, meta = load_model(path)             # `edgectl evaluate` reads it too
    assert meta.rounds_completed == 3
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_a_plain_model_file_is_not_a_checkpoint(tmp_path):
    from agents.model_file import save_model
    path = str(tmp_path / "model.safetensors")
    save_model(path, build_model("vgg5", (1, 28, 28), 10).state_dict(), _meta())
    with pytest.raises(AgentError, match="not a checkpoint"):
        read_checkpoint(path)


def _record(tmp_path, status: str, **extra) -> str:
    run = tmp_path / "20261202-010000-pipar-abcd"
    run.mkdir()
    info = {"run_id": run.name, "status": status, "config": {"rounds": 4, "run_id": run.name},
            "train_config": {"strategy": "pipar", "rounds": 4}, "inventory": None,
            "inventory_digest": local_fleet().digest(), "versions": {}, **extra}
    (run / "run.json").write_text(json.dumps(info))
    return str(run)


def test_resume_refuses_a_completed_run(tmp_path):
    with pytest.raises(UsageError, match="completed all its 4 rounds"):
        resume_point(_record(tmp_path, "completed"), local_fleet())


def test_resume_refuses_a_run_whose_coordinator_still_runs(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "edgectl"])
    try:
        # once in CI the check read the new process before its command line said edgectl
        deadline = time.monotonic() + 10
        while b"edgectl" not in Path(f"/proc/{alive.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the stand-in coordinator never started"
            time.sleep(0.05)
        run = _record(tmp_path, "running",
                      coordinator={"host": socket.gethostname(), "pid": alive.pid})
        with pytest.raises(UsageError, match=f"still running .*process {alive.pid}"):
            resume_point(run, local_fleet())
    finally:
        alive.kill()
        alive.wait()
    with pytest.raises(UsageError, match="no checkpoint"):   # its coordinator is gone now
        resume_point(run, local_fleet())


def test_resume_needs_the_same_inventory_and_a_checkpoint(tmp_path):
    run = _record(tmp_path, "failed")
    record = Path(run) / "run.json"
    info = json.loads(record.read_text())
    info["inventory_digest"] = "0" * 64
    record.write_text(json.dumps(info))
    with pytest.raises(UsageError, match="inventory differs"):
        resume_point(run, local_fleet())
    info["inventory_digest"] = local_fleet().digest()
    record.write_text(json.dumps(info))
    with pytest.raises(UsageError, match="no checkpoint"):
        resume_point(run, local_fleet())


def test_resilience_options_are_checked():
    with pytest.raises(UsageError, match="--min-devices"):
        TrainOptions(min_devices=0)
    with pytest.raises(UsageError, match="--heartbeat-timeout"):
        TrainOptions(heartbeat_timeout=0)
    with pytest.raises(UsageError, match="--rejoin-attempts"):
        TrainOptions(rejoin_attempts=-1)


def test_init_from_must_hold_the_runs_model(tmp_path):
    from agents.model_file import save_model
    path = str(tmp_path / "model.safetensors")
    save_model(path, build_model("vgg5", (1, 28, 28), 10).state_dict(), _meta())
    check_initial_model(TrainOptions(model="vgg5", init_from=path))
    with pytest.raises(UsageError, match="holds vgg5"):
        check_initial_model(TrainOptions(model="vgg11", init_from=path))
    with pytest.raises(UsageError, match="--init-from"):
        check_initial_model(TrainOptions(init_from=str(tmp_path / "missing.safetensors")))
