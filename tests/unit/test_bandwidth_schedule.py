"""Bandwidth schedules: validated on load, applied at their round or time, recorded."""

from __future__ import annotations

import time

import pytest
import yaml

from edgectl.errors import ConfigError
from edgectl.fleet.inventory import parse_inventory
from edgectl.network import shaping
from edgectl.network.schedule import ScheduleRunner, load_schedule

FLEET = parse_inventory(yaml.safe_load("""
all:
  children:
    s: {vars: {edgectl_role: server}, hosts: {srv: {ansible_host: 10.0.0.1}}}
    d:
      vars: {edgectl_role: device, edgectl_iface: eth0}
      hosts: {pi1: {ansible_host: 10.0.0.2}, pi2: {ansible_host: 10.0.0.3}}
"""), "fleet.yaml")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "schedule.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text,message", [
    ("[]", "expected a list of changes"),
    ("- {up: 5mbit}", "exactly one of at_s"),
    ("- {at_s: 1, at_round: 2, up: 5mbit}", "exactly one of at_s"),
    ("- {at_s: -1, up: 5mbit}", "[0].at_s: expected seconds >= 0"),
    ("- {at_round: 1, hosts: [pi9], up: 5mbit}", "[0].hosts: expected device names"),
    ("- {at_round: 1, up: fast}", "--up"),
    ("- {at_round: 0, up: 5mbit}", "counting from 1"),
    ("- {at_round: 1, rate: 5mbit}", "[0].rate: unknown key"),
    ("- [1", "not valid YAML"),
])
def test_bad_schedules_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as failure:
        load_schedule(write(tmp_path, text), FLEET)
    assert message in str(failure.value) and "\n" not in str(failure.value)


def test_changes_apply_at_their_round_and_time(tmp_path, monkeypatch):
    applied = []
    monkeypatch.setattr(shaping, "shape_set", lambda inv, spec, hosts: applied.append(
        (spec.up, spec.down, hosts)))
    changes = load_schedule(write(tmp_path, """
- {at_round: 1, up: 20mbit, down: 20mbit}
- {at_round: 3, hosts: [pi1], up: 1mbit}
- {at_s: 0.2, down: 5mbit}
"""), FLEET)
    events = []
    runner = ScheduleRunner(changes, FLEET, events.append)
    runner.start()
    assert applied == [("20mbit", "20mbit", None)]
    runner.on_event({"type": "round", "round": 1})        # round 2 starts: nothing due
    assert len(applied) == 1
    runner.on_event({"type": "round", "round": 2})        # round 3 starts
    assert applied[-1] == ("1mbit", None, ("pi1",))
    deadline = time.monotonic() + 5
    while len(applied) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    runner.stop()
    assert applied[-1] == (None, "5mbit", None)
    assert [e["devices"] for e in events] == [["pi1", "pi2"], ["pi1"], ["pi1", "pi2"]]
    assert all(e["type"] == "bandwidth" for e in events) and runner.applied
