"""The testbed: an emulated fleet on this Linux host, made, listed and removed.

`testbed_up` builds a server and N devices, each a network namespace on a private bridge
with its own sshd (key-only login), an optional CPU quota (a cgroup holding that sshd, so
every session and agent inherits it) and an optional link rate (tbf both ways), and writes
an inventory for them. Host operations live in edgectl/testbed_net.py.

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
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass

import yaml

from edgectl import testbed_net as net
from edgectl.errors import ConfigError, FleetError, UsageError
from edgectl.shaping_tc import rate_bits

DEFAULT_STATE_DIR = "/var/lib/edgectl/testbeds"
STATE_FILE = "state.json"
_NAME = re.compile(r"[a-z0-9]{1,8}")
MAX_DEVICES = 16


@dataclass(frozen=True)
class TestbedSpec:
    """What `edgectl testbed up` is asked to build; errors name the command-line option."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    devices: int = 2
    device_cpu: tuple[float, ...] = ()  # cores per device; one value applies to all
    server_cpu: float | None = None
    link: str | None = None  # tc rate of each device's link, both directions
    state_dir: str = DEFAULT_STATE_DIR

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise UsageError(f"NAME: expected 1-8 of a-z 0-9, got {self.name!r}")
        if isinstance(self.devices, bool) or not isinstance(self.devices, int) \
                or not 1 <= self.devices <= MAX_DEVICES:
            raise UsageError(f"--devices: expected an integer 1..{MAX_DEVICES}, "
                             f"got {self.devices!r}")
        cpus = tuple(_cores("--cpu", v) for v in self.device_cpu)
        if len(cpus) not in (0, 1, self.devices):
            raise UsageError(f"--cpu: give one value or {self.devices} (one per device), "
                             f"got {len(cpus)}")
        object.__setattr__(self, "device_cpu", cpus)
        if self.server_cpu is not None:
            object.__setattr__(self, "server_cpu", _cores("--server-cpu", self.server_cpu))
        if self.link is not None and not (isinstance(self.link, str) and rate_bits(self.link)):
            raise UsageError(f"--link: expected a rate like 20mbit, 500kbit or 1gbit, "
                             f"got {self.link!r}")
        if not isinstance(self.state_dir, str) or not self.state_dir.strip():
            raise UsageError(f"--state-dir: expected a directory path, got {self.state_dir!r}")
        object.__setattr__(self, "state_dir", os.path.abspath(self.state_dir))

    def cpu_of(self, device: int) -> float | None:
        """The quota of device `device` (1-based), None when unthrottled."""
        if not self.device_cpu:
            return None
        return self.device_cpu[0 if len(self.device_cpu) == 1 else device - 1]


def _cores(option: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) and value >= 0.01:
        return float(value)
    raise UsageError(f"{option}: expected a number of cores >= 0.01 like 0.25, got {value!r}")


@dataclass(frozen=True)
class TestbedHost:
    __test__ = False

    name: str  # "server", "d1" .. "dN": the inventory's host name
    role: str  # "server" | "device"
    namespace: str
    address: str
    veth_host: str  # on the bridge, in the root namespace
    veth_ns: str  # inside the namespace
    workdir: str
    cpu: float | None  # cores; None = unthrottled
    cgroup: str | None = None
    sshd_pid: int | None = None


@dataclass(frozen=True)
class HostCheck:
    host: str
    netns: bool  # the namespace exists
    sshd: bool  # the recorded sshd pid is a live sshd


@dataclass(frozen=True)
class Testbed:
    """What `up` made (and is making: `complete` is False until it is done)."""

    __test__ = False

    name: str
    subnet: str
    bridge: str
    link: str | None
    hosts: tuple[TestbedHost, ...]
    directory: str  # STATE_DIR/NAME
    inventory_path: str
    known_hosts_path: str
    key_path: str  # the client's private key; .pub beside it
    state_path: str
    complete: bool = False
    objects: tuple[tuple[str, str], ...] = ()  # (kind, what) in creation order
    checks: tuple[HostCheck, ...] = ()  # filled by testbed_status, never stored

    @property
    def healthy(self) -> bool:
        return self.complete and all(c.netns and c.sshd for c in self.checks)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        del data["checks"]
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Testbed:
        data = json.loads(text)
        data["hosts"] = tuple(TestbedHost(**h) for h in data["hosts"])
        data["objects"] = tuple(tuple(o) for o in data["objects"])
        return cls(**data)


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
    roles += [(f"d{i}", "device", 10 + i, spec.cpu_of(i)) for i in range(1, spec.devices + 1)]
    hosts = tuple(
        TestbedHost(name=host, role=role, namespace=f"ec-{spec.name}-{host}",
                    address=str(subnet[last]), veth_host=f"ecv{spec.name}-{index}",
                    veth_ns="eth0", workdir=os.path.join(directory, "hosts", host), cpu=cpu)
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
        _save(self.testbed)

    def update(self, namespace: str, **changes: object) -> None:
        hosts = tuple(dataclasses.replace(h, **changes) if h.namespace == namespace else h
                      for h in self.testbed.hosts)
        self.testbed = dataclasses.replace(self.testbed, hosts=hosts)
        _save(self.testbed)

    def build(self) -> None:
        tb = self.testbed
        self.testbed = dataclasses.replace(tb, objects=(("dir", tb.directory),))
        os.makedirs(tb.directory, mode=0o755)  # keys inside are 0600
        _save(self.testbed)
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
            path = net.cgroup_dir(f"ec-{tb.name}-{host.name}")
            self.record("cgroup", path)
            net.add_cgroup(path, host.cpu)
            self.update(host.namespace, cgroup=path)
            net.move_to_cgroup(self.testbed.hosts[tb.hosts.index(host)].sshd_pid, path)
        if tb.link:
            for host in (h for h in tb.hosts if h.role == "device"):
                self.record("tbf", host.veth_host)
                net.shape_link(host.veth_host, None, tb.link)  # downlink
                self.record("tbf", f"{host.veth_ns}@{host.namespace}")
                net.shape_link(host.veth_ns, host.namespace, tb.link)  # uplink
        _write_inventory(self.testbed)
        self.testbed = dataclasses.replace(self.testbed, complete=True)
        _save(self.testbed)


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
    def entries(role: str) -> dict:
        return {h.name: {"ansible_host": h.address, "edgectl_workdir": h.workdir}
                for h in tb.hosts if h.role == role}
    data = {"all": {
        "vars": {"ansible_port": 22, "ansible_user": "root",
                 "ansible_ssh_private_key_file": tb.key_path, "ansible_connection": "ssh",
                 "edgectl_known_hosts": tb.known_hosts_path, "edgectl_python": sys.executable,
                 "edgectl_iface": "eth0"},
        "children": {
            "servers": {"vars": {"edgectl_role": "server"}, "hosts": entries("server")},
            "devices": {"vars": {"edgectl_role": "device"}, "hosts": entries("device")}}}}
    with open(tb.inventory_path, "w") as f:
        f.write(f"# testbed {tb.name} on this host, written by `edgectl testbed up`; "
                f"removed by `edgectl testbed down {tb.name}`.\n")
        yaml.safe_dump(data, f, sort_keys=False)


def _save(tb: Testbed) -> None:
    temporary = tb.state_path + ".tmp"
    with open(temporary, "w") as f:
        f.write(tb.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, tb.state_path)


# --- down and status -------------------------------------------------------------------------

def testbed_down(name: str, state_dir: str = DEFAULT_STATE_DIR) -> list[str]:
    """Remove testbed `name` and everything recorded for it; what was actually removed."""
    require_root()
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"NAME: expected 1-8 of a-z 0-9, got {name!r}")
    return _remove(_load(name, os.path.abspath(state_dir)))


def _remove(tb: Testbed) -> list[str]:
    """Processes first (so cgroups empty), then qdiscs, cgroups, links, namespaces, and the
    folder last: when something cannot be removed the state stays for another `down`."""
    of = {kind: [what for k, what in tb.objects if k == kind] for kind in
          ("dir", "bridge", "netns", "veth", "sshd", "cgroup", "tbf")}
    hosts = {h.namespace: h for h in tb.hosts}
    pids = [p for ns in of["sshd"]
            if net.sshd_alive(p := _sshd_pid(tb, hosts[ns]), _sshd_dir(tb, hosts[ns]))]
    pids += [p for ns in of["netns"] for p in net.netns_pids(ns)]
    pids += [p for path in of["cgroup"] for p in net.cgroup_pids(path)]
    removed = [f"process {pid}" for pid in net.kill_all(pids)]
    failed = []
    steps = [(f"tbf {target}", net.remove_tbf, target) for target in of["tbf"]]
    steps += [(f"cgroup {path}", net.remove_cgroup, path) for path in of["cgroup"]]
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
    return removed


def _sshd_pid(tb: Testbed, host: TestbedHost) -> int | None:
    """The recorded pid, or the PidFile's when `up` stopped before recording it."""
    return host.sshd_pid or net.sshd_pid(_sshd_dir(tb, host))


def testbed_status(state_dir: str = DEFAULT_STATE_DIR) -> list[Testbed]:
    """Every testbed recorded in `state_dir`, each with a liveness check per host."""
    state_dir = os.path.abspath(state_dir)
    found = []
    for name in _names(state_dir):
        tb = _load(name, state_dir)
        checks = tuple(HostCheck(h.name, net.netns_exists(h.namespace),
                                 net.sshd_alive(h.sshd_pid, _sshd_dir(tb, h))) for h in tb.hosts)
        found.append(dataclasses.replace(tb, checks=checks))
    return found


def _names(state_dir: str) -> list[str]:
    if not os.path.isdir(state_dir):
        return []
    return sorted(n for n in os.listdir(state_dir)
                  if os.path.isfile(os.path.join(state_dir, n, STATE_FILE)))


def _load(name: str, state_dir: str) -> Testbed:
    path = os.path.join(state_dir, name, STATE_FILE)
    try:
        with open(path) as f:
            return Testbed.from_json(f.read())
    except FileNotFoundError:
        known = ", ".join(_names(state_dir)) or "none"
        raise UsageError(f"no testbed {name!r} in {state_dir}; existing testbeds: {known} "
                         "(see `edgectl testbed status`)") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path}: not a testbed state file ({exc}); check `ip netns list` "
                          f"and `ip link` for ec-{name}-* objects and remove the folder") from None


def cgroup_version() -> int:
    """2 when this host uses the unified cgroup hierarchy for CPU quotas, else 1."""
    return 2 if net.cgroup_v2() else 1

