"""`edgectl shape` against the real thing: htb, ifb and agent probes on a provisioned testbed.

Tests marked `testbed` need root (see conftest.py). One module-scoped testbed of 2 devices,
provisioned once, serves them all; every test leaves each device's qdiscs exactly as they
were before it (the `unchanged` fixture checks), and the module leaves no testbed behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgectl.errors import FleetError, UsageError
from edgectl.fleet.hosts import CommandResult, HostSession
from edgectl.fleet.inventory import load_inventory, local_fleet, parse_inventory
from edgectl.fleet.provision import provision
from edgectl.network import shaping, shaping_state, tc
from edgectl.network import testbed as tb
from edgectl.network import testbed_net as net
from edgectl.network.shaping import ShapeSpec, shape_clear, shape_set, shaped
from edgectl.network.testbed import TestbedSpec
from edgectl.planning.profiling import measure_links
from edgectl.runs.options import TrainOptions
from edgectl.runs.pacing import PACING_FACTOR
from edgectl.runs.runner import plan_and_train, train
from profiles.records import LinkProfile
from tests.record_schema import record_errors
from tests.testbed.test_testbed import REPO, leftovers

PID = os.getpid() % 1_000_000
needs_root = pytest.mark.testbed


def pacing_events(run_dir: str) -> dict[tuple[str, int, str], float]:
    """(device, round, direction) -> the rate its socket held, from a run's pacing events;
    each held what it asked for (the kernel keeps whole bytes per second)."""
    events = [json.loads(x) for x in (Path(run_dir) / "events.jsonl").read_text().splitlines()]
    paced = [e for e in events if e["type"] == "pacing"]
    assert all(abs(e["held_bps"] - e["asked_bps"]) < 8 for e in paced), paced
    return {(e["device"], e["round"], e["direction"]): e["held_bps"] for e in paced}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(testbed, inventory): a server and 2 provisioned devices, no link limit."""
    state_dir = str(tmp_path_factory.mktemp("beds"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECTL_SHAPING", str(tmp_path_factory.mktemp("shaping")))
        made = tb.testbed_up(TestbedSpec(f"s{PID}", devices=2, state_dir=state_dir))
        try:
            inventory = load_inventory(made.inventory_path)
            failed = [r.error for r in provision(list(inventory.hosts)) if not r.ok]
            assert not failed, failed
            yield made, inventory
            shape_clear(inventory)
        finally:
            tb.testbed_down(made.name, state_dir)
    assert leftovers(made.name, state_dir) == []


def qdiscs_of(bed, host: str) -> str:
    """`tc qdisc show` of every interface in the host's namespace (ifb devices included)."""
    ns = next(h.namespace for h in bed.hosts if h.name == host)
    return net.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show"], "tc")


def snapshot(bed) -> dict[str, str]:
    return {h.name: qdiscs_of(bed, h.name) for h in bed.hosts}


@pytest.fixture
def unchanged(fleet):
    """The fleet, checked afterwards to have every qdisc as before and no shaping state."""
    bed, inventory = fleet
    before = snapshot(bed)
    assert "ec:" not in "".join(before.values())
    yield bed, inventory
    assert snapshot(bed) == before
    assert list(shaping_state.state_root().glob("*.json")) == []


def stats(bed, host: str, dev: str) -> tuple[int, int]:
    """(packets htb sent unshaped, bytes through the shaped class) on the host's `dev`."""
    ns = next(h.namespace for h in bed.hosts if h.name == host)
    found = json.loads(net.run(["ip", "netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show",
                                "dev", dev], "tc"))
    root = next(q for q in found if q["handle"] == tc.ROOT)
    leaf = next(q for q in found if q["handle"] == tc.LEAF)
    return root["options"]["direct_packets_stat"], leaf["bytes"]


@needs_root
def test_set_measures_the_requested_rates_both_ways(unchanged, capsys):
    bed, inventory = unchanged
    try:
        started = time.monotonic()   # 1 Mbit/s up: a slow link is measured in seconds too
        result = shape_set(inventory, ShapeSpec(up="1mbit", down="20mbit"), probe=measure_links)
        took = time.monotonic() - started
    finally:
        assert all(r.ok for r in shape_clear(inventory))
    with capsys.disabled():
        for s in result:
            print(f"\n[shape] {s.device}: up {s.up} -> {s.measured_up_bps / 1e6:.2f} Mbit/s, "
                  f"down {s.down} -> {s.measured_down_bps / 1e6:.2f} Mbit/s", end="")
        print(f"\n[shape] set and measured both devices in {took:.1f} s", end="")
    assert [s.device for s in result] == ["d1", "d2"]
    for s in result:
        assert (s.up, s.down) == ("1mbit", "20mbit")
        assert abs(s.measured_up_bps / 1e6 - 1) < 0.1, s
        assert abs(s.measured_down_bps / 20e6 - 1) < 0.1, s


@needs_root
def test_clear_restores_every_interface_exactly_and_a_second_clear_does_nothing(unchanged):
    bed, inventory = unchanged
    shape_set(inventory, ShapeSpec(up="10mbit", down="20mbit"))
    for device in ("d1", "d2"):
        now = qdiscs_of(bed, device)
        assert "qdisc htb ec: dev eth0 root" in now and "dev ecifb-eth0 root" in now
        assert "qdisc ingress ffff: dev eth0" in now
    assert "ec:" not in qdiscs_of(bed, "server")  # the server is never touched
    shown = {r.host.name: r.value for r in shaping.shape_show(inventory)}
    assert shown["d1"].applied["spec"]["up"] == "10mbit" and shown["server"].applied is None
    assert any("ecifb-eth0: qdisc htb ec:" in line for line in shown["d2"].qdiscs)
    first = shape_clear(inventory)
    assert [r.value for r in first] == ["removed ingress of eth0, htb ec: of eth0, "
                                        "ecifb-eth0"] * 2
    second = shape_clear(inventory)
    assert [r.value for r in second] == ["nothing to clear"] * 2


@needs_root
def test_ssh_keeps_the_full_link_while_a_1mbit_shape_is_set(unchanged, tmp_path):
    """2 MB each way over SSH would take 16 s at 1 Mbit/s: they go to htb's direct queue."""
    bed, inventory = unchanged
    d1 = inventory.devices[0]
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(2_000_000))
    shape_set(inventory, ShapeSpec(up="1mbit", down="1mbit"), ["d1"])
    try:
        before = stats(bed, "d1", "eth0"), stats(bed, "d1", "ecifb-eth0")
        with HostSession(d1) as session:
            start = time.monotonic()
            out = session.run("head -c 2000000 /dev/zero").stdout  # up: eth0's egress
            session.put(str(blob), f"{d1.workdir}/blob")  # down: through the ifb
            seconds = time.monotonic() - start
            session.check(f"rm {d1.workdir}/blob", "removing the blob")
        after = stats(bed, "d1", "eth0"), stats(bed, "d1", "ecifb-eth0")
    finally:
        shape_clear(inventory)
    assert len(out) == 2_000_000
    for (direct, shaped_bytes), (direct_after, shaped_after) in zip(before, after, strict=True):
        assert direct_after - direct > 30 and shaped_after - shaped_bytes < 20_000
    assert seconds < 8, f"4 MB over SSH took {seconds:.1f} s, as if shaped"


@needs_root
def test_a_set_that_crashed_midway_is_undone_by_clear(unchanged):
    """The state file is written before the first change: a coordinator killed between
    shaping and measuring leaves rules that `clear` removes."""
    bed, inventory = unchanged
    crash = textwrap.dedent(f"""\
        import os
        from edgectl.network import shaping
        from edgectl.fleet.inventory import load_inventory
        shaping.shape_set(load_inventory({bed.inventory_path!r}),
                          shaping.ShapeSpec(up="5mbit", down="5mbit"),
                          probe=lambda inventory: os._exit(9))  # dies while measuring
    """)
    done = subprocess.run([sys.executable, "-c", crash], cwd=REPO, timeout=60)
    assert done.returncode == 9 and "qdisc htb ec:" in qdiscs_of(bed, "d1")
    assert len(list(shaping_state.state_root().glob("*.json"))) == 2
    assert all(r.ok for r in shape_clear(inventory))


@needs_root
def test_ctrl_c_while_measuring_undoes_the_set(unchanged, monkeypatch):
    bed, inventory = unchanged

    def interrupted(*args):
        assert "qdisc htb ec:" in qdiscs_of(bed, "d2")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        shape_set(inventory, ShapeSpec(up="5mbit", down="5mbit"), probe=interrupted)


@needs_root
def test_a_host_with_a_root_qdisc_edgectl_did_not_make_is_refused(unchanged):
    bed, inventory = unchanged
    d2 = bed.hosts[2]
    add = ["ip", "netns", "exec", d2.namespace, "tc", "qdisc", "add", "dev", "eth0", "root",
           "handle", "1:", "tbf", "rate", "50mbit", "burst", "64k", "latency", "50ms"]
    net.run(add, "adding a foreign qdisc")
    try:
        before = snapshot(bed)
        with pytest.raises(FleetError) as caught:
            shape_set(inventory, ShapeSpec(up="10mbit"))
        assert snapshot(bed) == before  # d1 was not shaped either
    finally:
        net.run(add[:6] + ["del", "dev", "eth0", "root"], "removing the foreign qdisc")
    message = str(caught.value)
    assert message.startswith("d2: eth0 already has a root qdisc tbf 1: that edgectl did not "
                              "create") and "\n" not in message


@needs_root
def test_delay_without_netem_says_so_and_changes_nothing(unchanged):
    bed, inventory = unchanged
    with HostSession(inventory.devices[0]) as session:
        if shaping.netem_available(session):
            pytest.skip("this kernel has netem")
    with pytest.raises(UsageError) as caught:
        shape_set(inventory, ShapeSpec(up="10mbit", delay="20ms"))
    message = str(caught.value)
    assert "netem qdisc" in message and "sch_netem" in message and "\n" not in message
    assert "rate shaping (--up/--down) still works" in message


@needs_root
@pytest.mark.parametrize("failure", [RuntimeError("training failed"), KeyboardInterrupt()])
def test_shaped_clears_on_an_error_and_on_ctrl_c(unchanged, failure):
    bed, inventory = unchanged
    with pytest.raises(type(failure)), \
            shaped(inventory, ShapeSpec(up="5mbit", down="5mbit")) as result:
        assert [s.device for s in result] == ["d1", "d2"]
        assert "qdisc htb ec:" in qdiscs_of(bed, "d2")
        raise failure
    # `unchanged` checks that no rule and no state file is left


# Receives on ADDRESS:PORT and prints the rate (bit/s) over the arrivals after the first
# quarter of the transfer, as agents/probe.py does; or sends for 2 s to ADDRESS:PORT.
TRANSFER = textwrap.dedent("""\
    import socket, sys, time
    role, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "send":
        conn = socket.create_connection((address, port), timeout=10)
        deadline, chunk = time.monotonic() + 2.0, bytes(65536)
        while time.monotonic() < deadline:
            conn.sendall(chunk)
        conn.close()
        sys.exit()
    listener = socket.create_server((address, port))
    print("ready", flush=True)
    conn, _ = listener.accept()
    arrivals = []
    while data := conn.recv(65536):
        arrivals.append((time.monotonic(), len(data)))
    start = arrivals[0][0] + (arrivals[-1][0] - arrivals[0][0]) / 4
    late = [(t, n) for t, n in arrivals if t > start]
    print(sum(n for _, n in late) * 8 / (late[-1][0] - start))
""")


def between(script: str, sender, receiver, port: str) -> float:
    """Run `script` as receiver then sender inside two testbed hosts' namespaces; the number
    the receiver prints."""
    def python(host, *args):
        return ["ip", "netns", "exec", host.namespace, sys.executable, "-c", script, *args]
    rx = subprocess.Popen(python(receiver, "recv", receiver.address, port),
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout.readline().strip() == "ready"
        subprocess.run(python(sender, "send", receiver.address, port), check=True, timeout=30)
        return float(rx.stdout.readline())
    finally:
        rx.kill()
        rx.wait()


def transfer_rate(sender, receiver) -> float:
    """Bits per second a 2 s TCP transfer achieves from `sender` to `receiver` (hosts of a
    testbed), run inside their namespaces."""
    return between(TRANSFER, sender, receiver, "5201")


@needs_root
def test_the_testbed_link_is_shaped_by_the_same_code(tmp_path, capsys):
    name, state_dir = f"l{PID}", str(tmp_path / "beds")
    made = tb.testbed_up(TestbedSpec(name, devices=1, link="20mbit", state_dir=state_dir))
    try:
        server, d1 = made.hosts
        up, down = transfer_rate(d1, server), transfer_rate(server, d1)
        with pytest.raises(FleetError, match=r"d1: eth0 already has a root qdisc tbf ecb: "
                                             r"\(the testbed's --link rate\)"):
            shape_set(load_inventory(made.inventory_path), ShapeSpec(up="5mbit"))
    finally:
        tb.testbed_down(name, state_dir)
    with capsys.disabled():
        print(f"\n[testbed --link 20mbit] up {up / 1e6:.2f} Mbit/s, down {down / 1e6:.2f} "
              "Mbit/s (TCP payload)", end="")
    assert abs(up / 20e6 - 1) < 0.1 and abs(down / 20e6 - 1) < 0.1
    assert leftovers(name, state_dir) == []


FRAMES = textwrap.dedent("""\
    import socket, struct, sys, time
    role, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    size, count = 100_000, 4
    if role == "send":   # a frame, then a pause: the gradients of a pipeline, one by one
        conn = socket.create_connection((address, port), timeout=10)
        for _ in range(count):
            conn.sendall(struct.pack("!d", time.time()) + bytes(size))
            time.sleep(0.8)
        conn.close()
        sys.exit()
    listener = socket.create_server((address, port))
    print("ready", flush=True)
    conn, _ = listener.accept()
    rates = []
    for _ in range(count):
        data = b""
        while len(data) < 8 + size:
            data += conn.recv(8 + size - len(data))
        rates.append(size * 8 / (time.time() - struct.unpack("!d", data[:8])[0]))
    print(max(rates))
""")


@needs_root
def test_a_frame_after_a_pause_crosses_a_slow_link_at_its_rate_not_as_a_burst(unchanged,
                                                                               capsys):
    """A token bucket passes a whole GSO packet once it has any tokens: before the testbed
    capped its hosts' GSO size and the bucket shrank, these frames crossed "2 Mbit/s" at
    5.6 Mbit/s, and the adaptive planner took the burst for the link's rate."""
    bed, inventory = unchanged
    server, d1 = bed.hosts[0], bed.hosts[1]
    try:
        shape_set(inventory, ShapeSpec(up="2mbit", down="2mbit"))
        fastest = between(FRAMES, server, d1, "5202")
    finally:
        assert all(r.ok for r in shape_clear(inventory))
    with capsys.disabled():
        print(f"\n[shape 2mbit] fastest 100 KB frame after a pause: {fastest / 1e6:.2f} Mbit/s",
              end="")
    assert fastest < 2e6 * 1.15


# --- no root needed -----------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "message"), [
    ({"up": "10 mbit"}, "--up: expected a rate from 8kbit to 100gbit like 10mbit"),
    ({"down": "fast"}, "--down: expected a rate"),
    ({"up": "1bit"}, "--up: expected a rate from 8kbit"),
    ({"delay": "20"}, "--delay: expected a time up to 60 s like 20ms"),
    ({"delay": "20ms", "jitter": "x"}, "--jitter: expected a time"),
    ({"loss": "0.5"}, "--loss: expected a percentage above 0 up to 100 like 0.5%"),
    ({"loss": "120%"}, "--loss: expected a percentage"),
    ({"jitter": "5ms"}, "--jitter: needs --delay"),
    ({}, "nothing to shape: give --up, --down, --delay or --loss"),
])
def test_spec_errors_name_the_option(fields, message):
    with pytest.raises(UsageError) as caught:
        ShapeSpec(**fields)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_parse_takes_what_train_shape_takes():
    spec = ShapeSpec.parse("up=10mbit, down=25Mbit,delay=20ms,jitter=5ms,loss=0.5%")
    assert spec == ShapeSpec("10mbit", "25Mbit", "20ms", "5ms", "0.5%") and spec.needs_netem
    assert str(ShapeSpec.parse("down=1gbit")) == "down=1gbit"
    for text, message in [("up10mbit", "--shape: expected KEY=VALUE"),
                          ("upp=1mbit", "--shape: expected KEY=VALUE,... with keys up, down"),
                          ("up=1mbit,up=2mbit", "--shape: up is given twice"),
                          ("up=1", "--shape: up=1: expected a rate"),
                          ("jitter=5ms", "--shape: jitter: needs delay")]:
        with pytest.raises(UsageError, match=message):
            ShapeSpec.parse(text)


def test_local_hosts_and_hosts_without_an_iface_are_refused_before_any_change():
    with pytest.raises(UsageError, match=r"device1: a local host .* shaping needs hosts with "
                                         r"their own interface .* edgectl_iface"):
        shape_set(local_fleet(), ShapeSpec(up="10mbit"))
    assert [r.value for r in shape_clear(local_fleet())] == ["nothing to clear"] * 2
    assert {r.value.note for r in shaping.shape_show(local_fleet())} == {
        "not shapeable (local host)"}
    inventory = parse_inventory({"all": {"children": {
        "servers": {"vars": {"edgectl_role": "server"}, "hosts": {"srv": None}},
        "devices": {"vars": {"edgectl_role": "device"},
                    "hosts": {"pi1": {"edgectl_iface": "eth0"}, "pi2": None}}}}}, "inv.yaml")
    with pytest.raises(UsageError, match="pi2: edgectl_iface is not set"):
        shape_set(inventory, ShapeSpec(up="10mbit"))
    with pytest.raises(UsageError, match="--hosts: srv is the server"):
        shape_set(inventory, ShapeSpec(up="10mbit"), ["srv"])


def test_the_tree_sends_ssh_direct_and_everything_else_ip_to_the_shaped_class():
    tree = [" ".join(argv) for argv in tc.htb_tree("eth0", "10mbit")]
    assert tree[0].startswith("qdisc add dev eth0 root handle ec: htb default 0")
    assert "rate 10mbit ceil 10mbit burst 6056 cburst 6056" in tree[1]
    ssh = [line for line in tree if "flowid ec:0" in line]
    assert len(ssh) == 4 and all("protocol 6 0xff" in line and " 22 0xffff" in line
                                 for line in ssh)
    assert sum("match u32 0 0 flowid ec:1" in line for line in tree) == 2
    assert tc.burst_bytes("100mbit") == 50_000 and tc.tbf_args("20mbit")[:2] == ["handle",
                                                                                "ecb:"]


def test_only_a_root_the_kernel_attached_counts_as_restorable():
    assert tc.is_kernel_default(None)
    assert tc.is_kernel_default({"kind": "fq_codel", "handle": "0:", "root": True})
    assert not tc.is_kernel_default({"kind": "fq_codel", "handle": "8001:", "root": True})
    assert not tc.is_kernel_default({"kind": "htb", "handle": "ec:", "root": True})


class FakeSession:
    """A HostSession stand-in that records commands and answers like sudo without NOPASSWD."""

    def __init__(self, host):
        self.host, self.commands = host, []

    def run(self, command, stdin=None, timeout=600):
        self.commands.append(command)
        return CommandResult(1, "", "sudo: a terminal is required to read the password; "
                                    "either use the -S option ...\nsudo: a password is required")


def test_a_non_root_login_runs_tc_through_sudo_and_a_password_prompt_says_what_to_allow():
    host = dataclasses.replace(local_fleet().devices[0], connection="ssh", user="pi")
    session = FakeSession(host)
    with pytest.raises(FleetError) as caught:
        tc.TcRunner(session).script([["tc", "qdisc", "show"]], "reading")
    assert session.commands == ["set -e\nsudo -n tc qdisc show\n"]
    assert str(caught.value).startswith("device1: sudo asks pi for a password; allow "
                                        "passwordless sudo for tc")
    with pytest.raises(FleetError, match="sudo asks pi for a password"):
        shaping.netem_available(session)


@needs_root
def test_train_with_shape_plans_from_links_measured_under_that_shape(unchanged, tmp_path,
                                                                     monkeypatch):
    """`train --shape`: shaping first, then the links are probed under it (once: the plan
    takes the links the shaping's own probe stored), then the plan. The plan records the
    link rates it used: within 10% of the shaped rates."""
    from edgectl.planning import profiling

    probes = []
    real_probe = profiling.probe_links
    monkeypatch.setattr(profiling, "probe_links",
                        lambda *a, **kw: probes.append(a) or real_probe(*a, **kw))
    bed, inventory = unchanged
    options = TrainOptions(strategy="pipar", batch_size=8, rounds=1, max_batches=2,
                           eval_samples=100)
    (result,) = plan_and_train(options, inventory, str(tmp_path / "runs"), "test",
                               store=str(tmp_path / "store"),
                               shape=ShapeSpec(up="10mbit", down="25mbit"))
    info = json.loads((Path(result.run_dir) / "run.json").read_text())
    assert info["status"] == "completed"
    for device in info["plan"]["devices"]:
        assert abs(device["uplink_bps"] / 10e6 - 1) < 0.1, device
        assert abs(device["downlink_bps"] / 25e6 - 1) < 0.1, device
        assert device["split_point"] >= 1
    assert [s["up"] for s in info["shaping"]] == ["10mbit", "10mbit"]
    assert len(probes) == 1
    # each direction of each device's connection paced to 1.05x the shaped rate, by the
    # kernel (held_bps is what the socket holds)
    assert info["placements"]["link_pacing"]["devices"] == {
        d: [10e6 * PACING_FACTOR, 25e6 * PACING_FACTOR] for d in ("d1", "d2")}
    assert pacing_events(result.run_dir) == pytest.approx({
        (d, 1, way): rate * PACING_FACTOR
        for d in ("d1", "d2") for way, rate in (("up", 10e6), ("down", 25e6))})


@needs_root
def test_a_change_at_a_round_start_is_in_place_before_that_round_runs(unchanged, tmp_path):
    """The server waits for the coordinator between rounds when a schedule changes rates at
    a round start: shaping a throttled host over SSH took 10-30 s, and without the wait a
    whole run had ended before its "round 2" change landed."""
    from edgectl.network.schedule import load_schedule
    from edgectl.planning.adaptive import measure_round

    bed, inventory = unchanged
    schedule = tmp_path / "drop.yaml"
    schedule.write_text("- {at_round: 2, up: 5mbit, down: 5mbit}\n")
    options = TrainOptions(strategy="pipar", split_point=1, microbatches=2, batch_size=16,
                           rounds=2, max_batches=4, eval_samples=100)
    (result,) = plan_and_train(options, inventory, str(tmp_path / "runs"), "test",
                               shape=ShapeSpec(up="25mbit", down="25mbit"),
                               schedule=load_schedule(str(schedule), inventory))
    events = [json.loads(x) for x in (Path(result.run_dir) / "events.jsonl").read_text()
              .splitlines()]
    (change,) = [e for e in events if e["type"] == "bandwidth"]
    rounds = [e for e in events if e["type"] == "round"]
    assert rounds[0]["end"] <= change["time"] <= rounds[1]["start"]
    assert record_errors(result.run_dir) == []   # bandwidth events have their schema
    # the pacing follows the change from the round it lands in
    assert pacing_events(result.run_dir) == pytest.approx({
        (d, r, way): rate * PACING_FACTOR for d in ("d1", "d2") for way in ("up", "down")
        for r, rate in ((1, 25e6), (2, 5e6))})
    links = {d: LinkProfile(d, "server", 1.0, 1.0, 0.0, 1.0) for d in ("d1", "d2")}
    for r, rate in ((1, 25e6), (2, 5e6)):
        measured = measure_round([e for e in events if e["type"] == "span"
                                  and e["round"] == r], list(links), links)
        # Payload over busy time: below the shaped rate by TCP/IP headers (~6%) and by the
        # spans' own timing on a loaded machine (CI measured 0.79 of 5 Mbit/s on 2 cores),
        # never far above it; the rate the other round had is 5x away either way.
        for device, m in measured.items():
            assert m.uplink_bps is not None and 0.65 < m.uplink_bps / rate < 1.1, \
                (r, device, m)



@needs_root
def test_a_cut_link_is_lost_by_heartbeat_and_the_device_rejoins_when_it_returns(fleet, tmp_path):
    """d1's interface goes down in its namespace mid-round: no close, no error, just
    silence. The heartbeat timeout fires, the run goes on with d2, and d1 comes
    back (reconnecting by itself, or restarted over SSH) once the link is up again."""
    import threading

    DOWN_S = 8.0
    bed, inventory = fleet
    ns = next(h.namespace for h in bed.hosts if h.name == "d1")
    cut: dict[str, float] = {}

    def link(state: str) -> None:
        net.run(["ip", "netns", "exec", ns, "ip", "link", "set", "eth0", state], "link " + state)
        cut.setdefault(state, time.time())

    def on_event(event: dict) -> None:
        if (event["type"] == "progress" and event["host"] == "d1" and "down" not in cut
                and event["round"] == 2):
            link("down")
            threading.Timer(DOWN_S, link, args=("up",)).start()

    # long enough for d1 to come back (lost after ~3 s, back about a second after the
    # link returns: in round 8 of 24 when measured) with rounds to spare, but cheap: few
    # mini-batches (two devices that each think they own the host's cores slow each other
    # down many times), and an evaluation on the server that keeps every round, with one
    # device or two, at half a second or more
    options = TrainOptions(strategy="pipar", split_point=2, microbatches=2, rounds=16,
                           max_batches=2, eval_samples=4000, heartbeat_timeout=3)
    try:
        result = train(options, inventory, str(tmp_path), "test link cut", on_event)
    finally:
        if "down" in cut and "up" not in cut:
            time.sleep(max(0.0, cut["down"] + DOWN_S + 0.5 - time.time()))
        link("up")   # idempotent: the link is up whatever happened
    events = [json.loads(x) for x in (Path(result.run_dir) / "events.jsonl").read_text()
              .splitlines()]
    lost = [e for e in events if e["type"] == "device_lost"]
    rounds = {e["round"]: e for e in events if e["type"] == "round"}
    # d1 is lost once, in the round the cut landed in or the next: the cut can land after d1
    # has done its part of a round (its progress, the trigger, is relayed over SSH and can
    # arrive late; the server may still be evaluating), which then ends with d1 in it (CI,
    # twice: the cut in round 2 or 3, d1 lost in round 3)
    cut_round = min(r for r, e in rounds.items() if e["end"] >= cut["down"])
    assert cut_round in (2, 3)
    assert [e["device"] for e in lost] == ["d1"]
    lost_round = lost[0]["round"]
    assert lost_round in (cut_round, cut_round + 1)
    assert all("d1" in rounds[r]["devices"] for r in range(1, lost_round))
    assert "heartbeat timeout" in lost[0]["reason"] or "closed" in lost[0]["reason"]
    joined = [e for e in events if e["type"] == "device_joined" and e["device"] == "d1"]
    assert joined, "d1 never came back after its link returned"
    assert list(rounds) == list(range(1, 17))
    assert rounds[lost_round]["devices"] == ["d2"]
    assert "d1" in rounds[16]["devices"]
    assert record_errors(result.run_dir) == []
    print(f"\nlink cut: lost after {lost[0]['time'] - cut['down']:.1f} s "
          f"(heartbeat timeout 3 s); back {joined[0]['time'] - cut['up']:.1f} s after the "
          f"link returned, in round {joined[0]['round']}")
