"""`edgectl inventory check`: what each host is, measured on the host itself."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from edgectl.fleet.hosts import HostResult, HostSession, on_hosts
from edgectl.fleet.inventory import Host, Inventory
from edgectl.fleet.layout import local_python, remote_path, venv_python

# Runs on the host with the provisioned venv's Python when there is one, else with
# edgectl_python; uses psutil where installed and /proc otherwise.
FACTS_SCRIPT = """
import json, os, platform, shutil
from importlib import metadata
facts = {"python": platform.python_version(), "cores": os.cpu_count()}
for name in ("edgectl", "torch"):   # installed versions, without importing torch (seconds)
    try:
        facts[name] = metadata.version(name)
    except Exception:
        facts[name] = None
model = ""
try:
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
except OSError:
    pass
facts["cpu"] = model or platform.machine()
try:
    import psutil
    facts["memory"] = psutil.virtual_memory().total
    facts["disk_free"] = psutil.disk_usage(os.path.expanduser("~")).free
except ImportError:
    with open("/proc/meminfo") as f:
        facts["memory"] = int(f.readline().split()[1]) * 1024
    facts["disk_free"] = shutil.disk_usage(os.path.expanduser("~")).free
print(json.dumps(facts))
"""


@dataclass(frozen=True)
class HostFacts:
    latency_ms: float
    python: str
    edgectl: str | None
    torch: str | None
    cpu: str
    cores: int
    memory_gb: float
    disk_free_gb: float


def host_facts(host: Host) -> HostFacts:
    with HostSession(host) as s:
        t0 = time.perf_counter()
        s.check("true", "a round trip")
        latency = (time.perf_counter() - t0) * 1000
        if host.is_local:
            command = f"{remote_path(local_python(host))} -"
        else:
            venv = remote_path(venv_python(host))
            command = f"p={venv}; [ -x \"$p\" ] || p={remote_path(host.python)}; \"$p\" -"
        facts = json.loads(s.check(command, "reading host facts", stdin=FACTS_SCRIPT))
    return HostFacts(latency, facts["python"], facts["edgectl"], facts["torch"], facts["cpu"],
                     facts["cores"], facts["memory"] / 2**30, facts["disk_free"] / 2**30)


def check_inventory(inventory: Inventory) -> list[HostResult]:
    return on_hosts(list(inventory.hosts), host_facts)
