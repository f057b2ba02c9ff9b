"""The testbed against the real thing: namespaces, bridge, sshd, cgroups and tbf on this host.

Tests marked `testbed` need root (see conftest.py). Every testbed here has a name made from
this process's pid and a state folder under pytest's tmp_path, and each test checks that
what it made is gone afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import paramiko
import psutil
import pytest

from edgectl.errors import FleetError, UsageError
from edgectl.fleet.inventory import load_inventory
from edgectl.network import cgroups
from edgectl.network import testbed as tb  # its testbed_* functions would look like tests here
from edgectl.network import testbed_net as net
from edgectl.network.testbed import Testbed, TestbedSpec, require_root

REPO = Path(__file__).resolve().parents[2]
PID = os.getpid() % 1_000_000
needs_root = pytest.mark.testbed


def running(pid: int) -> bool:
    """Alive and not a zombie (killed processes wait for this host's init to reap them)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def leftovers(name: str, state_dir: str) -> list[str]:
    """Every object of testbed `name` still on this host."""
    found = [ns for ns in net.netns_names() if ns.startswith(f"ec-{name}-")]
    found += [link["ifname"] for link in net.ip_json("link")
              if link["ifname"] == f"ecb-{name}" or link["ifname"].startswith(f"ecv{name}-")]
    root = os.path.dirname(cgroups.cgroup_dir("x"))
    found += [d for d in os.listdir(root) if d.startswith(f"ec-{name}-")]
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and \
                any(f"/{name}/sshd/" in arg for arg in proc.info["cmdline"] or []):
            found.append(f"sshd pid {proc.pid}")
    if os.path.exists(os.path.join(state_dir, name)):
        found.append(f"folder {os.path.join(state_dir, name)}")
    return found


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """A server and 2 devices limited to 0.25 cores each on 20 Mbit/s links."""
    state_dir = str(tmp_path_factory.mktemp("testbeds"))
    made = tb.testbed_up(TestbedSpec(f"m{PID}", devices=2, device_cpu=(0.25,), link="20mbit",
                                     state_dir=state_dir))
    yield made
    tb.testbed_down(made.name, state_dir)
    assert leftovers(made.name, state_dir) == []


def banner(address: str) -> bytes:
    with socket.create_connection((address, 22), timeout=5) as conn:
        return conn.recv(64)


def ssh(bed: Testbed, host: str) -> paramiko.SSHClient:
    """A session to `host` with the testbed's key, its host key checked against known_hosts."""
    address = next(h.address for h in bed.hosts if h.name == host)
    client = paramiko.SSHClient()
    client.load_host_keys(bed.known_hosts_path)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, 22, username="root", key_filename=bed.key_path,
                   look_for_keys=False, allow_agent=False, timeout=10)
    return client


def run_remote(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, _ = client.exec_command(command, timeout=10)
    text = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0
    return text


@needs_root
def test_every_host_has_a_namespace_on_the_bridge(bed):
    assert [h.namespace for h in bed.hosts] == [f"ec-{bed.name}-{n}" for n in ("server", "d1",
                                                                             "d2")]
    assert all(net.netns_exists(h.namespace) for h in bed.hosts)
    assert [h.address.rsplit(".", 1)[1] for h in bed.hosts] == ["2", "11", "12"]
    bridge = net.ip_json("addr", "show", "dev", bed.bridge)[0]
    assert bridge["addr_info"][0]["local"].endswith(".1")
    assert bed.subnet.startswith("10.213.") and bed.subnet.endswith(".0/24")
    for host in bed.hosts:
        link = net.ip_json("link", "show", "dev", host.veth_host)[0]
        assert link["master"] == bed.bridge and len(host.veth_host) <= 15


@needs_root
def test_sshd_answers_on_every_address(bed):
    for host in bed.hosts:
        assert banner(host.address).startswith(b"SSH-2.0-"), host.name


@needs_root
def test_device_login_checks_host_key_and_runs_in_the_device_cgroup(bed):
    with ssh(bed, "d1") as client:
        cgroups = run_remote(client, "cat /proc/self/cgroup")
        quota = run_remote(client, "echo $EDGECTL_CPU_QUOTA $EDGECTL_CPU_PERIOD_US")
        # the device reaches the server across the bridge
        reach = run_remote(client, f"{sys.executable} -c \"import socket; "
                                   f"print(socket.create_connection(('{bed.hosts[0].address}', "
                                   "22), 5).recv(8))\"")
    assert f"/ec-{bed.name}-d1\n" in cgroups
    assert quota.strip() == "0.25 10000"
    assert "SSH-2.0" in reach


@needs_root
def test_a_wrong_host_key_is_refused(bed, tmp_path):
    d1, d2 = bed.hosts[1:3]
    lines = Path(bed.known_hosts_path).read_text().splitlines()
    d2_key = next(line for line in lines if line.startswith(f"{d2.address} "))
    forged = tmp_path / "known_hosts"
    forged.write_text(d2_key.replace(d2.address, d1.address, 1) + "\n")
    client = paramiko.SSHClient()
    client.load_host_keys(str(forged))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(d1.address, 22, username="root", key_filename=bed.key_path,
                       look_for_keys=False, allow_agent=False, timeout=10)
    client.close()


@needs_root
def test_each_device_link_has_a_tbf_both_ways(bed):
    for host in bed.hosts[1:]:
        down = json.loads(net.run(["tc", "-j", "qdisc", "show", "dev", host.veth_host], "tc"))
        assert down[0]["kind"] == "tbf" and down[0]["options"]["rate"] == 20_000_000 // 8
        assert net.qdisc_kinds("eth0", host.namespace) == ["tbf"]
    assert "tbf" not in net.qdisc_kinds(bed.hosts[0].veth_host)  # the server is not shaped


@needs_root
def test_inventory_parses_with_one_server_and_two_devices(bed):
    inventory = load_inventory(bed.inventory_path)
    assert inventory.server.name == "server" and inventory.server.address == bed.hosts[0].address
    assert [d.name for d in inventory.devices] == ["d1", "d2"]
    for host in inventory.hosts:
        assert (host.port, host.user, host.connection, host.iface) == (22, "root", "ssh", "eth0")
        assert host.key_file == bed.key_path and host.known_hosts == bed.known_hosts_path
        assert host.python == sys.executable
    assert len({h.workdir for h in inventory.hosts}) == 3


@needs_root
def test_status_lists_the_testbed_alive(bed):
    [status] = tb.testbed_status(os.path.dirname(bed.directory))
    assert status.name == bed.name and status.complete and status.healthy
    assert [c.host for c in status.checks] == ["server", "d1", "d2"]


@needs_root
def test_a_second_up_of_the_same_name_is_refused(bed):
    spec = TestbedSpec(bed.name, devices=1, state_dir=os.path.dirname(bed.directory))
    with pytest.raises(UsageError, match=f"testbed {bed.name} exists; run `edgectl testbed "
                                         f"down {bed.name}` first"):
        tb.testbed_up(spec)


@needs_root
def test_down_of_an_unknown_name_lists_the_existing_ones(bed):
    with pytest.raises(UsageError, match=f"no testbed 'nosuch'.*existing testbeds: {bed.name}"):
        tb.testbed_down("nosuch", os.path.dirname(bed.directory))


@needs_root
def test_cpu_quota_slows_a_fixed_workload(bed, capsys):
    """Not a timed assertion: prints the slowdown of 0.25 cores against unthrottled."""
    d1 = bed.hosts[1]
    free = _time_matmuls(d1.namespace, cgroup=None)
    limited = _time_matmuls(d1.namespace, cgroup=d1.cgroup)
    with capsys.disabled():
        print(f"\n[cpu quota] {d1.cpu:g} cores: {limited:.2f} s vs unthrottled {free:.2f} s "
              f"= {limited / free:.1f}x slower (ideal {1 / d1.cpu:.1f}x)")
    assert limited > free  # the quota applies at all


WORKLOAD = textwrap.dedent("""\
    import sys, time, torch
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    for _ in range(20): a @ a
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for _ in range(2000): a @ a
    print(time.perf_counter() - start, flush=True)
""")


def _time_matmuls(namespace: str, cgroup: str | None) -> float:
    """Seconds of a fixed single-thread matmul loop inside `namespace`, in `cgroup` if given
    (joined after torch is imported, so only the loop is throttled)."""
    proc = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", WORKLOAD],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        if cgroup:
            cgroups.move_to_cgroup(proc.pid, cgroup)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


@needs_root
def test_down_removes_everything(tmp_path):
    name, state_dir = f"d{PID}", str(tmp_path)
    made = tb.testbed_up(TestbedSpec(name, devices=1, device_cpu=(0.5,), server_cpu=1.0,
                                     link="5mbit", state_dir=state_dir))
    with ssh(made, "d1") as client:  # like an agent: started over SSH, left running
        pid = int(run_remote(client, "sleep 300 >/dev/null 2>&1 </dev/null & echo $!"))
    assert running(pid)
    removed = tb.testbed_down(name, state_dir)
    assert leftovers(name, state_dir) == []
    assert f"process {pid}" in removed and not running(pid)
    assert f"bridge {made.bridge}" in removed and f"folder {made.directory}" in removed
    assert {f"cgroup {h.cgroup}" for h in made.hosts} <= set(removed)
    assert tb.testbed_status(state_dir) == []


@needs_root
def test_down_after_a_crash_midway_and_objects_removed_by_hand(tmp_path):
    name, state_dir = f"c{PID}", str(tmp_path)
    crash = textwrap.dedent(f"""\
        import os
        from edgectl.network import testbed, testbed_net
        testbed_net.shape_link = lambda *args: os._exit(9)  # dies after the cgroups
        testbed.testbed_up(testbed.TestbedSpec({name!r}, devices=2, device_cpu=(0.25,),
                                               link="1mbit", state_dir={state_dir!r}))
    """)
    done = subprocess.run([sys.executable, "-c", crash], cwd=REPO, timeout=60)
    assert done.returncode == 9
    [half] = tb.testbed_status(state_dir)
    assert not half.complete and half.objects[-1] == ("tbf", half.hosts[1].veth_host)
    os.kill(half.hosts[1].sshd_pid, signal.SIGKILL)  # gone by hand before `down`
    net.remove_netns(half.hosts[0].namespace)
    tb.testbed_down(name, state_dir)
    assert leftovers(name, state_dir) == []


@needs_root
@pytest.mark.parametrize("failure", [FleetError("sshd failed"), KeyboardInterrupt()])
def test_an_up_that_fails_midway_leaves_nothing(tmp_path, monkeypatch, failure):
    name, state_dir = f"f{PID}", str(tmp_path)
    started = []
    real_start = net.start_sshd

    def start_then_fail(ns: str, folder: str) -> None:
        if started:
            raise failure
        started.append(ns)
        real_start(ns, folder)

    monkeypatch.setattr(net, "start_sshd", start_then_fail)
    with pytest.raises(type(failure)):
        tb.testbed_up(TestbedSpec(name, devices=2, device_cpu=(0.25,), state_dir=state_dir))
    assert started and leftovers(name, state_dir) == []


# --- no root needed -----------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "Bad-Name"}, "NAME: expected 1-8 of a-z 0-9, got 'Bad-Name'"),
    ({"name": "toolongname"}, "NAME: expected 1-8"),
    ({"devices": 0}, "--devices: expected an integer 1..16, got 0"),
    ({"devices": 17}, "--devices: expected an integer 1..16, got 17"),
    ({"device_cpu": (0.5, 0.5, 0.5)}, "--cpu: give one value or 2 (one per device), got 3"),
    ({"device_cpu": (0,)}, "--cpu: expected a number of cores >= 0.01"),
    ({"server_cpu": float("nan")}, "--server-cpu: expected a number of cores"),
    ({"link": "20 furlongs"}, "--link: expected a rate like 20mbit"),
])
def test_spec_errors_name_the_option(changes, message):
    with pytest.raises(UsageError) as caught:
        TestbedSpec(**{"name": "ok", "devices": 2} | changes)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_spec_spreads_one_cpu_value_over_every_device():
    spec = TestbedSpec("ok", devices=3, device_cpu=(0.25,), state_dir="rel")
    assert [spec.cpu_of(i) for i in (1, 2, 3)] == [0.25] * 3
    assert os.path.isabs(spec.state_dir)
    assert TestbedSpec("ok", devices=2, device_cpu=[1, 0.5]).cpu_of(2) == 0.5
    assert TestbedSpec("ok").cpu_of(1) is None


def test_without_root_every_command_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    expected = "testbed needs root: .* run as root \\(sudo\\)"
    with pytest.raises(FleetError, match=expected):
        require_root()
    with pytest.raises(FleetError, match=expected):
        tb.testbed_up(TestbedSpec("ok", state_dir=str(tmp_path)))
    with pytest.raises(FleetError, match=expected):
        tb.testbed_down("ok", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("v2", [True, False])
def test_cgroup_quota_files_for_both_layouts(tmp_path, monkeypatch, v2):
    """Only one layout is real on a given host (cgroup v1 on the development machine), so
    both are also checked on a fake /sys/fs/cgroup of plain files."""
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", str(tmp_path))
    if v2:
        (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    else:
        (tmp_path / "cpu").mkdir()
    path = cgroups.cgroup_dir("ec-x-d1")
    cgroups.add_cgroup(path, 0.25)
    if v2:
        assert path == str(tmp_path / "ec-x-d1")
        assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
        assert (tmp_path / "ec-x-d1" / "cpu.max").read_text() == "2500 10000"
    else:
        assert path == str(tmp_path / "cpu" / "ec-x-d1")
        assert (tmp_path / "cpu" / "ec-x-d1" / "cpu.cfs_quota_us").read_text() == "2500"
        assert (tmp_path / "cpu" / "ec-x-d1" / "cpu.cfs_period_us").read_text() == "10000"


@pytest.mark.parametrize("cores, expected", [(2.0, "20000 10000"), (0.1, "1000 10000"),
                                             (0.05, "1000 20000"), (0.01, "1000 100000")])
def test_small_quotas_get_a_longer_period_not_a_larger_share(tmp_path, monkeypatch, cores,
                                                              expected):
    """The kernel's least quota is 1 ms: below 0.1 cores the period grows, so the share
    stays what was asked for."""
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    cgroups.add_cgroup(str(tmp_path / "h"), cores)
    assert (tmp_path / "h" / "cpu.max").read_text() == expected


def test_cgroup_v2_without_the_cpu_controller_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    with pytest.raises(FleetError, match="does not offer the cpu controller"):
        cgroups.add_cgroup(cgroups.cgroup_dir("ec-x-d1"), 0.5)


@needs_root
def test_testbed_and_shape_commands_print_json_a_script_can_read(tmp_path, monkeypatch):
    """`--format json` on up, status, shape set/show/clear and down: JSON on stdout only."""
    from typer.testing import CliRunner

    from edgectl.cli import app

    monkeypatch.setenv("EDGECTL_SHAPING", str(tmp_path / "shaping"))
    runner, name, state_dir = CliRunner(), f"j{PID}", str(tmp_path / "beds")

    def cli(*args: str) -> dict:
        result = runner.invoke(app, [*args, "--format", "json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)
    try:
        up = cli("testbed", "up", name, "--devices", "1", "--state-dir", state_dir)
        assert up["name"] == name and [h["name"] for h in up["hosts"]] == ["server", "d1"]
        inventory = up["inventory_path"]
        (status,) = cli("testbed", "status", "--state-dir", state_dir)["testbeds"]
        assert status["name"] == name and status["healthy"] is True
        (shaped,) = cli("shape", "set", "-i", inventory, "--up", "5mbit", "--no-measure")["shaped"]
        assert (shaped["device"], shaped["up"], shaped["measured_up_bps"]) == ("d1", "5mbit", None)
        shown = {h["host"]: h for h in cli("shape", "show", "-i", inventory)["hosts"]}
        assert shown["d1"]["ok"] and shown["d1"]["result"]["applied"]["spec"]["up"] == "5mbit"
        cleared = cli("shape", "clear", "-i", inventory)["hosts"]
        assert [(h["host"], h["ok"]) for h in cleared] == [("d1", True)]
    finally:
        down = cli("testbed", "down", name, "--state-dir", state_dir)
    assert down["name"] == name and f"bridge ecb-{name}" in down["removed"]
    assert leftovers(name, state_dir) == []


@pytest.mark.parametrize(("text", "message"), [
    ("devices=2,cpus=0.1", "--testbed: unknown key 'cpus'; the keys are devices, cpu, "
                           "server-cpu, link, state-dir"),
    ("devices", "--testbed: expected key=value pairs such as devices=2,cpu=0.1,server-cpu=1; "
                "got 'devices'"),
    ("cpu=fast", "--testbed: devices is a whole number, cpu and server-cpu numbers"),
    ("devices=2,cpu=0.1/0.2/0.3", "--cpu: give one value or 2 (one per device), got 3"),
    ("link=20 furlongs", "--link: expected a rate like 20mbit"),
])
def test_a_train_testbed_option_that_is_wrong_is_one_line(text, message):
    from edgectl.runs.testbed_fleet import parse_testbed_option

    with pytest.raises(UsageError) as caught:
        parse_testbed_option(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_testbed_option_reads_what_testbed_up_takes():
    from edgectl.runs.testbed_fleet import parse_testbed_option

    spec = parse_testbed_option("devices=2,cpu=0.1/0.2,server-cpu=1,link=20mbit,state-dir=/x")
    assert (spec.devices, spec.device_cpu, spec.server_cpu, spec.link, spec.state_dir) == \
        (2, (0.1, 0.2), 1.0, "20mbit", "/x")
    assert spec.name == f"tr{os.getpid() % 1_000_000}"


@needs_root
def test_train_on_a_testbed_of_its_own_leaves_nothing_behind(tmp_path):
    """`train --testbed`: up, provisioned, one run over SSH, down (on an error or Ctrl-C
    too: the same context as bench's, tests/unit/test_bench_fleets.py)."""
    from typer.testing import CliRunner

    from edgectl.cli import app

    state_dir, runs = str(tmp_path / "beds"), tmp_path / "runs"
    name = f"tr{os.getpid() % 1_000_000}"
    args = ["train", "--testbed", f"devices=1,cpu=0.5,server-cpu=1,state-dir={state_dir}",
            "--strategy", "split", "--split-point", "2", "--rounds", "1", "--max-batches",
            "2", "--eval-samples", "100", "--runs-dir", str(runs)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"bringing up testbed {name}" in result.output
    (run_dir,) = runs.iterdir()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed"
    assert {h["name"]: h["connection"] for h in info["hosts"]} == {"server": "ssh", "d1": "ssh"}
    assert f"taking down testbed {name}" in result.output
    assert leftovers(name, state_dir) == []
