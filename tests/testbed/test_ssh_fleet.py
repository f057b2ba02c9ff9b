"""The SSH fleet against real sshd servers in network namespaces: check, provision, train.

A two-device testbed with CPU-throttled devices; every step goes through `edgectl` as a
user runs it (the CLI, in-process), and at the end nothing of the testbed may remain.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from edgectl.cli import app
from edgectl.errors import EXIT_FLEET, FleetError
from edgectl.fleet import ssh
from edgectl.fleet.hosts import HostSession
from edgectl.fleet.inventory import load_inventory
from edgectl.network import testbed as tb
from edgectl.network.testbed import TestbedSpec
from tests.testbed.test_testbed import leftovers

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                       reason="needs Debian's dataset-fashion-mnist (.ci/setup.sh)"),
]
runner = CliRunner()
NAME = f"f{os.getpid() % 1_000_000}"


def agents_of(state_dir: str) -> list[int]:
    """Agent processes running from this testbed's host workdirs."""
    return [p.pid for p in psutil.process_iter(["cmdline", "status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE
            and "agents" in (p.info["cmdline"] or [])
            and any(state_dir in arg for arg in p.info["cmdline"] or [])]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    state_dir = str(tmp_path_factory.mktemp("beds"))
    made = tb.testbed_up(TestbedSpec(NAME, devices=2, device_cpu=(0.5,), state_dir=state_dir))
    yield made
    tb.testbed_down(made.name, state_dir)
    assert leftovers(made.name, state_dir) == []
    assert agents_of(state_dir) == []


@pytest.fixture(autouse=True)
def empty_user_known_hosts(tmp_path, monkeypatch):
    """Keys come only from the testbed's known_hosts, never from the user's own file."""
    monkeypatch.setattr(ssh, "USER_KNOWN_HOSTS", str(tmp_path / "user_known_hosts"))


def cli(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_check_provision_train_over_ssh(bed, tmp_path):
    inv = bed.inventory_path
    check = cli("inventory", "check", "-i", inv, "--format", "json")
    assert check.exit_code == 0, check.output
    facts = json.loads(check.stdout)
    assert [f["host"] for f in facts] == ["server", "d1", "d2"] and all(f["ok"] for f in facts)
    assert all(f["facts"]["torch"] and f["facts"]["cores"] >= 1 for f in facts)

    first = cli("provision", "-i", inv)
    assert first.exit_code == 0, first.output
    assert first.stdout.count("installed") == 3
    again = cli("provision", "-i", inv, "--format", "json")
    assert again.exit_code == 0, again.output
    assert [h["host"] for h in json.loads(again.stdout)["hosts"]] == ["server", "d1", "d2"]

    runs = tmp_path / "runs"
    # a placement given, so nothing is profiled (tests/testbed/test_shaping.py profiles
    # over SSH): this test is the fleet's check, install and a run of agents over SSH
    train = cli("train", "-i", inv, "--strategy", "pipar", "--split-point", "2",
                "--microbatches", "2", "--rounds", "1", "--max-batches", "4",
                "--eval-samples", "200", "--runs-dir", str(runs))
    assert train.exit_code == 0, train.output
    (run_dir,) = runs.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed"
    assert {h["name"]: h["connection"] for h in info["hosts"]} == {
        "server": "ssh", "d1": "ssh", "d2": "ssh"}
    assert (run_dir / "model.safetensors").stat().st_size > 0
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    joined = {e["device"] for e in events if e["type"] == "joined"}
    assert joined == {"d1", "d2"}
    assert agents_of(str(Path(inv).parent)) == []


def _variant(bed, tmp_path: Path, **changes) -> Path:
    """A copy of the testbed's inventory with some `all.vars` changed."""
    data = yaml.safe_load(Path(bed.inventory_path).read_text())
    data["all"]["vars"].update(changes)
    out = tmp_path / "variant.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def _one_line_fleet_error(host) -> str:
    with pytest.raises(FleetError) as failure:
        HostSession(host)
    message = str(failure.value)
    assert "\n" not in message and message.startswith(f"{host.name}: ")
    return message


def test_unknown_host_key_is_refused_then_trusted(bed, tmp_path):
    mine = tmp_path / "my_known_hosts"
    inv = _variant(bed, tmp_path, edgectl_known_hosts=str(mine))
    device = load_inventory(inv).devices[0]
    message = _one_line_fleet_error(device)
    assert "is not known" in message and f"edgectl hosts trust {device.name}" in message
    trusted = cli("hosts", "trust", device.name, "-i", str(inv), "--yes", "--format", "json")
    assert trusted.exit_code == 0, trusted.output
    shown = {h["host"]: h for h in json.loads(trusted.stdout)["hosts"]}[device.name]
    assert shown["fingerprint"].startswith("SHA256:")
    assert shown["recorded_in"] == str(mine) and device.address in mine.read_text()
    with HostSession(device) as s:
        assert s.check("echo ok", "echo").strip() == "ok"


def test_changed_host_key_is_refused(bed, tmp_path):
    forged = tmp_path / "forged_known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "other")], check=True)
    public = (tmp_path / "other.pub").read_text().split()
    device = load_inventory(bed.inventory_path).devices[0]
    forged.write_text(f"{device.address} {public[0]} {public[1]}\n")
    inv = _variant(bed, tmp_path, edgectl_known_hosts=str(forged))
    assert "CHANGED" in _one_line_fleet_error(load_inventory(inv).devices[0])


def test_unreachable_host_is_one_line(bed, tmp_path):
    inv = _variant(bed, tmp_path, ansible_port=2222)   # nothing listens there
    result = cli("inventory", "check", "-i", str(inv))
    assert result.exit_code == EXIT_FLEET
    assert "cannot reach" in _one_line_fleet_error(load_inventory(inv).devices[0])


def test_wrong_key_file_is_one_line(bed, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(tmp_path / "stranger")], check=True)
    inv = _variant(bed, tmp_path, ansible_ssh_private_key_file=str(tmp_path / "stranger"))
    assert "login as root" in _one_line_fleet_error(load_inventory(inv).devices[0])
    missing = _variant(bed, tmp_path, ansible_ssh_private_key_file=str(tmp_path / "none"))
    assert "does not exist" in _one_line_fleet_error(load_inventory(missing).devices[0])


def test_killing_the_coordinator_stops_every_remote_agent(bed, tmp_path):
    """SIGKILL gives the coordinator no chance to clean up: the SSH sessions drop, the
    agents' stdin closes, and they exit by themselves."""
    import signal
    import sys
    import time

    assert cli("provision", "-i", bed.inventory_path).exit_code == 0
    state_dir = str(Path(bed.inventory_path).parent)
    # a placement given, so the agents start at once: a planned run would profile the fleet
    # first (80 s here), which this test is not about
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "edgectl", "train", "-i", bed.inventory_path, "--strategy",
         "pipar", "--split-point", "2", "--microbatches", "2", "--rounds", "5",
         "--max-batches", "200", "--runs-dir", str(tmp_path / "runs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(agents_of(state_dir)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(agents_of(state_dir)) == 3, "the agents never all started"
    coordinator.send_signal(signal.SIGKILL)
    coordinator.wait()
    deadline = time.monotonic() + 30
    while agents_of(state_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert agents_of(state_dir) == []
