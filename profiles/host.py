"""What a host is: its identity, CPU, and the cores a process on it may use.

Shared by the compute profiler and the agents, so a profile is measured with exactly the
torch thread count and the memory allocator settings an agent on that host will run with.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import socket
import uuid
from pathlib import Path


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by its cgroup CPU quota (a
    0.25-core quota still gets one thread)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(cores, round(quota))) if quota else cores


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 32 << 20    # the largest glibc accepts before 2.35 (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: serve blocks up to 32 MiB from the
    heap rather than from fresh mmaps, and give the heap's top back to the kernel only past
    256 MiB free. A training step allocates and frees its activations and gradients (VGG-5
    at B = 100: about 45 MB, in blocks of up to 13 MB); by default glibc often returned them
    to the kernel and the next step faulted them in again: up to 11,000 page faults a step,
    14-25% of a process's CPU in the kernel, a single-thread step 126-134 ms against
    110-112 with this. Larger blocks (a dataset's buffer, a model's frame) are still mapped
    apart and given back when freed. The price: up to 256 MiB of freed heap stays with the
    process. The trim threshold is set only once the mmap threshold is: alone it freezes
    the mmap threshold at 128 KB, which was slower still.

    Every thread allocates from that one heap (one arena). By default glibc gives each
    allocating thread an arena of its own, made of 64 MB heaps that grow, shrink and are
    unmapped apart from the main heap's thresholds; the server's compute workers, the
    connections' receive threads and a device's batch loader all allocate, and a tensor
    is often freed on another thread than the one that made it. In split p = 1 on the
    local fleet (VGG-5, B = 100) the agents spent 10-60 ms an iteration in the kernel,
    zeroing pages faulted in again, and the iteration took 148-166 ms against 125-133 in
    one arena. The price, contention on the arena's lock, is within this host's noise
    (pipar p = 1 N = 4: 148-153 ms against 151-155): a step allocates a few hundred
    blocks, not millions.

    Call it before other threads start (glibc's mallopt is not thread-safe). Returns
    whether all three were applied: False where the C library is not glibc (nothing
    changes there), or where glibc refused one (those before it stay applied)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and mallopt(M_ARENA_MAX, 1))


def host_identity() -> str:
    """A short hex id of this machine as it runs now: /etc/machine-id (else hostname + MAC)
    with the kernel's boot id, hashed. Emulated hosts sharing one kernel (a testbed, the
    local fleet) share it, as they share the hardware; boards flashed from one image share a
    machine-id but not a boot id. The planner takes hosts with one id to share their cores."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        if text := _read(path):
            return hashlib.sha256(f"{text}/{boot}".encode()).hexdigest()[:16]
    node = uuid.getnode()
    mac = "" if node & (1 << 40) else f"{node:012x}"  # multicast bit set: a random stand-in
    return hashlib.sha256(f"{socket.gethostname()}/{mac}/{boot}".encode()).hexdigest()[:16]


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def cpu_facts() -> dict:
    """{"model": CPU name, "cores": cores this process may run on, "quota": cores or None,
    "period": the quota's CFS period in seconds, or None (no quota, or not known)}."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota, period = cpu_limit() or (None, None)
    return {"model": _cpu_model(), "cores": cores, "quota": quota, "period": period}


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    found = dict(tuple(part.strip() for part in line.split(":", 1)) for line in lines
                 if ":" in line)
    for key in ("model name", "cpu model", "Model", "Hardware"):
        if found.get(key):
            return found[key]
    return platform.processor() or platform.machine() or "unknown"


def cpu_quota(cgroup_list: str = "/proc/self/cgroup",
              root: str = "/sys/fs/cgroup") -> float | None:
    """This process's CPU quota in cores, or None when unlimited."""
    limit = cpu_limit(cgroup_list, root)
    return limit[0] if limit else None


def cpu_limit(cgroup_list: str = "/proc/self/cgroup",
              root: str = "/sys/fs/cgroup") -> tuple[float, float | None] | None:
    """(cores, CFS period in seconds or None when not known) of this process's CPU quota, or
    None when unlimited. EDGECTL_CPU_QUOTA (cores; "0" means unlimited) and
    EDGECTL_CPU_PERIOD_US win: in `ip netns exec` /sys has no cgroups, so testbeds export
    them."""
    try:
        cores = float(os.environ["EDGECTL_CPU_QUOTA"])
    except (KeyError, ValueError):
        pass
    else:
        try:
            period = int(os.environ["EDGECTL_CPU_PERIOD_US"]) / 1e6 or None
        except (KeyError, ValueError):
            period = None
        return (cores, period) if cores else None
    for quota_file, period_file in _own_cgroup_files(cgroup_list, root):
        try:
            quota = Path(quota_file).read_text().split()
            if not period_file:  # v2: "max 100000" or "25000 100000"
                if quota[0] == "max":
                    return None
                return int(quota[0]) / int(quota[1]), int(quota[1]) / 1e6
            period = int(Path(period_file).read_text())
            return None if int(quota[0]) <= 0 else (int(quota[0]) / period, period / 1e6)
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            continue
    return None


def _own_cgroup_files(cgroup_list: str, root: str) -> list[tuple[str, str]]:
    """(quota file, period file or "" for v2) of each cpu cgroup listed for this process."""
    try:
        lines = Path(cgroup_list).read_text().splitlines()
    except OSError:
        return []
    files = []
    for _, controllers, path in (line.split(":", 2) for line in lines if line.count(":") >= 2):
        if controllers == "":
            files.append((f"{root}{path}/cpu.max", ""))
        elif "cpu" in controllers.split(","):
            base = f"{root}/{controllers}{path}"
            files.append((f"{base}/cpu.cfs_quota_us", f"{base}/cpu.cfs_period_us"))
    return files
