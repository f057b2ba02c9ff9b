"""The testbed: an emulated fleet on this Linux host, made, listed and removed.

`testbed_up` builds a server and N devices, each a network namespace on a private bridge
with its own sshd (key-only login), an optional CPU quota (a cgroup holding that sshd, so
every session and agent inherits it) and an optional link rate (tbf both ways), and writes
an inventory for them. Host operations live in edgectl/network/testbed_net.py and cgroups.py,
the spec and the state record in testbed_spec.py.

Note: crash safety. Everything `up` makes is recorded in STATE_DIR/NAME/state.json, written
atomically, BEFORE the object is created, so `down` can remove a half-made testbed after a
crash; `down` tolerates recorded objects that never came to be or are already gone. A
failing or interrupted `up` removes what it made before re-raising. Objects are named with
the testbed's name (ecb-NAME, ec-NAME-HOST, ecvNAME-I) and its subnet is a /24 of
10.213.0.0/16 that nothing on the host uses, so testbeds of several projects can coexist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import os
import shutil
import sys

import yaml

from edgectl.errors import FleetError, UsageError
from edgectl.network import cgroups
from edgectl.network import testbed_net as net
from edgectl.network.shaping_state import TESTBED_LINK_VAR, forget_state
from edgectl.network.testbed_spec import (
    DEFAULT_STATE_DIR,
    NAME_PATTERN,
    STATE_FILE,
    HostCheck,
    Testbed,
    TestbedHost,
    TestbedSpec,
    device_name,
    load_testbed,
    save_testbed,
    testbed_names,
)

SSH_PORT = 22      # every testbed host's sshd, on its own address
IFACE = "eth0"     # every testbed host's end of its veth: the interface shaping shapes


def require_root() -> None:
    if os.geteuid() != 0:
        raise FleetError("testbed needs root: it creates network namespaces, a bridge, cgroups "
                         "and runs sshd; run as root (sudo)")


# --- up ---------------------------------------------------------------------------------------

def testbed_up(spec: TestbedSpec) -> Testbed:
    """Build the testbed `spec` describes (see the module's Note); what was made."""
    require_root()
    os.makedirs(spec.state_dir, mode=0o755, exist_ok=True)
    with open(os.path.join(spec.state_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one `up` at a time picks a subnet
        _refuse_existing(spec)
        builder = _Builder(_plan(spec))
        try:
            builder.build()
        except BaseException:
            # What cannot be undone stays recorded: `status` shows it, `down` retries it.
            with contextlib.suppress(FleetError):
                _remove(builder.testbed)
            raise
        return builder.testbed


def _refuse_existing(spec: TestbedSpec) -> None:
    directory = os.path.join(spec.state_dir, spec.name)
    if not os.path.exists(os.path.join(directory, STATE_FILE)):
        with contextlib.suppress(OSError):  # empty: an `up` that died before its first save
            os.rmdir(directory)
    if os.path.exists(directory):
        raise UsageError(f"testbed {spec.name} exists; run `edgectl testbed down {spec.name}` "
                         "first")
    leftovers = [n for n in net.netns_names() if n.startswith(f"ec-{spec.name}-")]
    leftovers += [f"ecb-{spec.name}"] if net.link_exists(f"ecb-{spec.name}") else []
    if leftovers:
        raise UsageError(f"testbed {spec.name} exists on this host ({', '.join(leftovers)}) but "
                         f"not in {spec.state_dir}; pass the --state-dir that made it, or choose "
                         "another NAME")


def _plan(spec: TestbedSpec) -> Testbed:
    """Names, addresses and paths of every object, before anything exists."""
    first = int(hashlib.sha256(spec.name.encode()).hexdigest()[:8], 16) % 256
    subnet = net.free_subnet(first)
    directory = os.path.join(spec.state_dir, spec.name)
    roles = [("server", "server", 2, spec.server_cpu)]
    roles += [(device_name(i), "device", 10 + i, spec.cpu_of(i))
              for i in range(1, spec.devices + 1)]
    hosts = tuple(
        TestbedHost(name=host, role=role, namespace=f"ec-{spec.name}-{host}",
                    address=str(subnet[last]), veth_host=f"ecv{spec.name}-{index}",
                    veth_ns=IFACE, workdir=os.path.join(directory, "hosts", host), cpu=cpu)
        for index, (host, role, last, cpu) in enumerate(roles))
    return Testbed(
        name=spec.name, subnet=str(subnet), bridge=f"ecb-{spec.name}", link=spec.link,
        hosts=hosts, directory=directory,
        inventory_path=os.path.join(directory, f"{spec.name}.inventory.yaml"),
        known_hosts_path=os.path.join(directory, "known_hosts"),
        key_path=os.path.join(directory, "id_ed25519"),
        state_path=os.path.join(directory, STATE_FILE))


class _Builder:
    """Makes a planned testbed's objects in order, recording each one first."""

    def __init__(self, testbed: Testbed):
        self.testbed = testbed

    def record(self, kind: str, what: str) -> None:
        """Note `what` in the state file before it is made; refuse one that exists already
        (another project's), since a rollback would delete it."""
        exists = {"bridge": net.link_exists, "veth": net.link_exists,
                  "netns": net.netns_exists, "cgroup": os.path.exists}.get(kind)
        if exists and exists(what):
            raise FleetError(f"{kind} {what} already exists on this host but is not part of "
                             f"testbed {self.testbed.name}; remove it or choose another NAME")
        tb = self.testbed
        self.testbed = dataclasses.replace(tb, objects=(*tb.objects, (kind, what)))
        save_testbed(self.testbed)

    def update(self, namespace: str, **changes: object) -> None:
        hosts = tuple(dataclasses.replace(h, **changes) if h.namespace == namespace else h
                      for h in self.testbed.hosts)
        self.testbed = dataclasses.replace(self.testbed, hosts=hosts)
        save_testbed(self.testbed)

    def build(self) -> None:
        tb = self.testbed
        self.testbed = dataclasses.replace(tb, objects=(("dir", tb.directory),))
        os.makedirs(tb.directory, mode=0o755)  # keys inside are 0600
        save_testbed(self.testbed)
        network = ipaddress.ip_network(tb.subnet)
        self.record("bridge", tb.bridge)
        net.add_bridge(tb.bridge, f"{network[1]}/{network.prefixlen}")
        for host in tb.hosts:
            self.record("netns", host.namespace)
            net.add_netns(host.namespace)
            self.record("veth", host.veth_host)
            net.add_veth(host.veth_host, host.namespace, host.veth_ns, tb.bridge,
                         f"{host.address}/{network.prefixlen}")
        _write_keys(tb)
        for host in tb.hosts:
            self.record("sshd", host.namespace)
            self.update(host.namespace, sshd_pid=_start_sshd(tb, host))
        for host in (h for h in tb.hosts if h.cpu is not None):
            path = cgroups.cgroup_dir(f"ec-{tb.name}-{host.name}")
            self.record("cgroup", path)
            cgroups.add_cgroup(path, host.cpu)
            self.update(host.namespace, cgroup=path)
            cgroups.move_to_cgroup(self.testbed.hosts[tb.hosts.index(host)].sshd_pid, path)
        if tb.link:
            for host in (h for h in tb.hosts if h.role == "device"):
                self.record("tbf", host.veth_host)
                net.shape_link(host.veth_host, None, tb.link)  # downlink
                self.record("tbf", f"{host.veth_ns}@{host.namespace}")
                net.shape_link(host.veth_ns, host.namespace, tb.link)  # uplink
        _write_inventory(self.testbed)
        self.testbed = dataclasses.replace(self.testbed, complete=True)
        save_testbed(self.testbed)


def _sshd_dir(tb: Testbed, host: TestbedHost) -> str:
    return os.path.join(tb.directory, "sshd", host.name)


def _write_keys(tb: Testbed) -> None:
    """The client key pair, authorized_keys, and each host's key, folders and known_hosts."""
    net.keygen(tb.key_path, f"edgectl-testbed-{tb.name}")
    shutil.copyfile(tb.key_path + ".pub", os.path.join(tb.directory, "authorized_keys"))
    lines = []
    for host in tb.hosts:
        os.makedirs(host.workdir, mode=0o755)
        os.makedirs(_sshd_dir(tb, host), mode=0o700)
        key = net.keygen(os.path.join(_sshd_dir(tb, host), "ssh_host_ed25519_key"),
                         f"{host.name}@{tb.name}")
        lines.append(f"{host.address} {key}\n")
    with open(tb.known_hosts_path, "w") as f:
        f.writelines(lines)


def _start_sshd(tb: Testbed, host: TestbedHost) -> int:
    """sshd for `host` (key-only login as root); its pid once it accepts connections."""
    folder = _sshd_dir(tb, host)
    net.write_sshd_config(folder, host.address, os.path.join(tb.directory, "authorized_keys"),
                          host.cpu, f"sshd of testbed {tb.name}, host {host.name}")
    net.start_sshd(host.namespace, folder)
    return net.wait_sshd(folder, host.address)


def _write_inventory(tb: Testbed) -> None:
    """The testbed's inventory. A host's CPU quota and the link rate are vars of their own
    (`testbed_cpu`, `testbed_link`) so that the inventory's digest, and with it the profile
    store's key, changes with them: a testbed brought up again under the same name with
    other quotas is profiled afresh, not planned from the old one. The link rate is also
    what a run paces the links to (edgectl.network.shaping_state.shaped_rates)."""
    def entries(role: str) -> dict:
        return {h.name: {"ansible_host": h.address, "edgectl_workdir": h.workdir,
                         **({"testbed_cpu": h.cpu} if h.cpu is not None else {})}
                for h in tb.hosts if h.role == role}
    data = {"all": {
        "vars": {"ansible_port": SSH_PORT, "ansible_user": "root",
                 "ansible_ssh_private_key_file": tb.key_path, "ansible_connection": "ssh",
                 "edgectl_known_hosts": tb.known_hosts_path, "edgectl_python": sys.executable,
                 "edgectl_iface": IFACE, **({TESTBED_LINK_VAR: tb.link} if tb.link else {})},
        "children": {
            "servers": {"vars": {"edgectl_role": "server"}, "hosts": entries("server")},
            "devices": {"vars": {"edgectl_role": "device"}, "hosts": entries("device")}}}}
    with open(tb.inventory_path, "w") as f:
        f.write(f"# testbed {tb.name} on this host, written by `edgectl testbed up`; "
                f"removed by `edgectl testbed down {tb.name}`.\n")
        yaml.safe_dump(data, f, sort_keys=False)


# --- down and status -------------------------------------------------------------------------

def testbed_down(name: str, state_dir: str = DEFAULT_STATE_DIR) -> list[str]:
    """Remove testbed `name` and everything recorded for it; what was actually removed."""
    require_root()
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"NAME: expected 1-8 of a-z 0-9, got {name!r}")
    return _remove(load_testbed(name, os.path.abspath(state_dir)))


def _remove(tb: Testbed) -> list[str]:
    """Processes first (so cgroups empty), then qdiscs, cgroups, links, namespaces, and the
    folder last: when something cannot be removed the state stays for another `down`."""
    of = {kind: [what for k, what in tb.objects if k == kind] for kind in
          ("dir", "bridge", "netns", "veth", "sshd", "cgroup", "tbf")}
    hosts = {h.namespace: h for h in tb.hosts}
    pids = [p for ns in of["sshd"]
            if net.sshd_alive(p := _sshd_pid(tb, hosts[ns]), _sshd_dir(tb, hosts[ns]))]
    pids += [p for ns in of["netns"] for p in net.netns_pids(ns)]
    pids += [p for path in of["cgroup"] for p in cgroups.cgroup_pids(path)]
    removed = [f"process {pid}" for pid in net.kill_all(pids)]
    failed = []
    steps = [(f"tbf {target}", net.remove_tbf, target) for target in of["tbf"]]
    steps += [(f"cgroup {path}", cgroups.remove_cgroup, path) for path in of["cgroup"]]
    # veths before namespaces: deleting a namespace deletes its veth too, but asynchronously
    steps += [(f"veth {veth}", net.remove_link, veth) for veth in of["veth"]]
    steps += [(f"netns {ns}", net.remove_netns, ns) for ns in of["netns"]]
    steps += [(f"bridge {bridge}", net.remove_link, bridge) for bridge in of["bridge"]]
    for label, remove, target in steps:
        try:
            if remove(target):
                removed.append(label)
        except FleetError as exc:
            failed.append(str(exc))
    if failed:
        raise FleetError(f"testbed {tb.name}: {'; '.join(failed)}; fix that and run "
                         f"`edgectl testbed down {tb.name}` again")
    for directory in (d for d in of["dir"] if os.path.isdir(d)):
        shutil.rmtree(directory)
        removed.append(f"folder {directory}")
    for host in tb.hosts:   # `edgectl shape` left on it: its interface went with it
        if forget_state(host.address, SSH_PORT, host.veth_ns):
            removed.append(f"shaping state of {host.name}")
    return removed


def _sshd_pid(tb: Testbed, host: TestbedHost) -> int | None:
    """The recorded pid, or the PidFile's when `up` stopped before recording it."""
    return host.sshd_pid or net.sshd_pid(_sshd_dir(tb, host))


def testbed_status(state_dir: str = DEFAULT_STATE_DIR) -> list[Testbed]:
    """Every testbed recorded in `state_dir`, each with a liveness check per host."""
    state_dir = os.path.abspath(state_dir)
    found = []
    for name in testbed_names(state_dir):
        tb = load_testbed(name, state_dir)
        checks = tuple(HostCheck(h.name, net.netns_exists(h.namespace),
                                 net.sshd_alive(h.sshd_pid, _sshd_dir(tb, h))) for h in tb.hosts)
        found.append(dataclasses.replace(tb, checks=checks))
    return found


def cgroup_version() -> int:
    """2 when this host uses the unified cgroup hierarchy for CPU quotas, else 1."""
    return 2 if cgroups.cgroup_v2() else 1

