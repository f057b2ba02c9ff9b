"""Link pacing: which rates a run paces each device's connection to (edgectl/runs/pacing.py),
how the agents hear of them (run config, placements messages), and the kernel holding them
on a real socket (agents.wire.Connection.pace). The testbed tests in
tests/testbed/test_shaping.py check the same end to end, under tc."""

from __future__ import annotations

import socket

import pytest
import yaml

from agents.config import DeviceSpec, RunConfig
from agents.control import pacing_from
from agents.errors import AgentError
from agents.wire import Connection
from edgectl.errors import FleetError
from edgectl.fleet.inventory import local_fleet, parse_inventory
from edgectl.network.schedule import BandwidthChange
from edgectl.network.shaping_state import forget_state, save_state, shaped_rates
from edgectl.runs.adapt import Pacer
from edgectl.runs.options import TrainOptions
from edgectl.runs.pacing import PACING_FACTOR, link_pacing, paced_rates, pacing_line
from edgectl.runs.runner import build_run_config, placements_record


def fleet(link: str | None = "20mbit"):
    """A testbed-like inventory: two devices with an interface, their links at `link`."""
    link_var = f", testbed_link: {link}" if link else ""
    return parse_inventory(yaml.safe_load(f"""
all:
  vars: {{edgectl_iface: eth0{link_var}}}
  children:
    s: {{vars: {{edgectl_role: server}}, hosts: {{srv: {{ansible_host: 10.0.0.1}}}}}}
    d:
      vars: {{edgectl_role: device}}
      hosts: {{d1: {{ansible_host: 10.0.0.2}}, d2: {{ansible_host: 10.0.0.3}}}}
"""), "fleet.yaml")


@pytest.fixture(autouse=True)
def shaping_root(tmp_path, monkeypatch):
    """An empty shaping state folder: nothing shaped by `edgectl shape` unless a test says."""
    monkeypatch.setenv("EDGECTL_SHAPING", str(tmp_path / "shaping"))


def shape(host, up: str | None, down: str | None, phase: str = "applied") -> None:
    save_state(host, {"spec": {"up": up, "down": down}, "phase": phase})


def test_a_testbed_link_paces_both_ways_and_edgectl_shape_in_series_takes_the_lower():
    inventory = fleet("20mbit")
    d1, d2 = inventory.devices
    assert shaped_rates(d1) == (20e6, 20e6)
    assert shaped_rates(fleet(None).devices[0]) == (None, None)
    shape(d1, "5mbit", "50mbit")                    # below the testbed's link up, above it down
    shape(d2, "8mbit", None, phase="applying")      # half-done: not what the link is
    assert shaped_rates(d1) == (5e6, 20e6)
    assert shaped_rates(d2) == (20e6, 20e6)
    assert shaped_rates(d1, ("1mbit", None)) == (1e6, 20e6)   # a change about to be applied
    assert shaped_rates(fleet(None).devices[0]) == (5e6, 50e6)   # the same host, no testbed


def test_a_run_paces_at_the_factor_and_a_round_one_change_replaces_the_shaping():
    inventory = fleet("20mbit")
    shape(inventory.devices[0], "5mbit", "5mbit")
    pacing = link_pacing(TrainOptions(strategy="split"), inventory)
    assert pacing.off is None and not pacing.follows_schedule and pacing.repace(inventory) is None
    assert pacing.rates == {"d1": (5e6 * PACING_FACTOR, 5e6 * PACING_FACTOR),
                            "d2": (20e6 * PACING_FACTOR, 20e6 * PACING_FACTOR)}
    first = BandwidthChange(None, 1, ("d2",), "2mbit", None)
    later = BandwidthChange(None, 3, None, "1mbit", "1mbit")
    assert paced_rates(inventory, [first])["d2"] == (2e6 * PACING_FACTOR, 20e6 * PACING_FACTOR)
    following = link_pacing(TrainOptions(), inventory, [first, later])
    assert following.rates["d2"] == (2e6 * PACING_FACTOR, 20e6 * PACING_FACTOR)
    assert following.follows_schedule   # round 3's rates are sent when it comes
    assert following.repace(inventory)() == paced_rates(inventory)


def test_links_that_start_unshaped_are_paced_once_a_schedule_shapes_them():
    inventory = fleet(None)
    pacing = link_pacing(TrainOptions(), inventory,
                         [BandwidthChange(None, 3, None, "1mbit", "2mbit")])
    assert pacing.off is None and pacing.follows_schedule
    assert pacing.rates == {"d1": (None, None), "d2": (None, None)}
    assert pacing_line(pacing.to_json()).endswith(
        "d1 -/-, d2 -/-; re-paced at each of the bandwidth schedule's round-start changes")
    for host in inventory.devices:   # what the schedule's runner does at round 3
        shape(host, "1mbit", "2mbit")
    assert pacing.repace(inventory)()["d1"] == (1e6 * PACING_FACTOR, 2e6 * PACING_FACTOR)


def test_a_testbed_taken_down_forgets_the_shaping_left_on_it():
    host = fleet(None).devices[0]
    shape(host, "1mbit", "1mbit")
    assert forget_state(host.address, host.port, host.iface)
    assert shaped_rates(host) == (None, None)
    assert not forget_state(host.address, host.port, host.iface)


@pytest.mark.parametrize("options,schedule,reason", [
    (TrainOptions(link_pacing=False), (), "--no-link-pacing"),
    (TrainOptions(strategy="plexus"), (), "device to device"),
    (TrainOptions(strategy="dpsgd"), (), "device to device"),
    (TrainOptions(strategy="fl"), (BandwidthChange(30.0, None, None, "2mbit", "2mbit"),),
     "at times (at_s)"),
])
def test_what_is_not_paced_says_why(options, schedule, reason):
    pacing = link_pacing(options, fleet("20mbit"), schedule)
    assert pacing.rates == {} and reason in pacing.off
    assert pacing_line(pacing.to_json()) == f"links not paced: {pacing.off}"


def test_a_fleet_edgectl_did_not_shape_is_not_paced():
    for inventory in (local_fleet(), fleet(None)):
        pacing = link_pacing(TrainOptions(), inventory)
        assert pacing.off == "no link of this fleet is shaped by edgectl"


def test_the_run_config_and_its_record_carry_each_devices_rates():
    inventory = fleet("20mbit")
    shape(inventory.devices[1], None, "2mbit")
    options = TrainOptions(strategy="split", split_point=2)
    pacing = link_pacing(options, inventory)
    run = build_run_config(options, inventory, "r", pacing=pacing)
    paced = 20e6 * PACING_FACTOR
    assert [(d.name, d.pace_up_bps, d.pace_down_bps) for d in run.devices] == \
        [("d1", paced, paced), ("d2", paced, 2e6 * PACING_FACTOR)]
    assert RunConfig.from_json(run.to_json()) == run
    record = placements_record(run, pacing)["link_pacing"]
    assert record == {"factor": PACING_FACTOR, "off": None, "follows_schedule": False,
                      "devices": {"d1": [paced, paced], "d2": [paced, 2e6 * PACING_FACTOR]}}
    assert pacing_line(record).endswith("(Mbit/s up/down): d1 21/21, d2 21/2.1")
    unpaced = build_run_config(options, inventory, "r")
    assert all(d.pace_up_bps is None and d.pace_down_bps is None for d in unpaced.devices)


def test_a_rate_that_is_not_positive_is_refused_by_the_agents():
    for rate in (0.0, -1e6, "fast"):
        with pytest.raises(AgentError, match="pacing rate must be positive"):
            RunConfig("r", "split", "vgg5", "fashion-mnist", (DeviceSpec("d1", 2, 1, rate),))


def test_placements_may_carry_new_rates_and_bad_ones_are_refused():
    devices = ["d1", "d2"]
    assert pacing_from({"devices": {}}, devices) == {}
    assert pacing_from({"pacing": {"d1": [1e6, None]}}, devices) == {"d1": (1e6, None)}
    with pytest.raises(AgentError, match="pacing names d3, not among the run's devices d1, d2"):
        pacing_from({"pacing": {"d3": [1e6, 1e6]}}, devices)
    for bad in ({"d1": [1e6]}, {"d1": [0, 1e6]}, {"d1": ["1mbit", None]},
                {"d1": [True, None]}, ["d1"]):
        with pytest.raises(AgentError, match="pacing"):
            pacing_from({"pacing": bad}, devices)


def test_the_pacer_sends_the_new_rates_with_each_rounds_placements():
    run = RunConfig("r", "split", "vgg5", "fashion-mnist", (DeviceSpec("d1", 2, 1),), rounds=3)
    sent, rates = [], iter([{"d1": (5e6, 5e6)}, {"d1": (None, None)}])
    pacer = Pacer(run, sent.append, lambda: next(rates))
    for r in (1, 2, 3):
        pacer.on_event({"type": "round", "round": r})
    assert sent == [{"type": "placements", "round": 2, "devices": {"d1": [2, 1]},
                     "pacing": {"d1": [5e6, 5e6]}},
                    {"type": "placements", "round": 3, "devices": {"d1": [2, 1]},
                     "pacing": {"d1": [None, None]}}]
    plain = []
    Pacer(run, plain.append).on_event({"type": "round", "round": 1})
    assert "pacing" not in plain[0]

    def unreadable():
        raise FleetError("d1: shaping state is unreadable")
    kept = []   # the server waits for its placements: they go, the rates stay as they were
    Pacer(run, kept.append, unreadable).on_event({"type": "round", "round": 1})
    assert kept == [{"type": "placements", "round": 2, "devices": {"d1": [2, 1]}}]


@pytest.fixture
def connection():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    conn = Connection(client, "peer")
    yield conn, client
    conn.abort("test over")
    accepted.close()
    listener.close()


def held(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, 47, 8), "little")


def test_the_kernel_holds_the_rate_asked_and_none_lifts_it(connection):
    conn, sock = connection
    assert conn.pace(21e6) == 21e6
    assert held(sock) == 21e6 / 8                   # bytes per second
    assert conn.pace(None) is None
    assert held(sock) >= 0xFFFFFFFF                 # the kernel's "no cap"
    assert conn.pace(1e15) is None                  # beyond what the option holds: no cap
