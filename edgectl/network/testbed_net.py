"""The host operations a testbed is made of: ip, tc, sshd and processes.

Each function creates or removes one kind of object on this Linux host and knows nothing
about state files; edgectl/network/testbed.py decides what to make, records it and undoes it. Every
remove_* tolerates an object that is already gone (crash recovery), and every failure is a
FleetError with one line naming the command and the kernel's or tool's complaint.
CPU quotas are edgectl/network/cgroups.py's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence

import psutil

from edgectl.errors import FleetError
from edgectl.network.cgroups import cfs_period_us

SSHD = "/usr/sbin/sshd"
SUBNET_POOL = ipaddress.ip_network("10.213.0.0/16")


def run(argv: Sequence[str], what: str, timeout: float = 30) -> str:
    """stdout of `argv`; a FleetError naming `what` and the tool's last stderr line if it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise FleetError(f"{what}: {argv[0]} not found; install iproute2 and "
                         "openssh-server") from None
    except subprocess.TimeoutExpired:
        raise FleetError(f"{what}: `{' '.join(argv)}` did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        complaint = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise FleetError(f"{what}: `{' '.join(argv)}` failed: {complaint}")
    return done.stdout


def ip_json(*args: str) -> list[dict]:
    return json.loads(run(["ip", "-j", *args], f"ip {' '.join(args)}") or "[]")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def netns_names() -> list[str]:
    return [entry["name"] for entry in ip_json("netns", "list")]


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


# --- subnet ---------------------------------------------------------------------------

def subnets_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route destination and interface network on this host."""
    used = []
    for route in ip_json("-4", "route", "show", "table", "all"):
        if route.get("dst", "default") != "default":
            used.append(ipaddress.ip_network(route["dst"], strict=False))
    for link in ip_json("-4", "addr"):
        for addr in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return used


def free_subnet(first: int) -> ipaddress.IPv4Network:
    """The first /24 of SUBNET_POOL, from index `first` on (wrapping), that no route or
    address overlaps. Routes broader than the pool (a 10.0.0.0/8 towards a VPN) do not
    count: the bridge's /24 is more specific and wins only for its own addresses."""
    used = [net for net in subnets_in_use() if net.prefixlen >= SUBNET_POOL.prefixlen]
    candidates = list(SUBNET_POOL.subnets(new_prefix=24))
    for step in range(len(candidates)):
        subnet = candidates[(first + step) % len(candidates)]
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise FleetError(f"no free /24 left in {SUBNET_POOL} on this host; "
                     "run `edgectl testbed down NAME` for testbeds you no longer need")


# --- links and namespaces -------------------------------------------------------------

def add_bridge(bridge: str, address: str) -> None:
    run(["ip", "link", "add", bridge, "type", "bridge"], f"creating bridge {bridge}")
    run(["ip", "addr", "add", address, "dev", bridge], f"addressing bridge {bridge}")
    run(["ip", "link", "set", bridge, "up"], f"bringing bridge {bridge} up")


def add_netns(ns: str) -> None:
    run(["ip", "netns", "add", ns], f"creating network namespace {ns}")
    run(["ip", "-n", ns, "link", "set", "lo", "up"], f"bringing lo up in {ns}")


# The largest packet a testbed host's TCP hands its link: one Ethernet frame, as on a real
# edge link. A veth takes 64 KiB GSO packets by default, and a token bucket (htb, tbf)
# passes a whole one once it has any tokens: a 100 KB frame after a pause then crossed a
# "2 Mbit/s" link at 5.6 Mbit/s. Costs throughput only unshaped (about 0.6 against
# 3.5-5.5 Gbit/s on this host's loopback veths), far above the rates a testbed emulates.
GSO_MAX_BYTES = 1500


def add_veth(veth_host: str, ns: str, veth_ns: str, bridge: str, address: str) -> None:
    """A veth pair: `veth_host` on `bridge` here, `veth_ns` with `address` inside `ns`."""
    run(["ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_ns, "netns", ns],
        f"creating veth {veth_host}")
    run(["ip", "link", "set", veth_host, "master", bridge, "up"], f"attaching {veth_host}")
    run(["ip", "-n", ns, "addr", "add", address, "dev", veth_ns], f"addressing {veth_ns} in {ns}")
    run(["ip", "-n", ns, "link", "set", veth_ns, "gso_max_size", str(GSO_MAX_BYTES), "up"],
        f"bringing {veth_ns} up in {ns}")


def remove_link(name: str) -> bool:
    try:
        run(["ip", "link", "del", name], f"deleting link {name}")
        return True
    except FleetError:
        if link_exists(name):
            raise
        return False  # already gone


def remove_netns(ns: str) -> bool:
    if not netns_exists(ns):
        return False
    run(["ip", "netns", "del", ns], f"deleting network namespace {ns}")
    return True


# --- link rate --------------------------------------------------------------------------

def shape_link(dev: str, ns: str | None, rate: str) -> None:
    """A tbf of `rate` as the root qdisc of `dev` (in `ns`, or here for None): its egress.
    Built by edgectl/network/tc.py, which explains its burst and queue limit."""
    from edgectl.network.tc import tbf_args

    prefix = ["ip", "netns", "exec", ns] if ns else []
    run([*prefix, "tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(rate)],
        f"shaping {dev}{f' in {ns}' if ns else ''}")


def remove_tbf(target: str) -> bool:
    """Remove the root tbf of `target` ("DEV" here or "DEV@NS"); False when it is gone."""
    dev, _, ns = target.partition("@")
    if (ns and not netns_exists(ns)) or "tbf" not in _kinds_or_none(dev, ns or None):
        return False
    prefix = ["ip", "netns", "exec", ns] if ns else []
    run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], f"removing the tbf of {target}")
    return True


def _kinds_or_none(dev: str, ns: str | None) -> list[str]:
    try:
        return qdisc_kinds(dev, ns)
    except FleetError:
        return []  # no such device


def qdisc_kinds(dev: str, ns: str | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    out = run([*prefix, "tc", "-j", "qdisc", "show", "dev", dev], f"reading qdiscs of {dev}")
    return [q["kind"] for q in json.loads(out or "[]")]


# --- sshd and processes ----------------------------------------------------------------------

def keygen(path: str, comment: str) -> str:
    """An ed25519 key pair without passphrase at `path` and `path`.pub; "TYPE BLOB" of .pub."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        f"generating key {path}")
    with open(path + ".pub") as f:
        return " ".join(f.read().split()[:2])


def write_sshd_config(folder: str, address: str, authorized_keys: str, cpu: float | None,
                      title: str) -> None:
    """`folder`/sshd_config: key-only root login on `address`:22, files kept in `folder`
    (which holds ssh_host_ed25519_key)."""
    options = [
        f"ListenAddress {address}", "Port 22",
        f"HostKey {os.path.join(folder, 'ssh_host_ed25519_key')}",
        f"PidFile {os.path.join(folder, 'sshd.pid')}", f"AuthorizedKeysFile {authorized_keys}",
        "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "UsePAM no",
        "StrictModes no", "PrintMotd no", "Subsystem sftp internal-sftp",
    ]
    if cpu is not None:  # see cgroups.py: /sys/fs/cgroup is hidden in the namespace
        options.append(f"SetEnv EDGECTL_CPU_QUOTA={cpu:g} "
                       f"EDGECTL_CPU_PERIOD_US={cfs_period_us(cpu)}")
    with open(os.path.join(folder, "sshd_config"), "w") as f:
        f.write(f"# {title}\n" + "\n".join(options) + "\n")


def start_sshd(ns: str, folder: str) -> None:
    """sshd of `folder`/sshd_config in `ns`; it daemonizes once bound and its PidFile written."""
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    run(["ip", "netns", "exec", ns, SSHD, "-f", os.path.join(folder, "sshd_config"),
         "-E", os.path.join(folder, "sshd.log")], f"starting sshd in {ns}")


def sshd_pid(folder: str) -> int | None:
    """The pid in `folder`/sshd.pid, None while there is none."""
    with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, "sshd.pid")) as f:
        return int(f.read().strip())
    return None


def wait_sshd(folder: str, address: str, timeout: float = 10.0) -> int:
    """sshd's pid once its PidFile exists and `address`:22 accepts a TCP connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = sshd_pid(folder)
        with contextlib.suppress(OSError):
            if pid:
                with socket.create_connection((address, 22), timeout=1.0):
                    return pid
        time.sleep(0.05)
    state = f"pid {pid} never accepted on {address}:22" if pid else "it wrote no PidFile"
    raise FleetError(f"sshd for {address} did not come up in {timeout:g} s ({state}); "
                     f"see {os.path.join(folder, 'sshd.log')}")


def sshd_alive(pid: int | None, folder: str) -> bool:
    """True while `pid` is a running (not zombie) sshd of `folder`/sshd_config: a pid
    recorded before a reboot may since belong to another process, even another sshd."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return _running(proc) and os.path.join(folder, "sshd_config") in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def netns_pids(ns: str) -> list[int]:
    if not netns_exists(ns):
        return []
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(word) for word in out.split()]


def kill_all(pids: Iterable[int], grace: float = 3.0) -> list[int]:
    """SIGTERM each live pid, then SIGKILL whatever is left after `grace` s; the pids hit."""
    procs = [p for p in (_process(pid) for pid in set(pids)) if p is not None]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        deadline = time.monotonic() + grace
        while any(_running(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
    return sorted(p.pid for p in procs)


def _process(pid: int) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        return proc if _running(proc) else None
    return None


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (whose parent, not us, reaps it: psutil's wait would block)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
