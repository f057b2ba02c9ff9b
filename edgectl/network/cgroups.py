"""CPU quotas of testbed hosts: cgroups made, filled, emptied and removed on this host.

Like edgectl/network/testbed_net.py, each function handles one kind of object, tolerates
one already gone on removal and fails with one-line FleetErrors.

Note: CPU quotas. With cgroup v2 (/sys/fs/cgroup/cgroup.controllers exists) a host's cgroup
is /sys/fs/cgroup/<name> with `cpu.max` = "QUOTA PERIOD"; the cpu controller must be on in
the parent's cgroup.subtree_control. With cgroup v1 it is /sys/fs/cgroup/cpu/<name> with
cpu.cfs_quota_us and cpu.cfs_period_us. The period is 10 ms, not the kernel's default 100 ms:
a 0.5-core device with a 100 ms period runs at full speed for 50 ms and then stops for 50,
so a 30 ms step either runs at full speed (when the device idled on the network earlier in
the period) or stalls for up to 50 ms; with 10 ms the device is simply a slower CPU, which
is what the quota stands for. (Quotas under 0.1 cores get a longer period: the kernel's
least quota is 1 ms.) Either way a pid written to cgroup.procs moves the
whole process, and everything it forks later (each SSH session, hence each agent) is born
inside. `ip netns exec` gives its command a fresh /sys without the cgroup mounts, so a
process inside a testbed host sees its cgroup in /proc/self/cgroup but not under
/sys/fs/cgroup; sshd therefore also exports the quota and its period as EDGECTL_CPU_QUOTA and
EDGECTL_CPU_PERIOD_US to sessions.
"""

from __future__ import annotations

import errno
import math
import os
import time

from edgectl.errors import FleetError

CGROUP_ROOT = "/sys/fs/cgroup"
CFS_PERIOD_US = 10_000
MIN_QUOTA_US = 1_000  # the kernel's least quota


def cgroup_v2() -> bool:
    return os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers"))


def cgroup_dir(name: str) -> str:
    return os.path.join(CGROUP_ROOT, *([] if cgroup_v2() else ["cpu"]), name)


def cfs_period_us(cores: float) -> int:
    """The CFS period for a quota of `cores`: CFS_PERIOD_US, longer where the quota would
    fall under the kernel's least."""
    return max(CFS_PERIOD_US, math.ceil(MIN_QUOTA_US / cores))


def add_cgroup(path: str, cores: float) -> None:
    """The cgroup at `path` limited to `cores` CPUs (0.25 = a quarter of one core)."""
    period = cfs_period_us(cores)
    quota = max(MIN_QUOTA_US, round(cores * period))
    parent = os.path.dirname(path)
    try:
        if cgroup_v2():
            _enable_cpu_controller(parent)
            os.mkdir(path)
            _write(os.path.join(path, "cpu.max"), f"{quota} {period}")
        else:
            if not os.path.isdir(parent):
                raise FleetError(f"cgroup v1 cpu hierarchy {parent} is not mounted; mount it "
                                 "or run without CPU quotas")
            os.mkdir(path)
            _write(os.path.join(path, "cpu.cfs_period_us"), str(period))
            _write(os.path.join(path, "cpu.cfs_quota_us"), str(quota))
    except OSError as exc:
        hint = ("; cgroup v2 gives controllers only to cgroups without processes of their own: "
                f"move the processes of {parent} into a child cgroup, or run without CPU quotas"
                if exc.errno == errno.EBUSY else "")
        raise FleetError(f"creating cgroup {path}: {exc.strerror or exc}{hint}") from None


def _enable_cpu_controller(parent: str) -> None:
    with open(os.path.join(parent, "cgroup.subtree_control")) as f:
        if "cpu" in f.read().split():
            return
    with open(os.path.join(parent, "cgroup.controllers")) as f:
        if "cpu" not in f.read().split():
            raise FleetError(f"cgroup v2 {parent} does not offer the cpu controller; "
                             "enable it in the parent cgroups or run without CPU quotas")
    _write(os.path.join(parent, "cgroup.subtree_control"), "+cpu")


def move_to_cgroup(pid: int, path: str) -> None:
    try:
        _write(os.path.join(path, "cgroup.procs"), str(pid))
    except OSError as exc:
        raise FleetError(f"moving pid {pid} into cgroup {path}: {exc.strerror}") from None


def cgroup_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def remove_cgroup(path: str, timeout: float = 5.0) -> bool:
    """rmdir the cgroup, waiting for its just-killed processes to leave it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise FleetError(f"removing cgroup {path}: {exc.strerror}; processes still "
                                 f"in it: {cgroup_pids(path)}") from None
            time.sleep(0.05)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
